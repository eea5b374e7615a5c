#!/bin/sh
# Succeeds when pgbouncer on cluster $1 is up.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "clusters/$1"
state="$(cat "$(instance_dir "clusters/$1")/pgbouncer")"
[ "$state" = up ] || die "pgbouncer on $1 is $state"
echo "pgbouncer on $1 is up"
