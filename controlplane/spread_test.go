package controlplane

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// spreadOf is a shard's (regions, zones) as the simulated stores place it.
func (s *sim) spreadOf(sh ShardState) [2]int {
	regions, zones := map[string]bool{}, map[string]bool{}
	for _, r := range sh.Replicas {
		st := s.storeOf(r.Store)
		regions[st.Region] = true
		zones[st.Region+"/"+st.Zone] = true
	}
	return [2]int{len(regions), len(zones)}
}

// usableSpread is the (regions, zones) the usable simulated stores span.
func (s *sim) usableSpread() [2]int {
	regions, zones := map[string]bool{}, map[string]bool{}
	for _, st := range s.stores {
		if st.Alive && !st.Draining {
			regions[st.Region] = true
			zones[st.Region+"/"+st.Zone] = true
		}
	}
	return [2]int{len(regions), len(zones)}
}

// checkSpread fails unless every placed shard with RF voters spans
// min(RF, regions) regions and min(RF, zones) zones of the usable stores.
func (s *sim) checkSpread(what string, res PlanResult) {
	s.t.Helper()
	if res.Paused {
		return
	}
	avail := s.usableSpread()
	rf := s.cfg.ReplicationFactor
	for _, sh := range s.shards {
		if len(sh.Replicas) == 0 || len(voters(sh)) != rf || s.storesUsable(sh) != rf {
			continue
		}
		if got, want := s.spreadOf(sh), [2]int{min(rf, avail[0]), min(rf, avail[1])}; got != want {
			s.t.Fatalf("%s: shard %d spans %d regions and %d zones, want %d and %d: %+v\nstores %+v", what, sh.Shard, got[0], got[1], want[0], want[1], sh, s.stores)
		}
	}
}

// storesUsable counts sh's replicas on usable stores.
func (s *sim) storesUsable(sh ShardState) int {
	n := 0
	for _, r := range sh.Replicas {
		if st := s.storeOf(r.Store); st.Alive && !st.Draining {
			n++
		}
	}
	return n
}

// TestSpreadRepairConverges starts from a placement made while only some
// regions' (or zones') stores had registered, as in the HA run where 38 of
// 64 shards had two of three voters in one region, and applies Plan's
// operations in a simulated cluster until nothing is left to do. Every
// shard must end spanning min(RF, regions) regions (then zones), no
// operation may leave a shard with fewer than 2 up-to-date voters, and the
// throttles must hold throughout.
func TestSpreadRepairConverges(t *testing.T) {
	tests := []struct {
		name   string
		stores []string
		// place gives shard i's voters (cycled over the shards).
		place [][]string
		rf    int
	}{
		{
			// erlmcp up with 4 stores: store-4 shares store-1's region and
			// placement ran before store-3 registered.
			name:   "two of three regions",
			stores: []string{"s1@us/a", "s2@eu/a", "s3@ap/a", "s4@us/a"},
			place:  [][]string{{"s1", "s2", "s4"}, {"s4", "s1", "s2"}, {"s2", "s4", "s1"}},
			rf:     3,
		},
		{
			name:   "one region of many zones",
			stores: []string{"a@r1/z1", "b@r1/z1", "c@r1/z1", "d@r1/z2", "e@r1/z3"},
			place:  [][]string{{"a", "b", "c"}, {"b", "c", "d"}},
			rf:     3,
		},
		{
			name:   "rf 5 over three regions",
			stores: []string{"a@r1/z1", "b@r1/z2", "c@r1/z3", "d@r1/z4", "e@r1/z5", "f@r2/z1", "g@r3/z1"},
			place:  [][]string{{"a", "b", "c", "d", "e"}},
			rf:     5,
		},
		{
			name:   "rf 2, one region doubled",
			stores: []string{"a@r1/z1", "b@r1/z2", "c@r2/z1"},
			place:  [][]string{{"a", "b"}},
			rf:     2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &sim{t: t, rng: rand.New(rand.NewPCG(1, 2)), ops: map[string]Operator{}, now: t0, stores: sts(tt.stores...)}
			s.cfg = DefaultPlannerConfig()
			s.cfg.ReplicationFactor = tt.rf
			s.active = s.stores[0].Region
			skewed := 0
			for i := range 64 {
				reps := tt.place[i%len(tt.place)]
				var specs []string
				for _, r := range reps {
					specs = append(specs, r+":v")
				}
				shard := sh(i, specs...)
				s.shards = append(s.shards, shard)
				if avail := s.usableSpread(); s.spreadOf(shard) != [2]int{min(tt.rf, avail[0]), min(tt.rf, avail[1])} {
					skewed++
				}
			}
			spreadOps := 0
			for round := 0; ; round++ {
				if round == 3000 {
					t.Fatalf("no stable state after 3000 rounds; in flight %v", s.ops)
				}
				res := PlanDetailed(s.state(), s.cfg, s.now)
				for _, op := range res.Ops {
					if op.New != nil && op.Kind == KindSpread {
						spreadOps++
					}
					s.apply(op) // checks each step's own safety
					after := s.shards[op.Shard]
					if n := UpToDateVoters(after, s.alive, s.cfg.MaxPromoteLag); n < 2 {
						t.Fatalf("round %d: %s left shard %d with %d up-to-date voters: %+v", round, describe([]Operation{op}), op.Shard, n, after)
					}
				}
				s.checkThrottles(s.state())
				s.settle(0.6)
				s.now = s.now.Add(time.Second)
				if len(res.Ops) == 0 && len(s.ops) == 0 {
					s.settle(1)
					if res = PlanDetailed(s.state(), s.cfg, s.now); len(res.Ops) == 0 {
						s.checkSpread(tt.name, res)
						break
					}
				}
			}
			if spreadOps < skewed {
				t.Fatalf("%d spread moves for %d shards short of regions or zones", spreadOps, skewed)
			}
			// Stable: more rounds plan nothing (rebalance does not undo it).
			for range 20 {
				s.settle(1)
				s.now = s.now.Add(time.Second)
				if ops := Plan(s.state(), s.cfg, s.now); len(ops) != 0 {
					t.Fatalf("converged cluster still plans %v", describe(ops))
				}
			}
			t.Logf("%d shards short of regions or zones, %d spread moves, %d operations applied", skewed, spreadOps, s.steps)
		})
	}
}

// TestSpreadRepairSkipsUnhealthyShards: a shard with a voter on a
// dead store is repair's, not spread's, and a shard whose voters are not
// all up to date is not moved.
func TestSpreadRepairSkipsUnhealthyShards(t *testing.T) {
	stores := sts("a@r1/z1", "b@r1/z2", "c@r2/z1", "d@r3/z1", "x@r1/z3!")
	lagging := sh(1, "a:v", "b:v", "c:v")
	lagging.Replicas[1].Lag = 1_000_000
	st := ClusterState{Stores: stores, Shards: []ShardState{sh(0, "a:v", "b:v", "x:v"), lagging}}
	for _, op := range Plan(st, DefaultPlannerConfig(), t0) {
		if op.Kind == KindSpread {
			t.Fatalf("spread move on an unhealthy shard: %v", describe([]Operation{op}))
		}
	}
	// Healthy, it moves: the victim is b (not the leader a), the target d.
	st.Shards = []ShardState{sh(1, "a:v", "b:v", "c:v")}
	ops := Plan(st, DefaultPlannerConfig(), t0)
	got := describe(ops)
	if want := fmt.Sprint([]string{"001 spread add_learner d"}); fmt.Sprint(got) != want {
		t.Fatalf("plan %v, want %v", got, want)
	}
	if steps := ops[0].New.Steps; len(steps) != 3 || steps[2].Kind != StepRemoveReplica || steps[2].Store != "b" {
		t.Fatalf("spread steps %+v, want b removed (not the leader a)", steps)
	}
}
