# Shared helpers for the example scripts. They act on a *simulated* fleet:
# every instance is a folder under $FLEET_DIR holding plain files
# (`version`, `role`, `data`), and the state machine is a folder whose
# `primary` file names the database it is attached to. Nothing here touches
# a real database.
set -eu
FLEET_DIR="${FLEET_DIR:-${TMPDIR:-/tmp}/changegate-fleet}"

die() {
  echo "error: $*" >&2
  exit 1
}

instance_dir() {
  printf '%s/%s' "$FLEET_DIR" "$1"
}

require_instance() {
  [ -d "$(instance_dir "$1")" ] || die "instance $1 does not exist under $FLEET_DIR"
}

role_of() {
  cat "$(instance_dir "$1")/role"
}

# A fault switch for demos: `touch $FLEET_DIR/faults/<step>` makes that
# script fail the way the 2017 release did.
fault() {
  if [ -e "$FLEET_DIR/faults/$1" ]; then
    die "$1 failed: $(cat "$FLEET_DIR/faults/$1" 2>/dev/null || true)"
  fi
}
