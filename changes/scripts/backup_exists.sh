#!/bin/sh
# Succeeds when a non-empty backup of $1 exists.
. "$(dirname "$0")/lib/fleet.sh"
[ -s "$FLEET_DIR/backups/$1.dump" ] || die "no backup of $1"
echo "backup of $1 present"
