#!/bin/sh
# Succeeds only when instance $1 is not the primary and state machine $2 is
# not attached to it: the check that would have saved the fleet in 2017.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "$1"
[ "$(role_of "$1")" != primary ] || die "$1 is still the primary"
attached=$(cat "$FLEET_DIR/$2/primary")
[ "$attached" != "$1" ] || die "$2 is still attached to $1"
echo "$1 is $(role_of "$1") and $2 uses $attached"
