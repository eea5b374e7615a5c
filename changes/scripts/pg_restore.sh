#!/bin/sh
# Restores the backup of $1 into instance $2.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "$2"
fault restore
cp "$FLEET_DIR/backups/$1.dump" "$(instance_dir "$2")/data"
echo "restored $1 into $2"
