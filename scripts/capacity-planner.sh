#!/usr/bin/env bash
# capacity-planner.sh — plan workers and store nodes per region.
# A thin wrapper over `erlmcp capacity`; every flag is passed through.
#
#   scripts/capacity-planner.sh --sample --output plan.json
#   scripts/capacity-planner.sh --prometheus http://localhost:9090 --output plan.json
#   scripts/capacity-planner.sh --metrics observed.json --growth 0.1
#
# Exit codes are erlmcp capacity's: 0 plan made, 1 the load could not be
# read or an output written, 2 bad usage.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${ERLMCP_BIN:-$here/../bin/erlmcp}

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  echo
  exec "$bin" capacity --help
fi
if [ ! -x "$bin" ]; then
  echo "capacity-planner.sh: $bin not found; run make build or set ERLMCP_BIN" >&2
  exit 2
fi
exec "$bin" capacity "$@"
