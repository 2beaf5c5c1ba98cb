package controlplane

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// st parses "id@region/zone" with an optional "!" (dead since t0) or "~"
// (draining) suffix.
func st(spec string) StoreState {
	s := StoreState{Alive: true}
	if strings.HasSuffix(spec, "!") {
		s.Alive, s.DownSince = false, t0
		spec = strings.TrimSuffix(spec, "!")
	}
	if strings.HasSuffix(spec, "~") {
		s.Draining = true
		spec = strings.TrimSuffix(spec, "~")
	}
	id, loc, _ := strings.Cut(spec, "@")
	s.ID = id
	s.Region, s.Zone, _ = strings.Cut(loc, "/")
	return s
}

func sts(specs ...string) []StoreState {
	var out []StoreState
	for _, s := range specs {
		out = append(out, st(s))
	}
	return out
}

// sh builds a shard from "store:v" / "store:l" replicas (voters caught up
// and reported, learners reported with lag 0), led by the first voter.
func sh(n int, reps ...string) ShardState {
	s := ShardState{Shard: n, ConfEpoch: 1}
	for _, r := range reps {
		id, role, _ := strings.Cut(r, ":")
		rr := ReplicaState{Store: id, Role: clusterstate.RoleVoter, Reported: true, ReportedRole: clusterstate.RoleVoter}
		if role == "l" {
			rr.Role, rr.ReportedRole = clusterstate.RoleLearner, clusterstate.RoleLearner
		}
		if s.Leader == "" && rr.Role == clusterstate.RoleVoter {
			s.Leader = id
		}
		s.Replicas = append(s.Replicas, rr)
	}
	return s
}

func describe(ops []Operation) []string {
	var out []string
	for _, o := range ops {
		d := fmt.Sprintf("%03d %s %s %s", o.Shard, o.Kind, o.Action.Kind, o.Action.Store)
		if o.Action.Kind == StepBootstrap {
			d = fmt.Sprintf("%03d %s %s %v lead=%s", o.Shard, o.Kind, o.Action.Kind, o.Action.Stores, o.Action.Store)
		}
		if o.Cancel {
			d += " cancel"
		}
		out = append(out, strings.TrimSpace(d))
	}
	return out
}

func TestPlanRules(t *testing.T) {
	cfg := DefaultPlannerConfig()
	now := t0.Add(time.Minute) // dead stores are past the 30 s grace
	three := sts("a@r1/z1", "b@r2/z1", "c@r3/z1")
	repairOp := Operator{ID: "op1", Shard: 0, Kind: KindRepair, Created: t0, Updated: t0, Steps: []Step{
		{Kind: StepAddLearner, Store: "d", Done: true}, {Kind: StepPromoteLearner, Store: "d"}, {Kind: StepRemoveReplica, Store: "c"}}}
	promoted := repairOp
	promoted.Steps = slices.Clone(repairOp.Steps)
	promoted.Steps[1].Done = true
	lagging := sh(0, "a:v", "b:v", "c:v", "d:l")
	lagging.Replicas[3].Lag = 5000
	unconfirmed := sh(0, "a:v", "b:v", "c:v", "d:v")
	unconfirmed.Replicas[3].ReportedRole = clusterstate.RoleLearner
	ledByB := sh(0, "a:v", "b:v", "c:v")
	ledByB.Leader = "b"

	tests := []struct {
		name  string
		state ClusterState
		cfg   func(*PlannerConfig)
		want  []string
	}{
		{"initial placement spreads across regions", ClusterState{Stores: sts("a1@r1/z1", "a2@r1/z2", "b1@r2/z1", "c1@r3/z1"), Shards: []ShardState{{Shard: 0}, {Shard: 1}}, BootstrapAllowed: true, ActiveRegion: "r2"},
			nil, []string{"000 place bootstrap [a1 b1 c1] lead=b1", "001 place bootstrap [a2 b1 c1] lead=b1"}},
		{"initial placement prefers new zones in one region", ClusterState{Stores: sts("a@r1/z1", "b@r1/z1", "c@r1/z2", "d@r1/z3"), Shards: []ShardState{{Shard: 0}}, BootstrapAllowed: true},
			nil, []string{"000 place bootstrap [a c d] lead="}},
		{"initial placement on fewer stores than RF", ClusterState{Stores: sts("a@r1/z1", "b@r1/z1"), Shards: []ShardState{{Shard: 0}}, BootstrapAllowed: true},
			nil, []string{"000 place bootstrap [a b] lead="}},
		{"initial placement held back", ClusterState{Stores: three, Shards: []ShardState{{Shard: 0}}}, nil, nil},
		{"initial placement skips dead and draining", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1!", "c@r3/z1~", "d@r1/z2"), Shards: []ShardState{{Shard: 0}}, BootstrapAllowed: true},
			nil, []string{"000 place bootstrap [a d] lead="}},
		{"dead store within grace: nothing", ClusterState{Stores: append(sts("a@r1/z1", "b@r2/z1", "d@r3/z2"), StoreState{ID: "c", Region: "r3", Zone: "z1", DownSince: now.Add(-10 * time.Second)}),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v")}}, nil, nil},
		{"dead store past grace: learner on a store in the lost region", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r3/z2", "e@r1/z2"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v")}}, nil, []string{"000 repair add_learner d"}},
		{"repair waits for the learner to catch up", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r3/z2"),
			Shards: []ShardState{lagging}, InFlight: []Operator{repairOp}}, nil, nil},
		{"repair promotes a caught-up learner", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r3/z2"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:l")}, InFlight: []Operator{repairOp}}, nil, []string{"000 repair promote_learner d"}},
		{"repair removes only once the promotion is applied", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r3/z2"),
			Shards: []ShardState{unconfirmed}, InFlight: []Operator{promoted}}, nil, nil},
		{"repair removes the dead replica", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r3/z2"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:v")}, InFlight: []Operator{promoted}}, nil, []string{"000 repair remove_replica c"}},
		{"repair cancelled when its target dies, learner rolled back", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r3/z2!"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:l")}, InFlight: []Operator{repairOp}}, nil, []string{"000 repair remove_replica d cancel"}},
		{"quorum lost: nothing", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1", "x@r1/z1!", "y@r2/z1!"),
			Shards: []ShardState{sh(0, "a:v", "x:v", "y:v")}}, func(c *PlannerConfig) { c.MassExpiryFraction = 0.9 }, nil},
		{"no target: dead replica stays", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v")}}, nil, nil},
		{"under-replicated shard gains a voter", ClusterState{Stores: three, Shards: []ShardState{sh(0, "a:v")}}, nil, []string{"000 up_replicate add_learner b"}},
		{"stray learner removed", ClusterState{Stores: three, Shards: []ShardState{sh(0, "a:v", "b:v", "c:l")}}, func(c *PlannerConfig) { c.ReplicationFactor = 2 },
			[]string{"000 cleanup remove_replica c"}},
		{"over-replicated shard sheds the doubled region", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1", "d@r1/z2"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:v")}}, nil, []string{"000 shrink remove_replica d"}},
		{"leader moved into the active region", ClusterState{Stores: three, Shards: []ShardState{sh(0, "a:v", "b:v", "c:v")}, ActiveRegion: "r3"},
			nil, []string{"000 leader transfer_leader c"}},
		{"leader already in the active region", ClusterState{Stores: three, Shards: []ShardState{ledByB}, ActiveRegion: "r2"}, nil, nil},
		{"drain: replace the draining store's replica", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1~", "d@r3/z2"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v")}}, nil, []string{"000 drain add_learner d"}},
		{"drain: the leader's replica is removed from the map (its store hands leadership over)", ClusterState{Stores: sts("a@r1/z1~", "b@r2/z1", "c@r3/z1", "d@r1/z2"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:v")},
			InFlight: []Operator{{ID: "op2", Shard: 0, Kind: KindDrain, Updated: now, Steps: []Step{
				{Kind: StepAddLearner, Store: "d", Done: true}, {Kind: StepPromoteLearner, Store: "d", Done: true}, {Kind: StepRemoveReplica, Store: "a"}}}}},
			nil, []string{"000 drain remove_replica a"}},
		{"rebalance onto a new store", ClusterState{Stores: sts("a@r1/z1", "b@r1/z1", "c@r1/z1", "d@r1/z1"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v"), sh(1, "a:v", "b:v", "c:v"), sh(2, "a:v", "b:v", "c:v"), sh(3, "b:v", "a:v", "c:v")}},
			func(c *PlannerConfig) { c.MaxOpsPerStore = 1 }, []string{"003 rebalance add_learner d"}},
		{"rebalance keeps the region spread", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1", "d@r1/z1"),
			Shards: []ShardState{sh(0, "b:v", "a:v", "c:v"), sh(1, "b:v", "a:v", "c:v"), sh(2, "b:v", "a:v", "c:v"), sh(3, "b:v", "a:v", "c:v")}},
			func(c *PlannerConfig) { c.MaxOpsPerStore = 1 }, []string{"000 rebalance add_learner d"}},
		{"no rebalance while a shard is under-replicated", ClusterState{Stores: sts("a@r1/z1", "b@r1/z1", "c@r1/z1", "d@r1/z1"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v"), sh(1, "a:v", "b:v", "c:v"), sh(2, "a:v", "b:v", "c:v"), sh(3, "a:v", "b:v")}},
			func(c *PlannerConfig) { c.MaxOpsPerStore = 1 }, []string{"003 up_replicate add_learner d"}},
		{"throttle: one operator per store", ClusterState{Stores: sts("a@r1/z1", "b@r1/z1", "c@r1/z1"),
			Shards: []ShardState{sh(0, "a:v"), sh(1, "a:v"), sh(2, "a:v")}},
			func(c *PlannerConfig) { c.MaxOpsPerStore = 1 }, []string{"000 up_replicate add_learner b", "001 up_replicate add_learner c"}},
		{"throttle: total", ClusterState{Stores: sts("a@r1/z1", "b@r1/z1", "c@r1/z1"),
			Shards: []ShardState{sh(0, "a:v"), sh(1, "a:v"), sh(2, "a:v")}},
			func(c *PlannerConfig) { c.MaxOpsTotal = 1 }, []string{"000 up_replicate add_learner b"}},
		{"repairs come before leader moves and rebalancing", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r3/z2"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "d:v"), sh(1, "a:v", "b:v", "c:v")}, ActiveRegion: "r2"},
			func(c *PlannerConfig) { c.MaxOpsTotal = 1 }, []string{"001 repair add_learner d"}},
		{"mass expiry pauses everything", ClusterState{Stores: sts("a@r1/z1", "b@r2/z1!", "c@r3/z1!", "d@r3/z2!"),
			Shards: []ShardState{sh(0, "a:v", "b:v", "c:v"), {Shard: 1}}, BootstrapAllowed: true}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cfg
			if tt.cfg != nil {
				tt.cfg(&c)
			}
			got := describe(Plan(tt.state, c, now))
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("Plan =\n  %q\nwant\n  %q", got, tt.want)
			}
		})
	}
}

func TestMassExpiryGuard(t *testing.T) {
	cfg := DefaultPlannerConfig().withDefaults()
	now := t0.Add(time.Hour)
	down := func(ids ...time.Duration) []StoreState {
		var out []StoreState
		for i, d := range ids {
			s := StoreState{ID: fmt.Sprint("s", i), Alive: d < 0}
			if d >= 0 {
				s.DownSince = t0.Add(d)
			}
			out = append(out, s)
		}
		return out
	}
	const up = -1
	tests := []struct {
		name   string
		stores []StoreState
		paused bool
	}{
		{"one of three", down(0, up, up), false},
		{"two of three at once", down(0, time.Second, up), true},
		{"two of three far apart", down(0, time.Minute, up), false},
		{"half of four at once is not more than half", down(0, 0, up, up), false},
		{"three of four within the window", down(0, 5*time.Second, 9*time.Second, up), true},
		{"three of five staggered", down(0, time.Minute, 2*time.Minute, up, up), false},
		{"one of one", down(0), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := massExpiry(tt.stores, cfg, now)
			if (got != "") != tt.paused {
				t.Fatalf("massExpiry = %q, want paused %v", got, tt.paused)
			}
			res := PlanDetailed(ClusterState{Stores: tt.stores}, cfg, now)
			if res.Paused != tt.paused || res.Paused && !strings.Contains(res.PauseReason, "mass lease expiry") {
				t.Fatalf("PlanDetailed paused %v %q", res.Paused, res.PauseReason)
			}
		})
	}
}

func TestApplyReplicasIdempotent(t *testing.T) {
	steps := []Step{
		{Kind: StepBootstrap, Stores: []string{"a", "b", "c"}, Store: "b"},
		{Kind: StepAddLearner, Store: "d"},
		{Kind: StepPromoteLearner, Store: "d"},
		{Kind: StepTransferLeader, Store: "d"},
		{Kind: StepRemoveReplica, Store: "d"},
	}
	var reps []clusterstate.Replica
	target := ""
	for _, s := range steps {
		var changed, lc bool
		reps, target, changed, lc = ApplyReplicas(reps, target, s)
		if !changed && !lc {
			t.Fatalf("%s: first application changed nothing", s.Kind)
		}
		again, t2, c2, l2 := ApplyReplicas(reps, target, s)
		if c2 || l2 || fmt.Sprint(again) != fmt.Sprint(reps) || t2 != target {
			t.Fatalf("%s applied twice changed the shard: %v → %v", s.Kind, reps, again)
		}
	}
	if fmt.Sprint(reps) != "[{a voter 0} {b voter 0} {c voter 0}]" || target != "" {
		t.Fatalf("end state %v target %q", reps, target)
	}
}

// sim is a simulated cluster: the shard map and operator records as the
// executor keeps them, and the store side (replicas catching up, Raft
// applying configurations, leaders elected and transferred).
type sim struct {
	t      *testing.T
	rng    *rand.Rand
	cfg    PlannerConfig
	stores []StoreState
	shards []ShardState
	ops    map[string]Operator
	active string
	now    time.Time
	steps  int
	// ignoreTarget models store nodes that never act on target_leader
	// (the worst case): a leader moves only when it dies or the map drops
	// it.
	ignoreTarget bool
}

func (s *sim) alive(id string) bool {
	for _, st := range s.stores {
		if st.ID == id {
			return st.Alive
		}
	}
	return false
}

func (s *sim) state() ClusterState {
	var inflight []Operator
	for _, o := range s.ops {
		inflight = append(inflight, o)
	}
	return ClusterState{Stores: slices.Clone(s.stores), Shards: slices.Clone(s.shards), InFlight: inflight, ActiveRegion: s.active, BootstrapAllowed: true}
}

// apply does what the executor does for one operation, checking the safety
// invariants on the way.
func (s *sim) apply(op Operation) {
	t := s.t
	t.Helper()
	s.steps++
	var cur *Operator
	if o, ok := s.ops[op.Operator]; ok {
		cur = &o
	} else if op.New == nil {
		t.Fatalf("operation for unknown operator %s", op.Operator)
	}
	if op.New != nil && cur != nil {
		t.Fatalf("operator %s started twice", op.Operator)
	}
	before := s.shards[op.Shard]
	after, _ := ApplyToState(before, op.Action)
	minSafe := s.cfg.minSafeVoters()
	b, a := UpToDateVoters(before, s.alive, s.cfg.MaxPromoteLag), UpToDateVoters(after, s.alive, s.cfg.MaxPromoteLag)
	if a < min(minSafe, b) {
		t.Fatalf("%+v: up-to-date voters %d → %d (min %d)\nbefore %+v", op, b, a, minSafe, before)
	}
	if op.Action.Kind == StepRemoveReplica {
		if r, ok := before.replica(op.Action.Store); ok && r.Role == clusterstate.RoleVoter {
			if a < minSafe || a < len(voters(after))/2+1 {
				t.Fatalf("%+v leaves %d up-to-date of %d voters\nbefore %+v", op, a, len(voters(after)), before)
			}
		}
	}
	seen := map[string]bool{}
	for _, r := range after.Replicas {
		if seen[r.Store] {
			t.Fatalf("%+v: shard %d has two replicas on %s", op, op.Shard, r.Store)
		}
		seen[r.Store] = true
	}
	s.shards[op.Shard] = after
	if rec := op.Record(cur, s.now); rec != nil {
		s.ops[op.Operator] = *rec
	} else {
		delete(s.ops, op.Operator)
	}
}

// settle lets each replica catch up and apply its configuration with
// probability p, and elects or transfers leaders.
func (s *sim) settle(p float64) {
	for i := range s.shards {
		sh := &s.shards[i]
		for j := range sh.Replicas {
			r := &sh.Replicas[j]
			switch {
			case !s.alive(r.Store):
				r.Reported, r.ReportedRole, r.Lag = false, "", -1
			case !r.Reported || r.ReportedRole != r.Role || r.Lag != 0:
				if s.rng.Float64() < p {
					r.Reported, r.ReportedRole, r.Lag = true, r.Role, 0
				} else if !r.Reported {
					r.Reported, r.ReportedRole, r.Lag = true, r.Role, 1_000_000 // a new learner still receiving its snapshot
				}
			}
		}
		ok := func(id string) bool {
			r, found := sh.replica(id)
			return found && upToDate(r, s.alive, s.cfg.MaxPromoteLag)
		}
		if sh.Leader != "" && !ok(sh.Leader) {
			sh.Leader = ""
		}
		alive := 0
		for _, r := range voters(*sh) {
			if s.alive(r.Store) {
				alive++
			}
		}
		if alive < len(voters(*sh))/2+1 {
			sh.Leader = ""
			continue
		}
		if !s.ignoreTarget && sh.TargetLeader != "" && ok(sh.TargetLeader) && sh.TargetLeader != sh.Leader && (sh.Leader == "" || s.rng.Float64() < p) {
			sh.Leader = sh.TargetLeader
		}
		if sh.Leader == "" {
			for _, r := range sh.Replicas {
				if ok(r.Store) {
					sh.Leader = r.Store
					break
				}
			}
		}
	}
}

func (s *sim) checkThrottles(st ClusterState) {
	p := newPlanner(st, s.cfg, s.now)
	if p.total > s.cfg.MaxOpsTotal {
		s.t.Fatalf("%d operators in flight, limit %d", p.total, s.cfg.MaxOpsTotal)
	}
	for id, n := range p.perStore {
		if n > s.cfg.MaxOpsPerStore {
			s.t.Fatalf("store %s in %d operators, limit %d", id, n, s.cfg.MaxOpsPerStore)
		}
	}
}

// converge plans and applies until nothing is left to do; it returns the
// last plan result.
func (s *sim) converge(what string) PlanResult {
	t := s.t
	t.Helper()
	for round := 0; round < 3000; round++ {
		res := PlanDetailed(s.state(), s.cfg, s.now)
		for _, op := range res.Ops {
			s.apply(op)
		}
		s.checkThrottles(s.state())
		s.settle(0.6)
		s.now = s.now.Add(time.Second)
		if len(res.Ops) == 0 && len(s.ops) == 0 {
			s.settle(1)
			if res = PlanDetailed(s.state(), s.cfg, s.now); len(res.Ops) == 0 {
				return res
			}
		}
	}
	t.Fatalf("%s: no stable state after 3000 rounds; in flight %v", what, s.ops)
	return PlanResult{}
}

// checkConverged asserts RF and distinct stores for every shard that can
// have them.
func (s *sim) checkConverged(what string, res PlanResult) {
	t := s.t
	t.Helper()
	if res.Paused {
		return
	}
	usable := 0
	for _, st := range s.stores {
		if st.Alive && !st.Draining {
			usable++
		}
	}
	for _, sh := range s.shards {
		if slices.Contains(res.QuorumLost, sh.Shard) {
			continue
		}
		vs := voters(sh)
		if len(vs) != len(sh.Replicas) {
			t.Fatalf("%s: shard %d keeps a learner: %+v", what, sh.Shard, sh)
		}
		if usable < s.cfg.ReplicationFactor {
			continue
		}
		if len(vs) != s.cfg.ReplicationFactor {
			t.Fatalf("%s: shard %d has %d voters, want %d: %+v (stores %+v)", what, sh.Shard, len(vs), s.cfg.ReplicationFactor, sh, s.stores)
		}
		for _, r := range vs {
			if st := s.storeOf(r.Store); !st.Alive || st.Draining {
				t.Fatalf("%s: shard %d keeps a voter on unusable store %+v\nshard %+v\nstores %+v\nplan %+v", what, sh.Shard, st, sh, s.stores, PlanDetailed(s.state(), s.cfg, s.now))
			}
		}
		inActive := false
		for _, r := range vs {
			inActive = inActive || s.storeOf(r.Store).Region == s.active
		}
		if inActive && sh.Leader != "" && s.storeOf(sh.Leader).Region != s.active {
			t.Fatalf("%s: shard %d led from %s outside active region %s", what, sh.Shard, sh.Leader, s.active)
		}
	}
}

func (s *sim) storeOf(id string) StoreState {
	for _, st := range s.stores {
		if st.ID == id {
			return st
		}
	}
	return StoreState{}
}

func TestPlanPropertiesRandomClusters(t *testing.T) {
	cases := 2000
	if testing.Short() {
		cases = 300
	}
	steps := 0
	for seed := range uint64(cases) {
		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		s := &sim{t: t, rng: rng, ops: map[string]Operator{}, now: t0}
		s.cfg = DefaultPlannerConfig()
		s.cfg.ReplicationFactor = []int{1, 2, 3, 3, 3, 5}[rng.IntN(6)]
		s.cfg.MaxOpsPerStore = 1 + rng.IntN(3)
		s.cfg.MaxOpsTotal = 1 + rng.IntN(8)
		s.cfg.RebalanceThreshold = 1 + rng.IntN(3)
		nRegions := 1 + rng.IntN(3)
		nStores := 1 + rng.IntN(9)
		for i := range nStores {
			r := rng.IntN(nRegions)
			s.stores = append(s.stores, StoreState{ID: fmt.Sprintf("s%d", i), Region: fmt.Sprint("r", r), Zone: fmt.Sprint("z", rng.IntN(2)), Alive: true})
		}
		s.active = fmt.Sprint("r", rng.IntN(nRegions))
		for i := range 1 + rng.IntN(12) {
			s.shards = append(s.shards, ShardState{Shard: i})
		}
		name := fmt.Sprintf("seed %d (rf %d, %d stores)", seed, s.cfg.ReplicationFactor, nStores)
		res := s.converge(name + " initial")
		s.checkConverged(name+" initial", res)
		// Initial placement spreads over as many regions as it can.
		for _, sh := range s.shards {
			regions := map[string]bool{}
			for _, r := range sh.Replicas {
				regions[s.storeOf(r.Store).Region] = true
			}
			all := map[string]bool{}
			for _, st := range s.stores {
				all[st.Region] = true
			}
			if want := min(s.cfg.ReplicationFactor, len(all)); len(regions) < want {
				t.Fatalf("%s: shard %d spans %d regions, want %d: %+v", name, sh.Shard, len(regions), want, sh)
			}
		}

		// Then some stores die (together or one by one), some join, some
		// drain, and the active region may change.
		staggered := rng.IntN(2) == 0
		for i := range s.stores {
			if rng.IntN(4) == 0 {
				s.stores[i].Alive = false
				s.stores[i].DownSince = s.now
				if staggered {
					s.now = s.now.Add(time.Minute)
				}
			} else if rng.IntN(8) == 0 {
				s.stores[i].Draining = true
			}
		}
		for i := range rng.IntN(4) {
			s.stores = append(s.stores, StoreState{ID: fmt.Sprintf("n%d", i), Region: fmt.Sprint("r", rng.IntN(nRegions)), Zone: fmt.Sprint("z", rng.IntN(2)), Alive: true})
		}
		if rng.IntN(3) == 0 {
			s.active = fmt.Sprint("r", rng.IntN(nRegions))
		}
		// Nothing may move within the grace period.
		for _, op := range Plan(s.state(), s.cfg, s.now) {
			if op.Kind == KindRepair && !staggered {
				t.Fatalf("%s: repair %v within the grace period", name, describe([]Operation{op}))
			}
		}
		s.now = s.now.Add(s.cfg.DownGrace)
		res = s.converge(name + " after failures")
		s.checkConverged(name+" after failures", res)
		// Converged, every shard spans as many regions, then zones, as the
		// usable stores allow (up to RF): repairs and joins that left a
		// shard doubled up in a region are spread out again.
		s.checkSpread(name+" after failures", res)
		steps += s.steps
	}
	t.Logf("%d clusters, %d operations applied", cases, steps)
}

func TestAssignReplicaIDs(t *testing.T) {
	reps := []clusterstate.Replica{{Store: "a", ID: 77}, {Store: "b"}}
	assignReplicaIDs(reps, 3)
	if reps[0].ID != 77 || reps[1].ID != clusterstate.ReplicaID("b", 3) {
		t.Fatalf("ids: %+v", reps)
	}
}

// The store side writes the leader's own report with role "leader"; the
// planner must count it as an up-to-date voter.
func TestLeaderReportCountsAsVoter(t *testing.T) {
	const prefix = "/p/"
	kvs := map[string][]byte{
		StatusKey(prefix, 3, "a"): []byte(`{"role":"leader","applied_index":10,"match_lag":0,"leader":"a","term":2}`),
		StatusKey(prefix, 3, "b"): []byte(`{"role":"voter","applied_index":10,"match_lag":0,"leader":"a","term":2}`),
	}
	st := decodeStatuses(prefix, kvs)
	doc := ShardDoc{Shard: clusterstate.Shard{Shard: 3, Replicas: []clusterstate.Replica{{Store: "a", Role: clusterstate.RoleVoter}, {Store: "b", Role: clusterstate.RoleVoter}}}}
	sh := shardState(doc, st[3])
	if sh.Leader != "a" {
		t.Fatalf("leader = %q", sh.Leader)
	}
	if n := UpToDateVoters(sh, func(string) bool { return true }, 100); n != 2 {
		t.Fatalf("up-to-date voters = %d, want 2 (the leader counts)", n)
	}
}
