#!/bin/sh
# Succeeds when pgbouncer is up on every cluster: a sweep starts only from
# a healthy fleet.
. "$(dirname "$0")/lib/fleet.sh"
[ -d "$FLEET_DIR/clusters" ] || die "no clusters under $FLEET_DIR; run fleet_init.sh"
down=0
for c in "$FLEET_DIR"/clusters/*; do
  [ "$(cat "$c/pgbouncer")" = up ] || { echo "pgbouncer on $(basename "$c") is down"; down=$((down + 1)); }
done
[ "$down" -eq 0 ] || die "$down cluster(s) unhealthy"
echo "every cluster's pgbouncer is up"
