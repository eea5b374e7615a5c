#!/bin/sh
# Attaches state machine $1 to database $2.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "$2"
fault point-state-machine
echo "$2" > "$FLEET_DIR/$1/primary"
echo "$1 now uses $2"
