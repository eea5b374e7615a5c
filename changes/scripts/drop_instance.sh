#!/bin/sh
# The undo of create_instance.sh: removes instance $1, unless it is a
# primary or state machine $2 still uses it. Already gone is done.
. "$(dirname "$0")/lib/fleet.sh"
if [ ! -d "$(instance_dir "$1")" ]; then
  echo "$1 is already gone"
  exit 0
fi
[ "$(role_of "$1")" != primary ] || die "$1 is a primary; it is not removed"
[ "$(cat "$FLEET_DIR/$2/primary")" != "$1" ] || die "$2 still uses $1; it is not removed"
rm -rf "$(instance_dir "$1")"
echo "removed $1"
