#!/usr/bin/env bash
# disaster-recovery.sh — health verdict, region switch, backup and restore of
# an erlmcp cluster (a thin wrapper of `erlmcp dr`; see erlmcp dr --help).
#
#   scripts/disaster-recovery.sh check [--json]   health verdict
#   scripts/disaster-recovery.sh secondary        make the secondary region active, verify
#   scripts/disaster-recovery.sh backup           make the DR (backup) region active, verify
#   scripts/disaster-recovery.sh primary          fail back to the primary region, verify
#   scripts/disaster-recovery.sh snapshot DIR     back up etcd and every store shard into DIR
#   scripts/disaster-recovery.sh restore DIR      restore DIR: with the cluster stopped and an
#                                                 empty data dir, etcd; then start the cluster
#                                                 and run it again to load the sessions
#
# The cluster is found as erlmcp ctl finds it: ERLMCP_DATA_DIR (default
# ./.erlmcp, its cluster.json), or ERLMCP_ADMIN_URL, ERLMCP_ADMIN_TOKEN and
# ERLMCP_ETCD_ENDPOINTS. Extra flags after the arguments go to erlmcp dr
# (--timeout 5m, --etcd-client-port N, ...). Progress lines go to stderr.
#
# Exit codes: check: 0 healthy, 1 degraded, 2 down or unreachable;
# the others: 0 done and verified, 1 failed; all: 64 bad usage.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${ERLMCP_BIN:-$here/../bin/erlmcp}

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

if [ $# -lt 1 ]; then
  usage >&2
  exit 64
fi
cmd=$1
shift
case "$cmd" in
  -h|--help|help) usage; exit 0 ;;
  check|secondary|backup|primary) ;;
  snapshot|restore)
    if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
      echo "disaster-recovery.sh $cmd: want a directory: $cmd DIR" >&2
      exit 64
    fi ;;
  *) usage >&2; exit 64 ;;
esac
if [ ! -x "$bin" ]; then
  echo "disaster-recovery.sh: $bin not found; run make build or set ERLMCP_BIN" >&2
  exit 64
fi

case "$cmd" in
  check) exec "$bin" dr check "$@" ;;
  secondary) exec "$bin" dr switch secondary "$@" ;;
  backup) exec "$bin" dr switch dr "$@" ;;
  primary) exec "$bin" dr switch primary "$@" ;;
  snapshot)
    dir=$1
    shift
    exec "$bin" dr snapshot --out "$dir" "$@" ;;
  restore)
    dir=$1
    shift
    exec "$bin" dr restore --from "$dir" "$@" ;;
esac
