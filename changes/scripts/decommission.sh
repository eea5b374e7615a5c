#!/bin/sh
# Removes instance $1.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "$1"
rm -rf "$(instance_dir "$1")"
echo "removed $1"
