#!/bin/sh
# Promotes $2 to primary and demotes $1 to standby. With the `release`
# fault set it fails half-way, as in 2017: the old database stays primary.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "$1"
require_instance "$2"
fault release
echo standby > "$(instance_dir "$1")/role"
echo primary > "$(instance_dir "$2")/role"
echo "released: $2 is primary, $1 is standby"
