#!/usr/bin/env bash
# Where a webhook delivery's CPU goes on the durable path: `changegate
# serve` (release build, SQLite, inbox worker off) under `wrk -t2 -c64`
# running benches/webhook.lua, sampled by `perf record` for SECONDS, then
# the server's samples summed by part (README, "Webhook ingest").
#
#   bash benches/profile-ingest.sh [SECONDS] [COMPRESSION]
#
# COMPRESSION is server.inbox_compression: lz4 (default), deflate or none.
# Needs perf, wrk and openssl; run as root or with perf_event_paranoid <= 1.
set -euo pipefail

seconds=${1:-10}
compression=${2:-lz4}
[[ $seconds =~ ^[0-9]+$ ]] || { echo "profile-ingest.sh: SECONDS must be a number" >&2; exit 2; }
case $compression in
    lz4 | deflate | none) ;;
    *) echo "profile-ingest.sh: COMPRESSION is lz4, deflate or none" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")/.." && pwd)
fixture=$here/../shared/fixtures/github-webhooks/pull_request_review.submitted.json
for tool in perf wrk openssl curl; do
    command -v "$tool" >/dev/null || { echo "profile-ingest.sh: needs $tool" >&2; exit 1; }
done

(cd "$here" && cargo build --release --locked --bin changegate 2>&1 | tail -1) >&2
bin=${CARGO_TARGET_DIR:-$here/target}/release/changegate

work=$(mktemp -d /tmp/changegate-profile.XXXXXX)
server=
load=
trap 'for p in $load $server; do kill "$p" 2>/dev/null; done; rm -rf "$work"' EXIT

git init -q -b main "$work/repo"
git -C "$work/repo" -c user.name=bench -c user.email=bench@example.com commit -q --allow-empty -m empty
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 18765)
cat >"$work/changegate.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
data_dir = "$work"
inbox_compression = "$compression"
[repo]
url = "$work/repo"
[github]
api_url = "http://127.0.0.1:9"
repository = "acme/infra"
webhook_secret_env = "PROFILE_WEBHOOK_SECRET"
worker = false
EOF
export PROFILE_WEBHOOK_SECRET=profile-secret
cp "$fixture" "$work/body.json"
signature=sha256=$(openssl dgst -sha256 -hmac "$PROFILE_WEBHOOK_SECRET" -r "$work/body.json" | cut -d' ' -f1)

CHANGEGATE_LOG=warn "$bin" serve --config "$work/changegate.toml" >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/serve.log" >&2; exit 1; }

CHANGEGATE_WRK_BODY=$work/body.json CHANGEGATE_WRK_SIGNATURE=$signature \
    wrk -t2 -c64 -d"$((seconds + 4))s" -s "$here/benches/webhook.lua" "http://127.0.0.1:$port" >"$work/wrk.out" 2>&1 &
load=$!
sleep 2
perf record -q -F 999 -p "$server" -o "$work/perf.data" -- sleep "$seconds"
wait "$load"
load=
grep -E "Requests/sec|webhook-lua" "$work/wrk.out"

# Self time per symbol, summed by the part of the path it belongs to.
perf report -i "$work/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null |
    awk -v compression="$compression" -v seconds="$seconds" '
    /^ *[0-9.]+%/ {
        pct = $1; sub(/%/, "", pct); dso = $2; sym = $0
        if (dso ~ /kernel/)                                   part = "kernel: TCP, fsync, scheduling"
        else if (sym ~ /sha2|hmac|Hmac|Sha256/)               part = "signature (HMAC-SHA256)"
        else if (sym ~ /serde_json/)                          part = "JSON (the reply)"
        else if (sym ~ /lz4_flex|zlib_rs|miniz|flate2/)       part = "inbox compression"
        else if (sym ~ /sqlite3|wal[A-Z]|[Pp]ager|[Bb]tree|Vdbe|sqlx/) part = "SQLite and sqlx"
        else if (sym ~ /memset|memmove|memcpy|memcmp/)        part = "memory copies and zeroing"
        else if (sym ~ /malloc|free|_int_|realloc|consolidate|unlink_chunk|arena/) part = "allocator"
        else if (sym ~ /hyper|axum|tower|http|h1|tokio|mio|bytes|futures/) part = "HTTP and the runtime (axum, hyper, tokio)"
        else                                                  part = "other"
        share[part] += pct; total += pct
    }
    END {
        printf "server CPU samples by part (%s, %d s):\n", compression, seconds
        for (p in share) printf "  %6.1f%%  %s\n", share[p], p | "sort -rn"
    }'
