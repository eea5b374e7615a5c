#!/bin/sh
# Succeeds when instance $1 runs version $2.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "$1"
[ "$(cat "$(instance_dir "$1")/version")" = "$2" ] || die "$1 runs $(cat "$(instance_dir "$1")/version"), not $2"
echo "$1 runs $2"
