#!/bin/sh
# Restarts pgbouncer on cluster $1. With the fault `pgbouncer-$1` set, it
# does not come back, as a sweep's unlucky cluster would not.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "clusters/$1"
echo down > "$(instance_dir "clusters/$1")/pgbouncer"
fault "pgbouncer-$1"
echo up > "$(instance_dir "clusters/$1")/pgbouncer"
echo "pgbouncer restarted on $1"
