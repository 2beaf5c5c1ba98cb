#!/usr/bin/env bash
# ha-load-test.sh — HA scenarios under load against an `erlmcp up` cluster:
# each runs `erlmcp loadtest` with faults injected while the load runs and
# prints its verdict against its budgets; the script exits non-zero when any
# scenario misses one.
#
#   scripts/ha-load-test.sh SCENARIO...
#
# Scenarios: baseline worker_failure store_failure store_follower_failure
# controlplane_failure etcd_failure front_failure partition pause
# region_failure rolling_restart all
#
# Without HA_DATA_DIR the script starts a cluster in a temporary data dir
# (up --stores 4 --fronts 2 --etcd-members 3 --store-fault-proxies, ports
# from HA_PORT_BASE) and stops it at the end; with HA_DATA_DIR it targets
# the running `erlmcp up` of that data dir (etcd_failure needs
# --etcd-members 3, front_failure and region_failure --fronts 2, partition
# --store-fault-proxies there).
#
# Environment (defaults in brackets):
#   ERLMCP_BIN          erlmcp binary [bin/erlmcp, built if missing]
#   HA_DATA_DIR         target a running cluster instead of starting one
#   HA_PORT_BASE        first of 80 loopback ports for a started cluster [random,
#                       below 32080]
#   HA_PHASE            seconds between faults; a scenario lasts ~5 phases [4]
#   HA_HOLD             how long a SIGSTOPped process stays stopped [3s]
#   HA_REGION           region whose every process is stopped [active: the
#                       one the control plane has active]
#   HA_REGION_HOLD      how long that region stays stopped [15s]
#   HA_SEED             seed of fault times and the operation mix [time]
#   HA_SESSIONS, HA_CONCURRENCY   load shape [16, 8]
#   HA_RATE             operations per second, an open loop (the steady load
#                       the p95 budget is about); 0 runs a closed loop, as
#                       fast as the cluster answers [100]
#   HA_MAX_P95          baseline p95 budget [100ms]
#   HA_STALL_REFERENCE  the slowest steady answer of a fault-free run on this
#                       cluster: a fault's slowest answer counts as a stall
#                       only above it [the baseline scenario's, when it ran
#                       before in the same invocation; else none]
#   HA_MAX_ERRORS_PCT   budget of errors no fault explains, percent [0.01]
#   HA_MAX_WORKER, HA_MAX_STORE_LEADER, HA_MAX_STORE_FOLLOWER,
#   HA_MAX_CONTROLPLANE, HA_MAX_ETCD, HA_MAX_FRONT, HA_MAX_REGION
#                       failover-time budgets [1s 2s 0s 0s 0s 1s 10s]
#   HA_REPORT_DIR       where reports, fault logs and cluster history go
#                       [a temporary dir, printed]
#   ERLMCP_LOG_LEVEL    log level of a started cluster [info]; at debug each
#                       worker logs every request's timing (logs/ of the data dir)
#
# Exit status: 0 every scenario met its budgets; 1 one missed (its seed,
# report and the cluster's history are printed); 2 bad usage.
set -euo pipefail

usage() {
	sed -n '2,50p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
}

[[ $# -ge 1 ]] || usage
all=(baseline worker_failure store_failure store_follower_failure controlplane_failure
	etcd_failure front_failure partition pause region_failure rolling_restart)
scenarios=()
for s in "$@"; do
	case "$s" in
	all) scenarios+=("${all[@]}") ;;
	-h | --help) usage ;;
	*)
		ok=0
		for a in "${all[@]}"; do [[ $a == "$s" ]] && ok=1; done
		[[ $ok == 1 ]] || {
			echo "ha-load-test: unknown scenario $s (want one of: ${all[*]} all)" >&2
			exit 2
		}
		scenarios+=("$s")
		;;
	esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${ERLMCP_BIN:-$root/bin/erlmcp}
if [[ ! -x $bin ]]; then
	(cd "$root" && go build -o "$bin" ./cmd/erlmcp)
fi
phase=${HA_PHASE:-4}
hold=${HA_HOLD:-3s}
region=${HA_REGION:-active}
region_hold=${HA_REGION_HOLD:-15s}
seed=${HA_SEED:-$(date +%s)}
sessions=${HA_SESSIONS:-16}
concurrency=${HA_CONCURRENCY:-8}
rate=${HA_RATE:-100}
max_p95=${HA_MAX_P95:-100ms}
max_errors_pct=${HA_MAX_ERRORS_PCT:-0.01}
reports=${HA_REPORT_DIR:-$(mktemp -d -t erlmcp-ha-XXXXXX)}
mkdir -p "$reports"
RANDOM=$seed
echo "ha-load-test: seed $seed (replay with HA_SEED=$seed), reports in $reports"

up_pid=""
data_dir=${HA_DATA_DIR:-}
cleanup() {
	if [[ -n $up_pid ]]; then
		kill -TERM "$up_pid" 2>/dev/null || true
		wait "$up_pid" 2>/dev/null || true
	fi
}
trap cleanup EXIT

if [[ -z $data_dir ]]; then
	data_dir=$(mktemp -d -t erlmcp-ha-up-XXXXXX)
	# Below the kernel's ephemeral range (32768 up here): a port in it
	# that is free while a process restarts can be taken meanwhile as the
	# local port of an outgoing connection, and the restart then fails to
	# bind it.
	base=${HA_PORT_BASE:-$((10000 + (RANDOM * 7 + $$) % 22000))}
	echo "ha-load-test: starting erlmcp up in $data_dir (ports $base..$((base + 79)))"
	# Short detection settings so a region failure is seen within seconds;
	# the children read them from the environment (their ERLMCP_* flags).
	ERLMCP_PROBE_INTERVAL=${ERLMCP_PROBE_INTERVAL:-1s} \
		ERLMCP_REGION_FAIL_AFTER=${ERLMCP_REGION_FAIL_AFTER:-3} \
		ERLMCP_REGION_PROBE_WINDOW=${ERLMCP_REGION_PROBE_WINDOW:-4} \
		"$bin" up --data-dir "$data_dir" --stores 4 --fronts 2 --etcd-members 3 --store-fault-proxies \
		--listen "127.0.0.1:$base" --front-port-base $((base + 1)) \
		--admin-port-base $((base + 10)) --worker-port-base $((base + 20)) \
		--store-port-base $((base + 30)) --store-http-port-base $((base + 40)) \
		--etcd-client-port $((base + 50)) --etcd-peer-port $((base + 51)) \
		--store-proxy-port-base $((base + 60)) \
		>"$reports/up.out" 2>"$reports/up.err" &
	up_pid=$!
	for _ in $(seq 1 240); do
		grep -q '^ready' "$reports/up.out" 2>/dev/null && break
		kill -0 "$up_pid" 2>/dev/null || {
			echo "ha-load-test: erlmcp up exited:" >&2
			cat "$reports/up.out" "$reports/up.err" >&2
			exit 1
		}
		sleep 0.5
	done
	grep -q '^ready' "$reports/up.out" || {
		echo "ha-load-test: erlmcp up not ready after 120s" >&2
		exit 1
	}
fi

# at N: phase N plus a seeded jitter of up to half a phase, in milliseconds.
at() {
	echo "$((phase * 1000 * $1 + RANDOM % (phase * 500 + 1)))ms"
}

# pair sets F to a fault pair for a target: SIGKILL at phase 1, SIGSTOP at
# phase 3 (held HA_HOLD).
F=()
pair() {
	local target=$1 max=$2
	F=(--fault "kill:$target@$(at 1)?max=$max" --fault "stop:$target@$(at 3)?hold=$hold&max=$max")
}

failed=()
run() {
	local name=$1
	shift
	local report=$reports/$name.json log=$reports/$name.log
	echo
	echo "=== $name"
	local rc=0 ref=()
	# A faulted run's own fault-free seconds are few; the baseline's
	# slowest answer says better how slow an answer gets with no fault.
	if [[ -n ${HA_STALL_REFERENCE:-} ]]; then
		ref=(--stall-reference "$HA_STALL_REFERENCE")
	elif [[ $name != baseline && -s $reports/baseline.json ]]; then
		ref=(--stall-reference-from "$reports/baseline.json")
	fi
	"$bin" loadtest --data-dir "$data_dir" --settle 120s --seed "$seed" "${ref[@]}" \
		--sessions "$sessions" --concurrency "$concurrency" --rate "$rate" --timeout 5s \
		--max-errors-pct "$max_errors_pct" --max-sessions-lost 0 --max-writes-lost 0 \
		--report-file "$report" "$@" >"$reports/$name.txt" 2>"$log" || rc=$?
	grep -v '^loadtest  *[0-9]*s  rps' "$log" || true
	cat "$reports/$name.txt"
	if [[ $rc -ne 0 ]]; then
		failed+=("$name")
		echo "--- $name: FAIL (seed $seed; report $report; fault log $log)"
		echo "--- cluster history:"
		"$bin" ctl --data-dir "$data_dir" history 2>&1 | tail -20 || true
		"$bin" ctl --data-dir "$data_dir" history --json >"$reports/$name.history.json" 2>/dev/null || true
	else
		echo "--- $name: PASS"
	fi
}

dur() { echo "$((phase * $1))s"; }

for s in "${scenarios[@]}"; do
	case "$s" in
	baseline)
		run baseline --duration "$(dur 3)" --max-p95 "$max_p95"
		;;
	worker_failure)
		pair worker "${HA_MAX_WORKER:-1s}"
		run "$s" --duration "$(dur 5)" --fault-tail "$(dur 1)" "${F[@]}"
		;;
	store_failure)
		pair store-leader "${HA_MAX_STORE_LEADER:-2s}"
		run "$s" --duration "$(dur 5)" --fault-tail "$(dur 1)" "${F[@]}"
		;;
	store_follower_failure)
		pair store-follower "${HA_MAX_STORE_FOLLOWER:-0s}"
		run "$s" --duration "$(dur 5)" --fault-tail "$(dur 1)" "${F[@]}"
		;;
	controlplane_failure)
		pair controlplane-leader "${HA_MAX_CONTROLPLANE:-0s}"
		run "$s" --duration "$(dur 5)" --fault-tail "$(dur 1)" "${F[@]}"
		;;
	etcd_failure)
		pair etcd "${HA_MAX_ETCD:-0s}"
		run "$s" --duration "$(dur 5)" --fault-tail "$(dur 1)" "${F[@]}"
		;;
	front_failure)
		pair front "${HA_MAX_FRONT:-1s}"
		run "$s" --duration "$(dur 5)" --fault-tail "$(dur 1)" "${F[@]}"
		;;
	pause)
		# Short pauses (GC-like, below every lease TTL) of each role in turn.
		run "$s" --duration "$(dur 5)" --fault-tail "$(dur 1)" \
			--fault "stop:worker@$(at 1)?hold=1s&max=${HA_MAX_WORKER:-1s}" \
			--fault "stop:store-leader@$(at 2)?hold=1s&max=${HA_MAX_STORE_LEADER:-2s}" \
			--fault "stop:controlplane-leader@$(at 3)?hold=1s&max=${HA_MAX_CONTROLPLANE:-0s}"
		;;
	region_failure)
		run "$s" --duration "$(dur 3)" --fault-tail "$(dur 2)" \
			--fault "stop:region=$region@$(at 1)?hold=$region_hold&max=${HA_MAX_REGION:-10s}"
		echo "--- regions after $s:"
		"$bin" ctl --data-dir "$data_dir" regions 2>&1 || true
		"$bin" ctl --data-dir "$data_dir" history 2>&1 | grep -i region | tail -5 || true
		;;
	rolling_restart)
		run "$s" --duration "$(dur 2)" --fault-tail "$(dur 1)" --fault "rolling-restart@$(at 1)"
		;;
	partition)
		# One store node cut off from every other process (up's fault
		# proxies): the shard leader first, then a follower.
		run "$s" --duration "$(dur 5)" --fault-tail "$(dur 1)" \
			--fault "partition:store-leader@$(at 1)?hold=$hold&max=${HA_MAX_STORE_LEADER:-2s}" \
			--fault "partition:store-follower@$(at 3)?hold=$hold&max=${HA_MAX_STORE_FOLLOWER:-0s}"
		;;
	esac
done

echo
if [[ ${#failed[@]} -gt 0 ]]; then
	echo "ha-load-test: FAIL: ${failed[*]} (seed $seed, reports in $reports)"
	exit 1
fi
echo "ha-load-test: PASS: ${scenarios[*]} (seed $seed, reports in $reports)"
