#!/bin/sh
# Takes a backup of instance $1 into $FLEET_DIR/backups/$1.dump.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "$1"
mkdir -p "$FLEET_DIR/backups"
cp "$(instance_dir "$1")/data" "$FLEET_DIR/backups/$1.dump"
echo "backed up $1 ($(wc -l < "$FLEET_DIR/backups/$1.dump") rows)"
