package controlplane

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
)

// TestPlanStuckStates is one case per half-done or blocked state that a
// store death or a control-plane leader change can leave behind (issue #5,
// the placement liveness bug TestStoreLossAndLeaderKillUnderLoad found).
// The planner is stateless, so "the next leader" is simply the next Plan
// call on the state in etcd; what differs after a leader change is that
// the new leader's store tracker has seen a dead store go only now (its
// DownSince is the takeover time, so its grace period starts again) or
// never saw it at all (no region, no zone).
func TestPlanStuckStates(t *testing.T) {
	now := t0.Add(time.Minute) // stores marked "!" died at t0, past the 30 s grace
	// c died just before the new leader took over: its grace restarted.
	freshDead := StoreState{ID: "c", Region: "r3", Zone: "z1", DownSince: now}
	// c died before the new leader ever saw it alive: no region or zone.
	unknownDead := StoreState{ID: "c", DownSince: now.Add(-time.Minute)}
	live := sts("a@r1/z1", "b@r2/z1", "d@r3/z2")

	op := func(kind OperatorKind, updated time.Time, done int, steps ...Step) Operator {
		o := Operator{ID: "op", Shard: 0, Kind: kind, Created: updated, Updated: updated, Steps: slices.Clone(steps)}
		for i := range done {
			o.Steps[i].Done = true
		}
		return o
	}
	moveCtoD := []Step{{Kind: StepAddLearner, Store: "d"}, {Kind: StepPromoteLearner, Store: "d"}, {Kind: StepRemoveReplica, Store: "c"}}
	unreported := sh(0, "a:v", "b:v", "c:v", "d:l")
	unreported.Replicas[3].Reported, unreported.Replicas[3].ReportedRole, unreported.Replicas[3].Lag = false, "", -1
	staleLeader := sh(0, "a:v", "b:v", "c:v", "d:v")
	staleLeader.Leader = "c" // the dead store's last status report still names it

	tests := []struct {
		name  string
		state ClusterState
		want  []string
	}{
		// A leader killed between the steps of a repair.
		{"learner added, not promoted: the next leader promotes it, grace restarted or not",
			ClusterState{Stores: append(slices.Clone(live), freshDead), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:l")},
				InFlight: []Operator{op(KindRepair, now.Add(-5*time.Second), 1, moveCtoD...)}},
			[]string{"000 repair promote_learner d"}},
		{"learner added, not yet reported by the shard's leader: wait, no cancel",
			ClusterState{Stores: append(slices.Clone(live), freshDead), Shards: []ShardState{unreported},
				InFlight: []Operator{op(KindRepair, now.Add(-5*time.Second), 1, moveCtoD...)}},
			nil},
		{"promoted, old replica not removed: the next leader removes it within the restarted grace",
			ClusterState{Stores: append(slices.Clone(live), freshDead), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:v")},
				InFlight: []Operator{op(KindRepair, now.Add(-5*time.Second), 2, moveCtoD...)}},
			[]string{"000 repair remove_replica c"}},
		{"promoted, old replica not removed, dead store never seen by this leader",
			ClusterState{Stores: append(slices.Clone(live), unknownDead), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:v")},
				InFlight: []Operator{op(KindRepair, now.Add(-5*time.Second), 2, moveCtoD...)}},
			[]string{"000 repair remove_replica c"}},
		{"promoted, dead store still reported as the shard's leader: removed all the same",
			ClusterState{Stores: append(slices.Clone(live), freshDead), Shards: []ShardState{staleLeader},
				InFlight: []Operator{op(KindRepair, now.Add(-5*time.Second), 2, moveCtoD...)}},
			[]string{"000 repair remove_replica c"}},
		// Operators that cannot finish give way.
		{"learner never caught up: timed out, learner rolled back",
			ClusterState{Stores: append(slices.Clone(live), freshDead), Shards: []ShardState{unreported},
				InFlight: []Operator{op(KindRepair, now.Add(-11*time.Minute), 1, moveCtoD...)}},
			[]string{"000 repair remove_replica d cancel"}},
		{"timed out after the promotion: cancelled without a rollback",
			ClusterState{Stores: append(slices.Clone(live), st("c@r3/z1!")), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:v")},
				InFlight: []Operator{op(KindRepair, now.Add(-11*time.Minute), 2, Step{Kind: StepAddLearner, Store: "d"},
					Step{Kind: StepPromoteLearner, Store: "d"}, Step{Kind: StepRemoveReplica, Store: "b"})}},
			[]string{"000 repair - cancel"}},
		{"what a cancelled move leaves (four voters, one dead): the dead voter is removed",
			ClusterState{Stores: append(slices.Clone(live), st("c@r3/z1!")), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:v")}},
			[]string{"000 repair remove_replica c"}},
		{"a move caught by its new store's death after the promotion: cancelled at once, the old replica stays",
			ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1", "d@r3/z2!"), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:v")},
				InFlight: []Operator{op(KindRebalance, now.Add(-5*time.Second), 2, moveCtoD...)}},
			[]string{"000 rebalance - cancel"}},
		{"a move caught by its new store's death before the promotion: cancelled, learner rolled back",
			ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1", "d@r3/z2!"), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:l")},
				InFlight: []Operator{op(KindRebalance, now.Add(-5*time.Second), 1, moveCtoD...)}},
			[]string{"000 rebalance remove_replica d cancel"}},
		{"a move whose old store died: finishes as the repair",
			ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r3/z2"), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:v")},
				InFlight: []Operator{op(KindRebalance, now.Add(-5*time.Second), 2, moveCtoD...)}},
			[]string{"000 rebalance remove_replica c"}},
		// A leader leaves when the map drops it (it hands over to a listed
		// voter itself); no transfer to target_leader is waited for.
		{"a move off the shard's live leader removes it from the map instead of waiting for a transfer",
			ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1", "d@r3/z2"), Shards: []ShardState{sh(0, "c:v", "a:v", "b:v", "d:v")},
				InFlight: []Operator{op(KindRebalance, now.Add(-5*time.Second), 2, moveCtoD...)}},
			[]string{"000 rebalance remove_replica c"}},
		{"an over-replicated shard sheds its live leader directly",
			ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1", "d@r1/z2"), Shards: []ShardState{sh(0, "d:v", "a:v", "b:v", "c:v")}},
			[]string{"000 shrink remove_replica d"}},
		// A dead store alone in its region (or zone) is replaced all the
		// same, from another region when its own has no candidate.
		{"dead store alone in its region: replaced from a region the shard already uses",
			ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r1/z2"), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v")}},
			[]string{"000 repair add_learner d"}},
		{"dead store alone in its region, the only candidate shares a zone with a replica",
			ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r1/z1"), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v")}},
			[]string{"000 repair add_learner d"}},
		{"dead store never seen by this leader (no region): replaced",
			ClusterState{Stores: append(sts("a@r1/z1", "b@r2/z1", "d@r1/z2"), unknownDead), Shards: []ShardState{sh(0, "a:v", "b:v", "c:v")}},
			[]string{"000 repair add_learner d"}},
		{"dead store alone in its region, repair in flight: a second shard waits for no region",
			ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1!", "d@r1/z2", "e@r2/z2"),
				Shards: []ShardState{sh(0, "a:v", "b:v", "c:v", "d:l"), sh(1, "b:v", "a:v", "c:v")},
				InFlight: []Operator{{ID: "op", Shard: 0, Kind: KindRepair, Updated: now, Steps: []Step{
					{Kind: StepAddLearner, Store: "d", Done: true}, {Kind: StepPromoteLearner, Store: "d"}, {Kind: StepRemoveReplica, Store: "c"}}}}},
			[]string{"000 repair promote_learner d", "001 repair add_learner e"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := describeStuck(Plan(tt.state, DefaultPlannerConfig(), now))
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("Plan =\n  %q\nwant\n  %q", got, tt.want)
			}
		})
	}
}

// describeStuck is describe with "-" for a cancel that changes nothing.
func describeStuck(ops []Operation) []string {
	var out []string
	for _, o := range ops {
		if o.Cancel && o.Action.Kind == "" {
			out = append(out, fmt.Sprintf("%03d %s - cancel", o.Shard, o.Kind))
			continue
		}
		out = append(out, describe([]Operation{o})...)
	}
	return out
}

// TestPlanConvergesWhenStoresIgnoreTargetLeader drains and rebalances
// clusters whose store nodes never move leadership to target_leader (the
// real ones do, but only once the configuration matches the map, and a
// target may never catch up). A planner that waits for the leader to move before
// removing its replica holds each such operator until OperatorTimeout
// (10 min); repairs and drains must instead finish in seconds.
func TestPlanConvergesWhenStoresIgnoreTargetLeader(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 0x1ead))
		s := &sim{t: t, rng: rng, ops: map[string]Operator{}, now: t0, ignoreTarget: true}
		s.cfg = DefaultPlannerConfig()
		s.cfg.DownGrace = 3 * time.Second
		for i := range 3 {
			s.stores = append(s.stores, StoreState{ID: fmt.Sprintf("s%d", i), Region: fmt.Sprint("r", i), Zone: "z0", Alive: true})
		}
		for i := range 4 + rng.IntN(8) {
			s.shards = append(s.shards, ShardState{Shard: i})
		}
		name := fmt.Sprintf("seed %d", seed)
		s.checkConverged(name+" initial", s.converge(name+" initial"))
		// Drain the store that leads the most shards, let a new store in
		// its region join, and kill another store.
		leads := map[string]int{}
		for _, sh := range s.shards {
			leads[sh.Leader]++
		}
		drained := ""
		for id, n := range leads {
			if drained == "" || n > leads[drained] || n == leads[drained] && id < drained {
				drained = id
			}
		}
		var region string
		for i := range s.stores {
			if s.stores[i].ID == drained {
				s.stores[i].Draining = true
				region = s.stores[i].Region
			}
		}
		s.stores = append(s.stores,
			StoreState{ID: "n0", Region: region, Zone: "z1", Alive: true},
			StoreState{ID: "n1", Region: fmt.Sprint("r", rng.IntN(3)), Zone: "z2", Alive: true})
		start := s.now
		res := s.converge(name + " drain")
		s.checkConverged(name+" drain", res)
		if took := s.now.Sub(start); took > 2*time.Minute {
			t.Fatalf("%s: draining %s (leader of %d shards) took %s of simulated time: an operator waited for a leader transfer", name, drained, leads[drained], took)
		}
		for _, sh := range s.shards {
			if sh.hosts(drained) {
				t.Fatalf("%s: shard %d keeps a replica on drained %s", name, sh.Shard, drained)
			}
			for _, r := range sh.Replicas {
				if r.Role != clusterstate.RoleVoter {
					t.Fatalf("%s: shard %d keeps learner %s", name, sh.Shard, r.Store)
				}
			}
		}
	}
}

// TestEmptyLearnerAndOtherIncarnationNotCaughtUp is the state seen live
// on a young shard (18 entries): a new learner still waiting for its
// snapshot reported applied_index 0 and match_lag 18, within
// MaxPromoteLag, and was promoted in the map though it held nothing; and
// a store's status key may still describe a removed incarnation of its
// replica. Neither is a caught-up replica.
func TestEmptyLearnerAndOtherIncarnationNotCaughtUp(t *testing.T) {
	const prefix = "/p/"
	id := func(store string, epoch uint64) uint64 { return clusterstate.ReplicaID(store, epoch) }
	kvs := map[string][]byte{
		StatusKey(prefix, 7, "a"): fmt.Appendf(nil, `{"role":"leader","applied_index":18,"match_lag":0,"leader":"a","term":2,"replica_id":%d}`, id("a", 1)),
		StatusKey(prefix, 7, "b"): fmt.Appendf(nil, `{"role":"voter","applied_index":18,"match_lag":0,"leader":"a","term":2,"replica_id":%d}`, id("b", 1)),
		StatusKey(prefix, 7, "d"): fmt.Appendf(nil, `{"role":"learner","applied_index":0,"match_lag":18,"leader":"a","term":2,"replica_id":%d}`, id("d", 9)),
		// e's key still holds the report on its replica of epoch 3; the
		// map lists the one of epoch 9.
		StatusKey(prefix, 7, "e"): fmt.Appendf(nil, `{"role":"learner","applied_index":18,"match_lag":0,"leader":"a","term":2,"replica_id":%d}`, id("e", 3)),
	}
	doc := ShardDoc{Shard: clusterstate.Shard{Shard: 7, ConfEpoch: 9, Replicas: []clusterstate.Replica{
		{Store: "a", Role: clusterstate.RoleVoter, ID: id("a", 1)}, {Store: "b", Role: clusterstate.RoleVoter, ID: id("b", 1)},
		{Store: "c", Role: clusterstate.RoleVoter, ID: id("c", 1)},
		{Store: "d", Role: clusterstate.RoleLearner, ID: id("d", 9)}, {Store: "e", Role: clusterstate.RoleLearner, ID: id("e", 9)}}}}
	sh := shardState(doc, decodeStatuses(prefix, kvs)[7])
	var got []string
	for _, r := range sh.Replicas {
		got = append(got, fmt.Sprintf("%s:%v:%d", r.Store, r.Reported, r.Lag))
	}
	if want := "a:true:0 b:true:0 c:false:-1 d:true:-1 e:false:-1"; fmt.Sprint(got) != "["+want+"]" {
		t.Fatalf("replicas %v, want [%s]", got, want)
	}
	for _, learner := range []string{"d", "e"} {
		op := Operator{ID: "op", Shard: 7, Kind: KindRepair, Created: t0, Updated: t0, Steps: []Step{
			{Kind: StepAddLearner, Store: learner, Done: true}, {Kind: StepPromoteLearner, Store: learner}}}
		state := ClusterState{Stores: sts("a@r1/z1", "b@r2/z1", "c@r3/z1", "d@r3/z2", "e@r3/z3"), Shards: []ShardState{sh}, InFlight: []Operator{op}}
		if ops := describe(Plan(state, DefaultPlannerConfig(), t0.Add(time.Second))); len(ops) != 0 {
			t.Fatalf("learner %s: Plan = %q, want nothing until it has caught up", learner, ops)
		}
	}
}
