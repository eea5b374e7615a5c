#!/bin/sh
# Creates the simulated fleet of December 2017: a 9.6 primary attached to
# the state machine, and the Postgres clusters of changes/fleet/clusters.txt
# with pgbouncer up. Usage: fleet_init.sh
. "$(dirname "$0")/lib/fleet.sh"
rm -rf "$FLEET_DIR"
mkdir -p "$FLEET_DIR/sm-pg96" "$FLEET_DIR/state-machine" "$FLEET_DIR/backups" "$FLEET_DIR/faults"
echo 9.6 > "$FLEET_DIR/sm-pg96/version"
echo primary > "$FLEET_DIR/sm-pg96/role"
printf 'instance-%03d running\n' $(seq 1 200) > "$FLEET_DIR/sm-pg96/data"
echo sm-pg96 > "$FLEET_DIR/state-machine/primary"
grep -v '^#' "$(dirname "$0")/../fleet/clusters.txt" | while read -r cluster; do
  [ -n "$cluster" ] || continue
  mkdir -p "$FLEET_DIR/clusters/$cluster"
  echo up > "$FLEET_DIR/clusters/$cluster/pgbouncer"
done
echo "simulated fleet ready in $FLEET_DIR"
