#!/bin/sh
# Succeeds only when instance $1 exists and is the primary.
. "$(dirname "$0")/lib/fleet.sh"
require_instance "$1"
[ "$(role_of "$1")" = primary ] || die "$1 is $(role_of "$1"), not the primary"
echo "$1 is the primary"
