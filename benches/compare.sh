#!/usr/bin/env bash
# Runs a bench at a base commit and at the work tree, alternately, in one
# session on one machine, so that the two are measured against the same
# noise (README, "Benchmarks").
#
#   bash benches/compare.sh BASE [BENCH] [ROUNDS]
#
# BASE is any commit (e.g. HEAD~1), BENCH is `gate` (default) or
# `validate`, ROUNDS (default 2) is how many times each side runs. The base
# is built from a temporary git worktree into its own target directory
# (`target/compare-base`, kept between runs): a bench starts the
# `changegate` binary of its own build, and one target directory holds one.
set -euo pipefail

base=${1:?usage: compare.sh BASE [BENCH] [ROUNDS]}
bench=${2:-gate}
rounds=${3:-2}
here=$(git rev-parse --show-toplevel)
target=${CARGO_TARGET_DIR:-$here/target}
tree=$(mktemp -d /tmp/changegate-base.XXXXXX)
trap 'git -C "$here" worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT

git -C "$here" worktree add --detach --quiet "$tree" "$base"

build() { # dir target -> absolute path of the bench executable
    local log exe
    log=$(cd "$1" && CARGO_TARGET_DIR=$2 cargo bench --locked --bench "$bench" --no-run 2>&1) ||
        { echo "$log" >&2; echo "compare.sh: the build in $1 failed" >&2; exit 1; }
    exe=$(echo "$log" | sed -n 's/.*Executable benches\/[a-z_]*\.rs (\(.*\))/\1/p' | tail -1)
    (cd "$1" && realpath "$exe")
}
echo "building $bench at $base ($(git -C "$here" rev-parse --short "$base"))…" >&2
base_exe=$(build "$tree" "$target/compare-base")
echo "building $bench at the work tree ($(git -C "$here" rev-parse --short HEAD)+)…" >&2
head_exe=$(build "$here" "$target")

for round in $(seq "$rounds"); do
    echo "== round $round: base $base =="
    (cd "$tree" && "$base_exe" --bench)
    echo "== round $round: work tree =="
    (cd "$here" && "$head_exe" --bench)
done
