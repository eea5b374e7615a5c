#!/bin/sh
# The undo of release.sh: makes $1 the primary again and $2, if it exists,
# a standby. Safe to run after a release that failed half-way.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "$1"
echo primary > "$(instance_dir "$1")/role"
if [ -d "$(instance_dir "$2")" ]; then
  echo standby > "$(instance_dir "$2")/role"
fi
echo "reinstated: $1 is primary"
