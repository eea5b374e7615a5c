#!/usr/bin/env bash
# Drives `changegate serve` with schemathesis against its own /openapi.json,
# once per role (reader, operator, executor, monitor), on a copy of this
# repository's changes/ and policies/. Any finding fails the run: a 5xx, a
# status or content type the OpenAPI does not list, or a body that does not
# match its schema. Usage: .ci/schemathesis.sh [SECONDS_PER_ROLE]
set -euo pipefail
cd "$(dirname "$0")/.."
per_role=${1:-60}
cargo build --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/debug/changegate
python3 -c 'import schemathesis' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'schemathesis>=4,<5'
# Through the interpreter pip installed into, whatever is on PATH.
st() { python3 -c 'import sys; from schemathesis.cli import schemathesis; sys.argv[0] = "st"; sys.exit(schemathesis())' "$@"; }

work=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The project's examples, committed on `main` of a fresh repository.
mkdir -p "$work/repo" "$work/data"
cp -r changes policies "$work/repo/"
git -C "$work/repo" init -q -b main
git -C "$work/repo" -c user.name=ci -c user.email=ci@example.com add -A
git -C "$work/repo" -c user.name=ci -c user.email=ci@example.com commit -qm examples

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
{
  printf '[server]\nlisten = "127.0.0.1:%s"\ndata_dir = "%s/data"\n\n' "$port" "$work"
  printf '[repo]\nurl = "%s/repo"\ndefault_branch = "main"\n\n' "$work"
  for role in reader operator executor monitor; do
    hash=$(printf '%s' "$role-token" | sha256sum | cut -d' ' -f1)
    printf '[[tokens]]\nname = "%s"\nrole = "%s"\nsha256 = "%s"\n\n' "$role" "$role" "$hash"
  done
} > "$work/changegate.toml"
"$bin" serve --config "$work/changegate.toml" > "$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/serve.log"; exit 1; }

status=0
for role in reader operator executor monitor; do
  echo "-- schemathesis as $role (${per_role}s)"
  st run "http://127.0.0.1:$port/openapi.json" \
    --header "Authorization: Bearer $role-token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-time "$per_role" --workers 2 --no-color --seed 42 \
    || status=1
done
if [ "$status" != 0 ]; then
  echo "schemathesis found answers the OpenAPI does not document (server log: last 40 lines)"
  tail -n 40 "$work/serve.log"
fi
exit "$status"
