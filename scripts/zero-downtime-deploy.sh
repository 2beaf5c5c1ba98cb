#!/usr/bin/env bash
# zero-downtime-deploy.sh: roll a new worker version into a running erlmcp
# cluster with no client request dropped and no session lost (sessions live
# in the session store, so any worker of either version serves any session).
#
# Against `erlmcp up` (default) it drives `erlmcp ctl deploy`: new-version
# workers are started through up's local actuator, traffic is shifted by the
# front's weighted split (etcd key <prefix>deploy/traffic), each step is
# gated on the new workers' error rate and p95 read from their /metrics,
# and a missed gate rolls back by itself. Against Kubernetes (--kubernetes)
# it drives kubectl; --dry-run prints that plan without running it.
set -euo pipefail

readonly EXIT_OK=0 EXIT_FAILED=1 EXIT_USAGE=2 EXIT_PRECONDITION=3

usage() {
	cat <<'EOF'
Usage: zero-downtime-deploy.sh VERSION [--canary | --bluegreen] [options]
       zero-downtime-deploy.sh --rollback [options]

Deploy worker VERSION with no downtime, or undo the last deploy.

VERSION is a label (e.g. v1.4.2). Against `erlmcp up` the worker binary of
VERSION is --binary PATH, else $ERLMCP_RELEASES_DIR/VERSION/erlmcp (default
releases dir: <data-dir>/releases). Workers record VERSION in membership
(worker flag --version-label), which is how the front tells them apart.
Against Kubernetes VERSION is the image tag: <--image>:VERSION.

Strategies:
  --canary     (default) start the new workers beside the old, then send
               10%, 50%, 100% of requests to them (--steps), each step gated
  --bluegreen  start a full new set, check it at 0%, switch 100% at once,
               gate; a miss switches back
  --rollback   redeploy the version the last deploy replaced (blue-green,
               gated), from <data-dir>/deploy/last

Gates (every step): over --window, the new workers' share of 5xx answers
must be <= --max-error-rate and their p95 latency <= --max-p95, with at
least --min-requests requests seen (extended up to --max-wait). A miss sets
the weight back to the old version, drains and stops the new workers, and
exits 1. Success drains and stops the old workers (SIGTERM: in-flight
requests finish) and makes VERSION the binary later scale-ups start.

Options (environment variable in brackets):
  --binary PATH         erlmcp binary of VERSION            [ERLMCP_DEPLOY_BINARY]
  --data-dir DIR        erlmcp up's data dir (./.erlmcp)    [ERLMCP_DATA_DIR]
  --erlmcp PATH         erlmcp used for `ctl deploy`        [ERLMCP_BIN]
                        (default: erlmcp on PATH, else ./bin/erlmcp)
  --count N             new workers (default: as many as run now)
  --steps "10 50 100"   canary weights, percent            [ERLMCP_DEPLOY_STEPS]
  --window D            gate window (10s)                  [ERLMCP_DEPLOY_WINDOW]
  --max-error-rate F    (0.01)                             [ERLMCP_DEPLOY_MAX_ERROR_RATE]
  --max-p95 D           (500ms)                            [ERLMCP_DEPLOY_MAX_P95]
  --min-requests N      (20)                               [ERLMCP_DEPLOY_MIN_REQUESTS]
  --max-wait D          (60s)                              [ERLMCP_DEPLOY_MAX_WAIT]
  --kubernetes          deploy with kubectl instead
  --namespace NS        (erlmcp)                           [ERLMCP_K8S_NAMESPACE]
  --image REPO          (erlmcp)                           [ERLMCP_K8S_IMAGE]
  --kubectl PATH        (kubectl)                          [KUBECTL]
  --dry-run             with --kubernetes: print the kubectl plan, run nothing
  -h, --help            this text

Exit codes:
  0  deployed (or rolled back on request)
  1  a gate missed or a step failed: rolled back to the old version
     (a line says so; if the rollback itself failed, that is said too)
  2  bad usage
  3  precondition: cluster unreachable, binary missing, a split already in
     place (a deploy in progress), nothing to roll back
EOF
}

log() { printf '%s deploy: %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() {
	local code=$1
	shift
	printf 'zero-downtime-deploy: %s\n' "$*" >&2
	exit "$code"
}

version=""
strategy=canary
rollback=false
kubernetes=false
dry_run=false
binary=${ERLMCP_DEPLOY_BINARY:-}
data_dir=${ERLMCP_DATA_DIR:-./.erlmcp}
erlmcp=${ERLMCP_BIN:-}
count=""
steps=${ERLMCP_DEPLOY_STEPS:-"10 50 100"}
window=${ERLMCP_DEPLOY_WINDOW:-10s}
max_error_rate=${ERLMCP_DEPLOY_MAX_ERROR_RATE:-0.01}
max_p95=${ERLMCP_DEPLOY_MAX_P95:-500ms}
min_requests=${ERLMCP_DEPLOY_MIN_REQUESTS:-20}
max_wait=${ERLMCP_DEPLOY_MAX_WAIT:-60s}
namespace=${ERLMCP_K8S_NAMESPACE:-erlmcp}
image=${ERLMCP_K8S_IMAGE:-erlmcp}
kubectl=${KUBECTL:-kubectl}

need_arg() { [[ $# -ge 2 && -n $2 ]] || die "$EXIT_USAGE" "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
	case $1 in
	-h | --help)
		usage
		exit "$EXIT_OK"
		;;
	--canary) strategy=canary ;;
	--bluegreen | --blue-green) strategy=bluegreen ;;
	--rollback) rollback=true ;;
	--kubernetes) kubernetes=true ;;
	--dry-run) dry_run=true ;;
	--binary | --data-dir | --erlmcp | --count | --steps | --window | --max-error-rate | --max-p95 | --min-requests | --max-wait | --namespace | --image | --kubectl)
		need_arg "$@"
		case $1 in
		--binary) binary=$2 ;;
		--data-dir) data_dir=$2 ;;
		--erlmcp) erlmcp=$2 ;;
		--count) count=$2 ;;
		--steps) steps=$2 ;;
		--window) window=$2 ;;
		--max-error-rate) max_error_rate=$2 ;;
		--max-p95) max_p95=$2 ;;
		--min-requests) min_requests=$2 ;;
		--max-wait) max_wait=$2 ;;
		--namespace) namespace=$2 ;;
		--image) image=$2 ;;
		--kubectl) kubectl=$2 ;;
		esac
		shift
		;;
	-*) die "$EXIT_USAGE" "unknown option $1 (see --help)" ;;
	*)
		[[ -z $version ]] || die "$EXIT_USAGE" "one VERSION only (got $version and $1)"
		version=$1
		;;
	esac
	shift
done

if $rollback; then
	[[ -z $version ]] || die "$EXIT_USAGE" "--rollback takes no VERSION: it redeploys what the last deploy replaced"
else
	[[ -n $version ]] || die "$EXIT_USAGE" "VERSION is required (see --help)"
	[[ $version =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] || die "$EXIT_USAGE" "VERSION $version: use letters, digits, . _ + -"
fi
[[ -z $count || $count =~ ^[1-9][0-9]*$ ]] || die "$EXIT_USAGE" "--count $count: want a positive number"
for w in $steps; do
	[[ $w =~ ^[0-9]+$ && $w -ge 1 && $w -le 100 ]] || die "$EXIT_USAGE" "--steps: $w is not a percentage 1..100"
done
[[ ${steps##* } == 100 ]] || die "$EXIT_USAGE" "--steps must end at 100"
if $dry_run && ! $kubernetes; then
	die "$EXIT_USAGE" "--dry-run is for --kubernetes (the erlmcp up path acts on a local cluster)"
fi

# ---------------------------------------------------------------- Kubernetes

# step prints one shell command line and, unless --dry-run, runs it; a
# failing command undoes the deploy (undo_cmd) and exits 1.
undo_cmd=""
step() {
	printf '+ %s\n' "$1"
	$dry_run && return 0
	if ! bash -c "$1"; then
		log "FAILED: $1"
		if [[ -n $undo_cmd ]]; then
			log "rolling back: $undo_cmd"
			bash -c "$undo_cmd" || log "ROLLBACK INCOMPLETE"
		fi
		exit "$EXIT_FAILED"
	fi
}

k8s_deploy() {
	local k ref=$image:$version
	k=$(printf '%q -n %q' "$kubectl" "$namespace")
	# copy_to NAME TRACK: a copy of the worker Deployment named NAME running
	# VERSION, its pods and selector labelled erlmcp.io/track=TRACK (so the
	# two Deployments never claim each other's pods); server-set fields are
	# dropped so apply creates a new object.
	copy_to() {
		local name=$1 track=$2
		step "$k get deployment/erlmcp-worker -o yaml | sed -e '/^  resourceVersion:/d' -e '/^  uid:/d' -e '/^  creationTimestamp:/d' -e '/^  generation:/d' -e '/^status:/,\$d' -e 's/^  name: erlmcp-worker\$/  name: $name/' -e 's#image: .*#image: $ref#' -e 's#^      app.kubernetes.io/component: worker\$#&\\n      erlmcp.io/track: $track#' -e 's#^        erlmcp.io/pool: worker\$#&\\n        erlmcp.io/track: $track#' | $k apply -f -"
		step "$k set env deployment/$name ERLMCP_VERSION_LABEL=$(printf %q "$version")"
	}
	local gate=""
	if [[ -n ${ERLMCP_ETCD_ENDPOINTS:-} ]] || $dry_run; then
		gate=$(printf '%q ctl deploy gate --etcd-endpoints %q --version %q --window %q --max-error-rate %q --max-p95 %q --min-requests %q --max-wait %q' \
			"${erlmcp:-erlmcp}" "${ERLMCP_ETCD_ENDPOINTS:-\$ERLMCP_ETCD_ENDPOINTS}" "$version" "$window" "$max_error_rate" "$max_p95" "$min_requests" "$max_wait")
	else
		log "warning: no ERLMCP_ETCD_ENDPOINTS: steps are gated on rollout status only, not on error rate and p95"
	fi
	local n=${count:-}
	if [[ -z $n ]]; then
		if $dry_run; then
			n=3 # the base manifest's replicas; live runs read the Deployment
		else
			n=$(bash -c "$k get deployment/erlmcp-worker -o jsonpath='{.spec.replicas}'") || die "$EXIT_PRECONDITION" "cannot read deployment/erlmcp-worker"
		fi
	fi
	local what="$strategy of $ref over $n workers"
	$rollback && what="rollback of deployment/erlmcp-worker to its previous revision"
	log "kubernetes: $what in namespace $namespace$($dry_run && echo ' (dry run: nothing is changed)')"
	if $rollback; then
		# The Deployment's own history is the record of the last deploy.
		step "$k rollout undo deployment/erlmcp-worker"
		step "$k rollout status deployment/erlmcp-worker --timeout=10m"
		step "$k delete deployment/erlmcp-worker-canary deployment/erlmcp-worker-green --ignore-not-found"
		return
	fi
	case $strategy in
	canary)
		# The Service selects every worker pod, so the canary's share of
		# requests is its share of the pods.
		undo_cmd="$k delete deployment/erlmcp-worker-canary --ignore-not-found"
		copy_to erlmcp-worker-canary canary
		local w
		for w in $steps; do
			[[ $w == 100 ]] && break
			local r=$(((n * w + 99) / 100))
			log "step: $w% -> $r canary pod(s) of $ref beside $n"
			step "$k scale deployment/erlmcp-worker-canary --replicas=$r"
			step "$k rollout status deployment/erlmcp-worker-canary --timeout=5m"
			[[ -z $gate ]] || step "$gate"
		done
		log "step: 100%: rolling deployment/erlmcp-worker to $ref (maxUnavailable 0)"
		undo_cmd="$k rollout undo deployment/erlmcp-worker; $k delete deployment/erlmcp-worker-canary --ignore-not-found"
		step "$k set image deployment/erlmcp-worker worker=$ref"
		step "$k set env deployment/erlmcp-worker ERLMCP_VERSION_LABEL=$(printf %q "$version")"
		step "$k rollout status deployment/erlmcp-worker --timeout=10m"
		step "$k delete deployment/erlmcp-worker-canary --ignore-not-found"
		[[ -z $gate ]] || step "$gate"
		;;
	bluegreen)
		local sel='{"spec":{"selector":{"erlmcp.io/track":"green"}}}'
		undo_cmd="$k delete deployment/erlmcp-worker-green --ignore-not-found"
		copy_to erlmcp-worker-green green
		step "$k scale deployment/erlmcp-worker-green --replicas=$n"
		step "$k rollout status deployment/erlmcp-worker-green --timeout=10m"
		log "switch: the Service selects the green pods only"
		undo_cmd="$k patch service/erlmcp-worker --type=json -p '[{\"op\":\"remove\",\"path\":\"/spec/selector/erlmcp.io~1track\"}]'; $k delete deployment/erlmcp-worker-green --ignore-not-found"
		step "$k patch service/erlmcp-worker -p '$sel'"
		[[ -z $gate ]] || step "$gate"
		log "blue becomes green: the main Deployment takes $ref, then the Service selects every worker again"
		step "$k set image deployment/erlmcp-worker worker=$ref"
		step "$k set env deployment/erlmcp-worker ERLMCP_VERSION_LABEL=$(printf %q "$version")"
		step "$k rollout status deployment/erlmcp-worker --timeout=10m"
		undo_cmd=""
		step "$k patch service/erlmcp-worker --type=json -p '[{\"op\":\"remove\",\"path\":\"/spec/selector/erlmcp.io~1track\"}]'"
		step "$k delete deployment/erlmcp-worker-green"
		;;
	esac
}

if $kubernetes; then
	if ! $dry_run; then
		command -v "$kubectl" >/dev/null || die "$EXIT_PRECONDITION" "$kubectl not found (--kubectl)"
	fi
	k8s_deploy
	if $dry_run; then
		log "plan printed; nothing was changed"
	else
		log "done"
	fi
	exit "$EXIT_OK"
fi

# ---------------------------------------------------------------- erlmcp up

if [[ -z $erlmcp ]]; then
	if command -v erlmcp >/dev/null; then
		erlmcp=$(command -v erlmcp)
	elif [[ -x ./bin/erlmcp ]]; then
		erlmcp=./bin/erlmcp
	else
		die "$EXIT_PRECONDITION" "no erlmcp on PATH or in ./bin; pass --erlmcp PATH"
	fi
fi
[[ -x $erlmcp ]] || die "$EXIT_PRECONDITION" "--erlmcp $erlmcp is not executable"
[[ -f $data_dir/cluster.json ]] || die "$EXIT_PRECONDITION" "no erlmcp up cluster at $data_dir (no cluster.json); --data-dir?"

ctl() { "$erlmcp" ctl deploy "$1" --data-dir "$data_dir" "${@:2}"; }
state_file=$data_dir/deploy/last

status=$(ctl status --plain) || die "$EXIT_PRECONDITION" "cannot read the cluster's deploy status"
read -r _ tr_version _ <<<"$(grep '^traffic ' <<<"$status")"
[[ $tr_version == - ]] || die "$EXIT_PRECONDITION" "a traffic split to $tr_version is in place: a deploy is in progress or was interrupted (clear it with: erlmcp ctl deploy traffic --clear)"
old_versions=$(awk '$1 == "worker" && $5 == "false" {print $3}' <<<"$status" | sort -u)
[[ -n $old_versions ]] || die "$EXIT_PRECONDITION" "no worker is running"
[[ $(wc -l <<<"$old_versions") -eq 1 ]] || die "$EXIT_PRECONDITION" "workers of several versions run ($(tr '\n' ' ' <<<"$old_versions")): finish or undo that first"
old_version=$old_versions
old_count=$(awk '$1 == "worker" && $5 == "false"' <<<"$status" | wc -l)
# The binary the old workers run: theirs if started by a deploy, else the
# release (up's own binary when no deploy set one).
old_binary=$(awk -v v="$old_version" '$1 == "worker" && $3 == v && $4 != "-" {print $4; exit}' <<<"$status")
[[ -n $old_binary ]] || old_binary=$(awk '$1 == "release" {print $3}' <<<"$status")

if $rollback; then
	[[ -f $state_file ]] || die "$EXIT_PRECONDITION" "nothing to roll back: no $state_file"
	from_version=$(sed -n 's/^from_version=//p' "$state_file")
	from_binary=$(sed -n 's/^from_binary=//p' "$state_file")
	to_version=$(sed -n 's/^to_version=//p' "$state_file")
	[[ -n $from_version && -n $from_binary ]] || die "$EXIT_PRECONDITION" "$state_file names no previous version"
	[[ $old_version == "$to_version" ]] || die "$EXIT_PRECONDITION" "the last deploy was $from_version -> $to_version, but $old_version runs now; nothing to undo"
	log "rollback: $to_version -> $from_version ($from_binary)"
	version=$from_version
	binary=$from_binary
	strategy=bluegreen
else
	if [[ -z $binary ]]; then
		binary=${ERLMCP_RELEASES_DIR:-$data_dir/releases}/$version/erlmcp
	fi
fi
[[ -x $binary ]] || die "$EXIT_PRECONDITION" "binary of $version not found or not executable: $binary"
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
[[ $version != "$old_version" ]] || die "$EXIT_PRECONDITION" "$version already runs ($old_count workers)"
count=${count:-$old_count}

gate() {
	ctl gate --version "$version" --window "$window" --max-error-rate "$max_error_rate" --max-p95 "$max_p95" --min-requests "$min_requests" --max-wait "$max_wait"
}

# abort undoes a deploy that has not finished: every request back to the old
# version first (so no request meets a draining new worker), then the new
# workers drain and stop.
abort() {
	local why=$1
	log "FAILED: $why"
	log "rolling back: all traffic to $old_version, stopping the $version workers"
	local ok=true
	ctl traffic --version "$version" --weight 0 >/dev/null || ok=false
	ctl stop --version "$version" >/dev/null || ok=false
	ctl traffic --clear >/dev/null || ok=false
	if $ok; then
		log "rolled back: $old_version serves all traffic ($old_count workers)"
	else
		log "ROLLBACK INCOMPLETE: check erlmcp ctl deploy status --data-dir $data_dir"
	fi
	exit "$EXIT_FAILED"
}

log "deploying $version ($binary) by $strategy over $old_count workers of $old_version"
trap 'abort "interrupted"' INT TERM

# The split is set before any new worker exists, so a new worker gets no
# request until a step sends it some.
ctl traffic --version "$version" --weight 0 >/dev/null || abort "could not set the traffic split"
log "starting $count workers of $version"
started=$(ctl start --binary "$binary" --version "$version" --count "$count") || abort "new workers did not become ready"
log "started: $(tr '\n' ' ' <<<"$started")"

shift_to() {
	local w=$1
	ctl traffic --version "$version" --weight "$w" >/dev/null || abort "could not shift traffic to $w%"
	log "traffic: $w% to $version"
	# The gate's waiting lines and its miss go to stderr as they come.
	local verdict
	if ! verdict=$(gate); then
		abort "gate at $w% missed (above); the new version is not kept"
	fi
	log "$verdict"
}

case $strategy in
canary)
	for w in $steps; do
		shift_to "$w"
	done
	;;
bluegreen)
	log "blue-green: $version ready at 0%, switching all traffic at once"
	shift_to 100
	;;
esac

# Every request goes to the new version now: the old workers only finish
# what they hold, then exit.
log "draining and stopping the $old_version workers"
ctl stop --except-version "$version" >/dev/null || abort "could not stop the old workers"
ctl release --binary "$binary" --version "$version" >/dev/null || log "warning: scale-ups will still start $old_version"
ctl traffic --clear >/dev/null || log "warning: the split to $version stays (harmless: only $version runs)"
trap - INT TERM

mkdir -p "$(dirname "$state_file")"
cat >"$state_file.tmp" <<EOF
from_version=$old_version
from_binary=$old_binary
to_version=$version
to_binary=$binary
at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
mv "$state_file.tmp" "$state_file"
log "done: $version serves all traffic ($count workers); undo with: $0 --rollback --data-dir $data_dir"
exit "$EXIT_OK"
