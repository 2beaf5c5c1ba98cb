#!/usr/bin/env bash
# configure-dns.sh — DNS records that send MCP clients to the fronts of the
# active region(s), from the cluster's live region states.
#
#   scripts/configure-dns.sh zone mcp.example.com [TTL] > erlmcp.zone
#   scripts/configure-dns.sh route53 mcp.example.com [TTL] > batch.json
#   aws route53 change-resource-record-sets --hosted-zone-id Z... --change-batch file://batch.json
#
# zone: a BIND fragment (the name points at the active regions' fronts;
# <region>.<name> at each region's). route53: a change batch of weighted
# record sets, one per region, weight 0 for standby and failed regions.
# Nothing is sent to a DNS provider: the records go to stdout.
# The admin API is found as erlmcp ctl finds it (ERLMCP_ADMIN_URL and
# ERLMCP_ADMIN_TOKEN, or the cluster.json of ERLMCP_DATA_DIR, default ./.erlmcp).
#
# Exit codes: 0 records written; 1 the admin API could not be read; 2 bad usage.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${ERLMCP_BIN:-$here/../bin/erlmcp}

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  zone|route53) ;;
  *) usage >&2; exit 2 ;;
esac
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  usage >&2
  exit 2
fi
if [ ! -x "$bin" ]; then
  echo "configure-dns.sh: $bin not found; run make build or set ERLMCP_BIN" >&2
  exit 2
fi
exec "$bin" ctl dns "$@"
