#!/bin/sh
# Succeeds when state machine $1 is attached to database $2.
. "$(dirname "$0")/lib/fleet.sh"
[ "$(cat "$FLEET_DIR/$1/primary")" = "$2" ] || die "$1 uses $(cat "$FLEET_DIR/$1/primary"), not $2"
echo "$1 uses $2"
