#!/bin/sh
# Succeeds when instances $1 and $2 hold the same data.
. "$(dirname "$0")/lib/fleet.sh"
cmp -s "$(instance_dir "$1")/data" "$(instance_dir "$2")/data" || die "$2 differs from $1"
echo "$2 holds the same data as $1"
