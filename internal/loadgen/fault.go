package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"
)

// Fault actions.
const (
	// ActionKill sends SIGKILL; a supervisor (erlmcp up) restarts the process.
	ActionKill = "kill"
	// ActionStop sends SIGSTOP, then SIGCONT after the fault's hold: a
	// pause, or (held longer than the lease TTL) a node that is gone.
	ActionStop = "stop"
	// ActionTerm sends SIGTERM (a graceful stop); the supervisor restarts it.
	ActionTerm = "term"
	// ActionPartition cuts a store node off from every other process for
	// the fault's hold (default 3 s), through the fault proxies of
	// `erlmcp up --store-fault-proxies`.
	ActionPartition = "partition"
	// ActionRollingRestart restarts every worker, then every store node, one
	// at a time with SIGTERM, each waited for until it is back and healthy.
	ActionRollingRestart = "rolling-restart"
)

// Fault targets. A target names a role and how to pick one process of it;
// TargetRegion picks every process of a region.
const (
	TargetWorker        = "worker"
	TargetFront         = "front"
	TargetStore         = "store"
	TargetStoreLeader   = "store-leader"   // the store node leading the most shards
	TargetStoreFollower = "store-follower" // a store node holding replicas but leading the fewest shards (ideally none)
	TargetCPLeader      = "controlplane-leader"
	TargetCPStandby     = "controlplane-standby"
	TargetEtcd          = "etcd"   // an etcd member process (erlmcp up --etcd-members 3)
	TargetRegion        = "region" // region=<name>: every process labelled with it; region=active: the active region's
	TargetID            = "id"     // id=<member id>: that one process
)

var faultTargets = []string{TargetWorker, TargetFront, TargetStore, TargetStoreLeader, TargetStoreFollower,
	TargetCPLeader, TargetCPStandby, TargetEtcd, TargetRegion + "=<name>", TargetID + "=<id>"}

// DefaultFailoverBudget is the failover-time budget of a fault on target
// when the fault does not set max=: issue #6's budgets (a worker 1 s, a
// store shard leader 2 s, a store follower or the control-plane leader 0, a
// region 10 s). ok is false without a stated budget (a rolling restart's is
// 0 client errors instead).
func DefaultFailoverBudget(action, target string) (d time.Duration, ok bool) {
	if action == ActionRollingRestart {
		// Its budget is 0 client errors (errors=0), not a failover time.
		return 0, false
	}
	switch {
	case target == TargetWorker, target == TargetFront:
		return time.Second, true
	case target == TargetStoreLeader, target == TargetStore:
		return 2 * time.Second, true
	case target == TargetStoreFollower, target == TargetCPLeader, target == TargetCPStandby, target == TargetEtcd:
		return 0, true
	case strings.HasPrefix(target, TargetRegion+"="):
		return 10 * time.Second, true
	}
	return 0, false
}

// Fault is one fault of a schedule, written
//
//	ACTION:TARGET@AT[?hold=DUR&max=DUR&errors=N]
//
// e.g. kill:worker@3s, stop:store-leader@2s?hold=4s,
// stop:region=us-east-1@3s?hold=15s&max=10s, rolling-restart@2s.
// AT is the offset from the start of the load; hold is how long a stopped
// process stays stopped (default 3 s); max is the failover-time budget
// (default DefaultFailoverBudget); errors is how many failed client
// requests the fault may cause (default: the run's concurrency times the
// processes hit, one request in flight per client on each; 0 for a rolling
// restart).
type Fault struct {
	Spec   string        `json:"spec"`
	Action string        `json:"action"`
	Target string        `json:"target,omitempty"`
	At     time.Duration `json:"-"`
	Hold   time.Duration `json:"-"`
	// MaxFailover is the failover budget; HasMax is false when none applies.
	MaxFailover time.Duration `json:"-"`
	HasMax      bool          `json:"-"`
	// MaxErrors bounds the client errors attributed to this fault; -1 means
	// the run's concurrency times the number of processes hit.
	MaxErrors int64 `json:"-"`
}

// ParseFault reads one --fault value.
func ParseFault(s string) (Fault, error) {
	f := Fault{Spec: s, MaxErrors: -1}
	body, query, _ := strings.Cut(strings.TrimSpace(s), "?")
	what, at, ok := strings.Cut(body, "@")
	if !ok {
		return f, fmt.Errorf("--fault %q: want ACTION:TARGET@AT, e.g. kill:worker@3s", s)
	}
	d, err := time.ParseDuration(at)
	if err != nil || d < 0 {
		return f, fmt.Errorf("--fault %q: %q is not a duration from the start of the load (e.g. 3s)", s, at)
	}
	f.At = d
	if what == ActionRollingRestart {
		f.Action = ActionRollingRestart
		f.MaxErrors = 0
	} else {
		act, target, ok := strings.Cut(what, ":")
		if !ok {
			return f, fmt.Errorf("--fault %q: want ACTION:TARGET (actions kill, stop, term, partition; or rolling-restart)", s)
		}
		switch act {
		case ActionKill, ActionStop, ActionTerm, ActionPartition:
		default:
			return f, fmt.Errorf("--fault %q: unknown action %q (want kill, stop, term, partition or rolling-restart)", s, act)
		}
		f.Action = act
		if !validTarget(target) {
			return f, fmt.Errorf("--fault %q: unknown target %q (want one of %s)", s, target, strings.Join(faultTargets, ", "))
		}
		f.Target = target
	}
	if f.Action == ActionPartition && f.Target != TargetStore && f.Target != TargetStoreLeader && f.Target != TargetStoreFollower &&
		!strings.HasPrefix(f.Target, TargetID+"=") {
		return f, fmt.Errorf("--fault %q: partition cuts off one store node: target store, store-leader, store-follower or id=<store id>", s)
	}
	if f.Action == ActionStop || f.Action == ActionPartition {
		f.Hold = 3 * time.Second
	}
	f.MaxFailover, f.HasMax = DefaultFailoverBudget(f.Action, f.Target)
	if query != "" {
		q, err := url.ParseQuery(query)
		if err != nil {
			return f, fmt.Errorf("--fault %q: options: %w", s, err)
		}
		for k, vs := range q {
			v := vs[len(vs)-1]
			switch k {
			case "hold":
				if f.Action != ActionStop && f.Action != ActionPartition {
					return f, fmt.Errorf("--fault %q: hold applies only to stop and partition", s)
				}
				if f.Hold, err = time.ParseDuration(v); err != nil || f.Hold <= 0 {
					return f, fmt.Errorf("--fault %q: hold=%q: want a positive duration", s, v)
				}
			case "max":
				if f.MaxFailover, err = time.ParseDuration(v); err != nil || f.MaxFailover < 0 {
					return f, fmt.Errorf("--fault %q: max=%q: want a duration", s, v)
				}
				f.HasMax = true
			case "errors":
				var n int64
				if _, err := fmt.Sscan(v, &n); err != nil || n < 0 {
					return f, fmt.Errorf("--fault %q: errors=%q: want 0 or more", s, v)
				}
				f.MaxErrors = n
			default:
				return f, fmt.Errorf("--fault %q: unknown option %q (want hold, max, errors)", s, k)
			}
		}
	}
	return f, nil
}

func validTarget(t string) bool {
	switch t {
	case TargetWorker, TargetFront, TargetStore, TargetStoreLeader, TargetStoreFollower, TargetCPLeader, TargetCPStandby, TargetEtcd:
		return true
	}
	for _, p := range []string{TargetRegion + "=", TargetID + "="} {
		if strings.HasPrefix(t, p) && len(t) > len(p) {
			return true
		}
	}
	return false
}

// Victim is one process a fault hit.
type Victim struct {
	ID     string `json:"id"`
	Role   string `json:"role"`
	Region string `json:"region,omitempty"`
	PID    int    `json:"pid"`
	// Note says why it was chosen (e.g. "leads 26 of 64 shards").
	Note string `json:"note,omitempty"`
}

// Injector carries out faults on a cluster. Inject returns once the fault
// is over from the injector's side: at once for kill and term, after the
// hold for stop (the processes continued), after the last process is back
// for a rolling restart. It reports the processes hit even on error.
type Injector interface {
	Inject(ctx context.Context, f Fault, log func(format string, a ...any)) ([]Victim, error)
}

// FaultReport is what one fault did and what it cost the clients.
type FaultReport struct {
	Fault
	Victims []Victim `json:"victims"`
	// InjectedAtS and DoneAtS are offsets from the start of the load.
	InjectedAtS float64 `json:"injected_at_s"`
	DoneAtS     float64 `json:"done_at_s"`
	Error       string  `json:"error,omitempty"`
	// Errors is the failed client operations attributed to the fault: those
	// that ended after it was injected and started before it was over plus
	// the settle window (--timeout).
	Errors       int64            `json:"errors"`
	ErrorsByKind map[string]int64 `json:"errors_by_kind"`
	MaxErrors    int64            `json:"max_errors"`
	// FailoverMS is the fault's failover time: the longer of ErrorGapMS
	// and how much StallMS exceeds BaselineMaxMS, the latter only when it
	// is more than the stall resolution (Budgets.StallResolution) and
	// StallMS is above every answer while no fault was active and above
	// StallReferenceMS.
	FailoverMS float64 `json:"failover_ms"`
	// ErrorGapMS is the longest window a session went unserved (from its
	// last answer before failures to its next answer) that overlaps the
	// fault's window.
	ErrorGapMS float64 `json:"error_gap_ms"`
	// WorstGap is the window ErrorGapMS measures; nil without one.
	WorstGap *GapDetail `json:"worst_gap,omitempty"`
	// StallMS is the slowest successful answer to a request that overlaps
	// the fault's window (a paused process answers late, not wrongly; for
	// stop and partition, the part of the window while the process was
	// out);
	// BaselineMaxMS is the slowest answer to a request that overlaps no
	// fault's window.
	StallMS       float64 `json:"stall_ms"`
	BaselineMaxMS float64 `json:"baseline_max_ms"`
	// StallReferenceMS is Budgets.StallReference: StallMS counts only
	// above it too (0: none).
	StallReferenceMS float64  `json:"stall_reference_ms"`
	MaxFailoverMS    float64  `json:"max_failover_ms"`
	HasMaxFailover   bool     `json:"has_max_failover"`
	Passed           bool     `json:"passed"`
	Violations       []string `json:"violations"`
}

// failureRec is one failed operation, for attributing errors to faults.
type failureRec struct {
	start, end time.Time
	kind       string
	slot       int
	endpoint   string
}

// gapRec is one window in which a session (slot) went unserved, or one
// successful operation.
type gapRec struct {
	start, end time.Time
	slot       int
}

// GapDetail is a fault's longest unserved window and the failed requests
// in it, to tell where the time went (which endpoint, which kind).
type GapDetail struct {
	Slot int `json:"slot"`
	// StartS and EndS are offsets from the start of the load.
	StartS float64 `json:"start_s"`
	EndS   float64 `json:"end_s"`
	// Failures: "+<start>s–<end>s <kind> <endpoint>" each.
	Failures []string `json:"failures"`
}

// faultRun is a scheduled fault while the load runs.
type faultRun struct {
	f                Fault
	victims          []Victim
	injected, done   time.Time
	err              error
	started, stopped bool
}

// runFaults injects each fault at its offset from start and returns when all
// are done or ctx ends. The faults run one after another in the order of
// their offsets; a fault whose time came while the one before still ran
// starts when that one is done.
func runFaults(ctx context.Context, inj Injector, faults []Fault, start time.Time, log func(string, ...any)) []*faultRun {
	runs := make([]*faultRun, len(faults))
	for i, f := range faults {
		runs[i] = &faultRun{f: f}
	}
	order := make([]*faultRun, len(runs))
	copy(order, runs)
	sort.SliceStable(order, func(i, j int) bool { return order[i].f.At < order[j].f.At })
	for _, r := range order {
		t := time.NewTimer(time.Until(start.Add(r.f.At)))
		select {
		case <-ctx.Done():
			t.Stop()
			return runs
		case <-t.C:
		}
		r.started = true
		r.injected = time.Now()
		log("loadtest %4.1fs  fault %s: injecting", r.injected.Sub(start).Seconds(), r.f.Spec)
		r.victims, r.err = inj.Inject(ctx, r.f, log)
		r.done = time.Now()
		r.stopped = true
		var ids []string
		for _, v := range r.victims {
			ids = append(ids, fmt.Sprintf("%s (pid %d)", v.ID, v.PID))
		}
		if r.err != nil {
			log("loadtest %4.1fs  fault %s: %v", r.done.Sub(start).Seconds(), r.f.Spec, r.err)
		} else {
			log("loadtest %4.1fs  fault %s: done, hit %s", r.done.Sub(start).Seconds(), r.f.Spec, strings.Join(ids, ", "))
		}
	}
	return runs
}

// faultReports attributes failures and unserved windows to the faults and
// checks each against its budgets. settle is how long after a fault is over
// its effects still count as its own.
// stallRule decides when a fault's slowest answer is a stall (see
// Budgets.StallResolution and Budgets.StallReference).
type stallRule struct {
	resolution, reference time.Duration
}

func faultReports(runs []*faultRun, start, end time.Time, settle time.Duration, rule stallRule, concurrency int, fails []failureRec, gaps, oks []gapRec) ([]FaultReport, int64) {
	out := make([]FaultReport, 0, len(runs))
	attributed := make([]bool, len(fails))
	// window is the span in which a fault's effects count as its own.
	window := func(r *faultRun) (time.Time, time.Time) {
		e := r.done.Add(settle)
		if e.After(end) {
			e = end
		}
		return r.injected, e
	}
	overlaps := func(g gapRec, from, to time.Time) bool { return !g.end.Before(from) && !g.start.After(to) }
	// stallEnd is the end of the span in which a slow answer is r's stall.
	// A stopped or cut-off process delays the requests that waited on it
	// while it was out; after a kill (or a restart) the slow answers while
	// the cluster recovers are the fault's too, up to the end of its
	// window.
	stallEnd := func(r *faultRun) time.Time {
		if r.f.Action == ActionStop || r.f.Action == ActionPartition {
			return r.done
		}
		_, e := window(r)
		return e
	}
	// duringOther: a slow answer or an unserved window that overlaps the
	// injection or hold of some fault belongs to the earliest such fault;
	// it is not r's when that is another one (the windows of faults a few
	// seconds apart overlap by the settle time, and a window that was
	// already open when r struck, or that r's effects ended before a later
	// fault struck, is not r's doing).
	duringOther := func(g gapRec, r *faultRun) bool {
		var owner *faultRun
		for _, o := range runs {
			if o.started && overlaps(g, o.injected, o.done) && (owner == nil || o.injected.Before(owner.injected)) {
				owner = o
			}
		}
		return owner != nil && owner != r
	}
	// tail is the slowest answer to a request that overlaps no fault's
	// stall span: how slow an answer gets in this run with nothing
	// stopped. The slowest answer outside every fault's window is taken
	// over the few seconds before the first fault, so on a loaded machine
	// it falls well below that; a fault's slowest answer no slower than
	// tail is a normal slow answer, not a stall (on a shared 2-core
	// machine a single answer during a control-plane pause, which no
	// request waits on, was 0.1-0.5 s slower than that baseline).
	var baseline, tail time.Duration
	for _, ok := range oks {
		inFault, active := false, false
		for _, r := range runs {
			if r.started {
				from, to := window(r)
				inFault = inFault || overlaps(ok, from, to)
				active = active || overlaps(ok, r.injected, stallEnd(r))
			}
		}
		if !inFault {
			baseline = max(baseline, ok.end.Sub(ok.start))
		}
		if !active {
			tail = max(tail, ok.end.Sub(ok.start))
		}
	}
	for _, r := range runs {
		fr := FaultReport{Fault: r.f, Victims: r.victims, ErrorsByKind: map[string]int64{}, Violations: []string{}}
		if fr.Victims == nil {
			fr.Victims = []Victim{}
		}
		fr.MaxErrors = r.f.MaxErrors
		if fr.MaxErrors < 0 {
			fr.MaxErrors = int64(concurrency * max(1, len(r.victims)))
		}
		fr.MaxFailoverMS, fr.HasMaxFailover = ms(r.f.MaxFailover), r.f.HasMax
		if !r.started {
			fr.Violations = append(fr.Violations, "not injected: the run ended before its time")
			out = append(out, fr)
			continue
		}
		fr.InjectedAtS = r.injected.Sub(start).Seconds()
		fr.DoneAtS = r.done.Sub(start).Seconds()
		if r.err != nil {
			fr.Error = r.err.Error()
			fr.Violations = append(fr.Violations, "injection failed: "+r.err.Error())
		}
		_, winEnd := window(r)
		for i, f := range fails {
			if f.end.Before(r.injected) || f.start.After(winEnd) {
				continue
			}
			attributed[i] = true
			fr.Errors++
			fr.ErrorsByKind[f.kind]++
		}
		var worst time.Duration
		var worstGap *gapRec
		for i, g := range gaps {
			if g.end.Before(r.injected) || g.start.After(winEnd) || duringOther(g, r) {
				continue
			}
			if d := g.end.Sub(g.start); d > worst || worstGap == nil {
				worst, worstGap = d, &gaps[i]
			}
		}
		if g := worstGap; g != nil {
			at := func(t time.Time) float64 { return t.Sub(start).Seconds() }
			d := &GapDetail{Slot: g.slot, StartS: at(g.start), EndS: at(g.end), Failures: []string{}}
			for _, f := range fails {
				if f.slot == g.slot && !f.start.Before(g.start) && !f.end.After(g.end) {
					d.Failures = append(d.Failures, fmt.Sprintf("+%.1fs–%.1fs %s %s", at(f.start), at(f.end), f.kind, f.endpoint))
				}
			}
			fr.WorstGap = d
		}
		var stall time.Duration
		for _, ok := range oks {
			if overlaps(ok, r.injected, stallEnd(r)) && !duringOther(ok, r) {
				stall = max(stall, ok.end.Sub(ok.start))
			}
		}
		fr.ErrorGapMS, fr.StallMS, fr.BaselineMaxMS = ms(worst), ms(stall), ms(baseline)
		fr.StallReferenceMS = ms(rule.reference)
		if excess := stall - baseline; excess > rule.resolution && stall > tail && stall > rule.reference {
			worst = max(worst, excess)
		}
		fr.FailoverMS = ms(worst)
		if fr.Errors > fr.MaxErrors {
			fr.Violations = append(fr.Violations, fmt.Sprintf("%d client errors above the %d allowed (requests in flight on the faulty process)", fr.Errors, fr.MaxErrors))
		}
		if r.f.HasMax && worst > r.f.MaxFailover {
			fr.Violations = append(fr.Violations, fmt.Sprintf("failover time %s above its budget %s", fmtDur(worst), r.f.MaxFailover))
		}
		fr.Passed = len(fr.Violations) == 0
		out = append(out, fr)
	}
	var outside int64
	for i := range fails {
		if !attributed[i] {
			outside++
		}
	}
	return out, outside
}

// errNoVictim is returned when a fault's target matches no live process.
var errNoVictim = errors.New("no live process matches the target")
