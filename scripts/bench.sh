#!/usr/bin/env bash
# bench.sh — the same erlmcp loadtest against three targets, on loopback:
#   gosdk    the official MCP Go SDK, one process, in-memory sessions (bench/gosdkserver)
#   mcpgo    mark3labs/mcp-go, one process, in-memory sessions (bench/mcpgoserver)
#   worker1  one erlmcp worker with the session store in the path
#            (erlmcp up --workers 1; the worker's own port, no front)
#   ha3      the full HA path: the front over 3 workers (erlmcp up)
# for each mix in BENCH_MIXES and each concurrency in BENCH_CONCURRENCY
# (sessions = concurrency), a warm-up run then a measured run. Prints a table
# with rps and p99 ratios against go-sdk, and keeps every JSON report in
# BENCH_RESULTS. Exits non-zero if any run or any target fails.
#
# Knobs (environment): BENCH_DURATION (10s), BENCH_WARMUP (3s),
# BENCH_CONCURRENCY ("16 64"), BENCH_MIXES ("echo=1 default"),
# BENCH_TARGETS ("gosdk mcpgo worker1 ha3"), BENCH_RESULTS (bench/results/<date>),
# BENCH_PORT_BASE (18000), BENCH_GOSDK_JSON (true); BENCH_STORE (1: then run
# scripts/bench-store.sh, the session store's own benchmarks; 0 skips).
#
# Then latency against the number of stored sessions: one worker with the
# store (as worker1), the store filled by bench/preload to each size in
# BENCH_SESSIONS ("10000 100000 1000000"; "" skips) in turn, the same
# loadtest measured at each (BENCH_SESSIONS_MIX, default "default", at
# BENCH_SESSIONS_C, 16), with the store nodes' resident memory. Filling 1M
# sessions takes minutes: a progress line per second.
#
# bench/chart draws bench.svg (throughput and p99 per target, and against
# stored sessions) from the same rows.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-3s}
read -r -a CONCS <<<"${BENCH_CONCURRENCY:-16 64}"
read -r -a MIXES <<<"${BENCH_MIXES:-echo=1 default}"
read -r -a TARGETS <<<"${BENCH_TARGETS:-gosdk mcpgo worker1 ha3}"
RESULTS=${BENCH_RESULTS:-$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
PORT_BASE=${BENCH_PORT_BASE:-18000}
GOSDK_JSON=${BENCH_GOSDK_JSON:-true}
BIN=$ROOT/bin/erlmcp
GOSDK=$ROOT/bin/gosdkserver
MCPGO=$ROOT/bin/mcpgoserver
PRELOAD=$ROOT/bin/preload
CHART=$ROOT/bin/benchchart
read -r -a SIZES <<<"${BENCH_SESSIONS-10000 100000 1000000}"
SCALE_MIX=${BENCH_SESSIONS_MIX:-default}
SCALE_C=${BENCH_SESSIONS_C:-16}

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

mkdir -p "$RESULTS"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/erlmcp-bench.XXXXXX")
SERVER_PID=""

stop_server() {
	if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		local i
		for ((i = 0; i < 150; i++)); do
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$SERVER_PID" 2>/dev/null; then
			log "pid $SERVER_PID still up after 15s: SIGKILL"
			kill -KILL "$SERVER_PID" 2>/dev/null || true
		fi
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	SERVER_PID=""
}
cleanup() {
	stop_server
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building bin/erlmcp, bin/gosdkserver and bin/mcpgoserver"
make -s build
(cd bench && go build -o "$GOSDK" ./gosdkserver && go build -o "$MCPGO" ./mcpgoserver &&
	go build -o "$PRELOAD" ./preload && go build -o "$CHART" ./chart)

# wait_http URL SECONDS: until URL answers at all (any HTTP status; a GET
# that opens an SSE stream counts once its status line arrived).
wait_http() {
	local url=$1 secs=$2 i code
	for ((i = 0; i < secs * 10; i++)); do
		code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" || true)
		if [[ $code != 000 ]]; then return 0; fi
		if [[ -n "$SERVER_PID" ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then return 1; fi
		sleep 0.1
	done
	return 1
}

# wait_ready LOG SECONDS: until `erlmcp up` prints its ready line.
wait_ready() {
	local logf=$1 secs=$2 i
	for ((i = 0; i < secs * 10; i++)); do
		if grep -q '^ready' "$logf" 2>/dev/null; then return 0; fi
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then return 1; fi
		sleep 0.1
	done
	return 1
}

# start_target NAME INDEX: starts the target on its own ports and data dir;
# sets URL.
start_target() {
	local name=$1 idx=$2
	local base=$((PORT_BASE + idx * 100))
	local dir=$TMP/$name
	mkdir -p "$dir"
	case $name in
	gosdk)
		"$GOSDK" --addr "127.0.0.1:$base" --json="$GOSDK_JSON" >"$dir/server.log" 2>&1 &
		SERVER_PID=$!
		URL=http://127.0.0.1:$base/mcp
		wait_http "$URL" 20
		;;
	mcpgo)
		"$MCPGO" --addr "127.0.0.1:$base" >"$dir/server.log" 2>&1 &
		SERVER_PID=$!
		URL=http://127.0.0.1:$base/mcp
		wait_http "$URL" 20
		;;
	worker1 | ha3)
		local workers=3
		[[ $name == worker1 ]] && workers=1
		"$BIN" up --data-dir "$dir/data" --workers "$workers" \
			--listen "127.0.0.1:$base" \
			--worker-port-base "$((base + 10))" \
			--store-port-base "$((base + 20))" \
			--admin-port-base "$((base + 30))" \
			--etcd-client-port "$((base + 40))" \
			--etcd-peer-port "$((base + 41))" \
			--log-level warn >"$dir/up.log" 2>&1 &
		SERVER_PID=$!
		if [[ $name == worker1 ]]; then
			URL=http://127.0.0.1:$((base + 10))/mcp
		else
			URL=http://127.0.0.1:$base/mcp
		fi
		wait_ready "$dir/up.log" 90 && wait_http "$URL" 20
		;;
	esac
}

# field JSONFILE EXPR: one value out of a loadtest report.
field() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"r": r}))' "$1" "$2"; }

FAILED=0
ROWS=$TMP/rows.tsv
SCALE=$TMP/sessions.tsv
: >"$ROWS"
: >"$SCALE"

# measure TARGET MIX C OUT ROWSFILE LABEL: a warm-up and a measured loadtest
# against $URL; appends "LABEL mix C rps p50 p99 errors rc" to ROWSFILE.
measure() {
	local t=$1 mix=$2 c=$3 out=$4 rows=$5 label=$6 rc=0
	local mixflag=()
	[[ $mix != default ]] && mixflag=(--mix "$mix")
	log "$t mix=$mix C=$c: warm-up $WARMUP"
	"$BIN" loadtest --url "$URL" --sessions "$c" --concurrency "$c" \
		--duration "$WARMUP" "${mixflag[@]}" --json >/dev/null 2>"$TMP/warm.err" || true
	log "$t mix=$mix C=$c: measuring $DURATION"
	"$BIN" loadtest --url "$URL" --sessions "$c" --concurrency "$c" \
		--duration "$DURATION" "${mixflag[@]}" --json >"$out" 2>"$TMP/run.err" || rc=$?
	if [[ ! -s $out ]]; then
		log "$t mix=$mix C=$c: no report (exit $rc)"
		tail -n 5 "$TMP/run.err" >&2 || true
		FAILED=1
		return
	fi
	if [[ $rc -ne 0 ]]; then
		log "$t mix=$mix C=$c: loadtest exit $rc: $(field "$out" '"; ".join(r["violations"] or [])')"
		FAILED=1
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$mix" "$c" \
		"$(field "$out" 'round(r["rps"])')" \
		"$(field "$out" 'r["latency_ms"]["p50"]')" \
		"$(field "$out" 'r["latency_ms"]["p99"]')" \
		"$(field "$out" 'r["errors"]["total"]')" \
		"$rc" >>"$rows"
	log "$t mix=$mix C=$c: $(cut -f4 <(tail -n1 "$rows")) req/s, p99 $(cut -f6 <(tail -n1 "$rows")) ms"
}

# store_rss_mib PORT...: the store nodes' summed resident memory, from their
# /metrics (process_resident_memory_bytes), in MiB.
store_rss_mib() {
	local total=0 p v
	for p in "$@"; do
		v=$(curl -s -m 5 "http://127.0.0.1:$p/metrics" | awk '$1 == "process_resident_memory_bytes" {printf "%d", $2}')
		total=$((total + ${v:-0}))
	done
	echo $((total / 1048576))
}

for ti in "${!TARGETS[@]}"; do
	t=${TARGETS[$ti]}
	log "starting target $t"
	if ! start_target "$t" "$ti"; then
		log "target $t did not come up; its log:"
		tail -n 30 "$TMP/$t"/*.log >&2 || true
		stop_server
		FAILED=1
		continue
	fi
	log "target $t up at $URL (pid $SERVER_PID)"
	for mix in "${MIXES[@]}"; do
		mixname=${mix//[=,]/-}
		for c in "${CONCS[@]}"; do
			measure "$t" "$mix" "$c" "$RESULTS/$t-$mixname-c$c.json" "$ROWS" "$t"
		done
	done
	for f in "$TMP/$t"/*.log "$TMP/$t"/data/logs/*.log; do
		if [[ -e $f ]]; then cp "$f" "$RESULTS/$t-$(basename "$f")"; fi
	done
	stop_server
	log "target $t stopped"
done

if ((${#SIZES[@]})); then
	# Index 9: its own ports, after the targets'; a fresh data dir.
	rm -rf "$TMP/worker1"
	if ! start_target worker1 9; then
		log "the stored-sessions target did not come up; its log:"
		tail -n 30 "$TMP/worker1"/*.log >&2 || true
		stop_server
		FAILED=1
	else
		base=$((PORT_BASE + 900))
		have=0
		for size in "${SIZES[@]}"; do
			log "stored sessions: filling the store to $size (+$((size - have)))"
			if ! "$PRELOAD" --etcd "http://127.0.0.1:$((base + 40))" --n "$((size - have))" \
				>"$RESULTS/preload-$size.json" 2> >(awk '!/^preload +[0-9]/ || NR % 10 == 0 { print; fflush() }' >&2); then
				log "preload to $size failed"
				FAILED=1
				break
			fi
			have=$size
			log "stored sessions: $size stored ($(field "$RESULTS/preload-$size.json" 'round(r["per_second"])') creates/s)"
			measure "worker1" "$SCALE_MIX" "$SCALE_C" "$RESULTS/sessions-$size.json" "$SCALE" "$size"
			printf '%s\n' "$(store_rss_mib $((base + 23)) $((base + 24)) $((base + 25)))" >>"$TMP/rss"
		done
		paste "$SCALE" "$TMP/rss" >"$RESULTS/sessions.tsv" 2>/dev/null || true
		for f in "$TMP/worker1"/*.log "$TMP/worker1"/data/logs/*.log; do
			if [[ -e $f ]]; then cp "$f" "$RESULTS/sessions-$(basename "$f")"; fi
		done
		stop_server
	fi
fi

cp "$ROWS" "$RESULTS/rows.tsv"
# The table: ratios against the go-sdk row with the same mix and C.
python3 - "$ROWS" <<'PY' | tee "$RESULTS/table.md"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
base = {(r[1], r[2]): r for r in rows if r[0] == "gosdk"}
print("| target | mix | C | rps | p50 ms | p99 ms | errors | rps / go-sdk | p99 / go-sdk |")
print("|---|---|---|---|---|---|---|---|---|")
for t, mix, c, rps, p50, p99, errs, rc in rows:
    b = base.get((mix, c))
    rr = f"{float(rps) / float(b[3]):.2f}x" if b and float(b[3]) else "-"
    pr = f"{float(p99) / float(b[5]):.2f}x" if b and float(b[5]) else "-"
    flag = "" if rc == "0" else " (FAILED)"
    print(f"| {t}{flag} | {mix} | {c} | {rps} | {float(p50):.2f} | {float(p99):.2f} | {errs} | {rr} | {pr} |")
PY
if [[ -s $RESULTS/sessions.tsv ]]; then
	python3 - "$RESULTS/sessions.tsv" <<'PY' | tee "$RESULTS/sessions.md"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print()
print("| stored sessions | mix | C | rps | p50 ms | p99 ms | errors | store RSS MiB (3 nodes) |")
print("|---|---|---|---|---|---|---|---|")
for n, mix, c, rps, p50, p99, errs, rc, rss in rows:
    print(f"| {int(n):,} | {mix} | {c} | {rps} | {float(p50):.2f} | {float(p99):.2f} | {errs} | {rss} |")
PY
fi
if ! "$CHART" --rows "$RESULTS/rows.tsv" --sessions "$RESULTS/sessions.tsv" --out "$RESULTS/bench.svg"; then
	log "chart failed"
	FAILED=1
fi
# The session store's own benchmarks (BENCH_STORE=0 skips them).
if [[ ${BENCH_STORE:-1} != 0 ]]; then
	BENCH_RESULTS=$RESULTS scripts/bench-store.sh || FAILED=1
fi
log "reports in $RESULTS"
if [[ $FAILED -ne 0 ]]; then
	log "at least one run failed"
	exit 1
fi
