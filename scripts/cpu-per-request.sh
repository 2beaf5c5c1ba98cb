#!/usr/bin/env bash
# cpu-per-request.sh — CPU time per request of each process of a target,
# by role, under one loadtest run. On a shared 2-core machine requests per
# second swing with whatever else runs; the CPU a request costs the
# servers moves much less, so it is the number to compare a change by.
#
# Usage: scripts/cpu-per-request.sh PID URL [C] [DURATION] [MIX]
#   PID       the target's top process: `erlmcp up` (its children are
#             counted too, grouped by subcommand: worker, store, front,
#             controlplane) or a single server such as bench/gosdkserver
#   URL       its MCP endpoint
#   C         sessions = concurrency (16)
#   DURATION  of the measured run (10s), after a 2 s warm-up run
#   MIX       loadtest --mix (echo=1)
# Prints one line: rps, p50/p99 ms, then microseconds of CPU (user+system)
# per request for each role, all servers, and the load generator.
# ERLMCP_BIN overrides the erlmcp binary (bin/erlmcp).
set -euo pipefail

if [[ $# -lt 2 ]]; then
	sed -n '2,19p' "$0" >&2
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
TMP=$(mktemp -d "${TMPDIR:-/tmp}/erlmcp-cpu.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# snapshot: "role ticks" per role of PID and its children.
snapshot() {
	local p role
	for p in "$PID" $(pgrep -P "$PID" || true); do
		[[ -r /proc/$p/stat ]] || continue
		role=$(tr '\0' ' ' <"/proc/$p/cmdline" | awk '{print $2}')
		if [[ $p == "$PID" ]]; then role=top; fi
		awk -v r="$role" '{print r, $14 + $15}' "/proc/$p/stat"
	done | awk '{t[$1] += $2} END {for (r in t) print r, t[r]}' | sort
}

"$BIN" loadtest --url "$URL" --sessions "$C" --concurrency "$C" --duration 2s --mix "$MIX" --json >/dev/null 2>&1 || true
snapshot >"$TMP/before"
# loadtest exits 1 when a budget is missed (more than 1 % errors): still a
# measurement, so go on as long as it wrote its report.
/usr/bin/time -f '%U %S' -o "$TMP/loadgen" \
	"$BIN" loadtest --url "$URL" --sessions "$C" --concurrency "$C" --duration "$DURATION" --mix "$MIX" --json >"$TMP/report.json" 2>"$TMP/loadtest.err" || true
if [[ ! -s $TMP/report.json ]]; then
	echo "cpu-per-request: the loadtest wrote no report; its errors:" >&2
	cat "$TMP/loadtest.err" >&2
	exit 1
fi
snapshot >"$TMP/after"

python3 - "$TMP" "$(getconf CLK_TCK)" <<'PY'
import json, sys
tmp, hz = sys.argv[1], float(sys.argv[2])
def read(name):
    return {l.split()[0]: int(l.split()[1]) for l in open(f"{tmp}/{name}") if l.strip()}
before, after = read("before"), read("after")
r = json.load(open(f"{tmp}/report.json"))
n = r["requests"] or 1
parts, total = [], 0.0
for role in sorted(after):
    s = (after[role] - before.get(role, 0)) / hz
    total += s
    parts.append(f"{role}={s / n * 1e6:.0f}")
lg = sum(map(float, open(f"{tmp}/loadgen").read().splitlines()[-1].split()))  # time(1) puts "Command exited with non-zero status" first
print(f"rps={r['rps']:.0f} p50={r['latency_ms']['p50']:.1f}ms p99={r['latency_ms']['p99']:.1f}ms "
      f"errors={r['errors']['total']} cpu_us_per_request: {' '.join(parts)} servers={total / n * 1e6:.0f} loadgen={lg / n * 1e6:.0f}")
PY
