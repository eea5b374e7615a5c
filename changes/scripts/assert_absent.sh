#!/bin/sh
# Succeeds when instance $1 does not exist.
. "$(dirname "$0")/lib/fleet.sh"
[ ! -e "$(instance_dir "$1")" ] || die "$1 exists"
echo "$1 does not exist"
