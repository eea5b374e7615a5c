#!/bin/sh
# Creates an empty replica instance $1 running Postgres version $2.
. "$(dirname "$0")/lib/fleet.sh"
fault create-instance
mkdir -p "$(instance_dir "$1")"
echo "$2" > "$(instance_dir "$1")/version"
echo replica > "$(instance_dir "$1")/role"
: > "$(instance_dir "$1")/data"
echo "created $1 (Postgres $2)"
