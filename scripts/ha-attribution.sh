#!/usr/bin/env bash
# ha-attribution.sh — where one loadtest run's requests and CPU went on an
# `erlmcp up` cluster, per process: to tell why one run of the HA path is
# slower than another (docs/benchmarks.md, "the HA path's bimodal rate").
#
# Usage: scripts/ha-attribution.sh PID URL [C] [DURATION] [MIX]
#   PID       the `erlmcp up` process (its children are measured)
#   URL       its MCP endpoint (the front)
#   C         sessions = concurrency (16)
#   DURATION  of the measured run (10s), after a 2 s warm-up run
#   MIX       loadtest --mix (echo=1)
# Prints the run's rps and latency, then one line per child: CPU (user +
# system) in microseconds and context switches per request of the run (a
# process that sleeps between requests pays a wake-up for each, one kept
# busy serves several per wake-up); for a worker, its share
# of the run's tools/call requests and its GC cycles; for a store node, the
# shard leaders it holds, leader changes during the run, and its
# GetSession calls per request (the workers' session-cache misses). Worker
# and store metrics are read from the addresses on the children's command
# lines (worker --listen, store --http-listen).
# ERLMCP_BIN overrides the erlmcp binary (bin/erlmcp).
set -euo pipefail

if [[ $# -lt 2 ]]; then
	sed -n '2,21p' "$0" >&2
	exit 2
fi
# The usage above is read from "$0", so only now to the repository root.
cd "$(dirname "$0")/.."
PID=$1
URL=$2
C=${3:-16}
DURATION=${4:-10s}
MIX=${5:-echo=1}
BIN=${ERLMCP_BIN:-$(pwd)/bin/erlmcp}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/erlmcp-attr.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# arg PID NAME: the value of --NAME=... on PID's command line.
arg() { tr '\0' '\n' <"/proc/$1/cmdline" | sed -n "s/^--$2=//p" | head -n 1; }

# proc PID NAME: its CPU ticks and context switches (all threads; a
# thread that exited takes its count with it, and Go rarely ends threads).
proc() {
	awk -v n="$2" '{print n, "ticks", $14 + $15}' "/proc/$1/stat"
	cat "/proc/$1"/task/*/status 2>/dev/null | awk -v n="$2" '/ctxt_switches:/ {s += $2} END {print n, "switches", s + 0}'
}

# snapshot: "name key value" lines for up and every child of PID.
snapshot() {
	local p role id addr
	# up itself: the embedded etcd and the supervisor.
	proc "$PID" up/-
	for p in $(pgrep -P "$PID" || true); do
		[[ -r /proc/$p/stat ]] || continue
		role=$(tr '\0' '\n' <"/proc/$p/cmdline" | sed -n 2p)
		id=$(arg "$p" id)
		proc "$p" "$role/$id"
		case $role in
		worker) addr=$(arg "$p" listen) ;;
		store) addr=$(arg "$p" http-listen) ;;
		*) addr="" ;;
		esac
		[[ -n $addr ]] || continue
		curl -s -m 5 "http://$addr/metrics" | awk -v n="$role/$id" '
			/^erlmcp_worker_requests_total\{.*method="tools\/call"/ {calls += $2}
			/^go_gc_duration_seconds_count / {gc = $2}
			/^erlmcp_store_requests_total\{.*method="GetSession"/ {gets += $2}
			/^erlmcp_store_raft_leader_changes_total\{/ {changes = $2}
			/^erlmcp_store_shard_replicas\{.*state="leader"/ {leaders = $2}
			END {
				print n, "calls", calls + 0; print n, "gc", gc + 0; print n, "gets", gets + 0
				print n, "changes", changes + 0; print n, "leaders", leaders + 0
			}' || true
	done
}

"$BIN" loadtest --url "$URL" --sessions "$C" --concurrency "$C" --duration 2s --mix "$MIX" --json >/dev/null 2>&1 || true
snapshot >"$TMP/before"
# A missed budget (exit 1) is still a measurement, as long as there is a
# report.
"$BIN" loadtest --url "$URL" --sessions "$C" --concurrency "$C" --duration "$DURATION" --mix "$MIX" --json >"$TMP/report.json" 2>"$TMP/loadtest.err" || true
if [[ ! -s $TMP/report.json ]]; then
	echo "ha-attribution: the loadtest wrote no report; its errors:" >&2
	cat "$TMP/loadtest.err" >&2
	exit 1
fi
snapshot >"$TMP/after"

python3 - "$TMP" "$(getconf CLK_TCK)" <<'PY'
import collections, json, sys
tmp, hz = sys.argv[1], float(sys.argv[2])
def read(name):
    d = collections.defaultdict(dict)
    for line in open(f"{tmp}/{name}"):
        if line.strip():
            n, k, v = line.split()
            d[n][k] = float(v)
    return d
before, after = read("before"), read("after")
r = json.load(open(f"{tmp}/report.json"))
n = r["requests"] or 1
lat = r["latency_ms"]
print(f"rps={r['rps']:.0f} requests={r['requests']} p50={lat['p50']:.1f}ms p99={lat['p99']:.1f}ms errors={r['errors']['total']}")
calls = sum(a.get("calls", 0) - before.get(p, {}).get("calls", 0) for p, a in after.items()) or 1
total = switches = 0.0
for p in sorted(after):
    a, b = after[p], before.get(p, {})
    d = {k: a[k] - b.get(k, 0) for k in a}
    us = d["ticks"] / hz / n * 1e6
    total += us
    switches += d["switches"] / n
    line = f"{p:<24} cpu_us_per_request={us:.0f} switches_per_request={d['switches'] / n:.2f}"
    if p.startswith("worker/"):
        line += f" share={d['calls'] / calls:.3f} gc_cycles={d['gc']:.0f}"
    if p.startswith("store/"):
        line += f" leaders={a['leaders']:.0f} leader_changes={d['changes']:.0f} gets_per_request={d['gets'] / n:.3f}"
    print(line)
print(f"{'all children':<24} cpu_us_per_request={total:.0f} switches_per_request={switches:.2f}")
PY
