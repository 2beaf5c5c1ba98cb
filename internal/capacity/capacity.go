// Package capacity plans how many workers and store nodes each region needs
// to carry an observed load at a target utilisation and still carry it after
// the loss of the largest region, and projects that forward by quarter.
//
// The planner is a pure function of the observed load and of per-node
// capacities measured on this build (Params); where the load comes from
// (a JSON file, a live Prometheus, the built-in sample) is the caller's
// business. Keeping it pure is what lets the tests pin every number.
package capacity

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"time"
)

// Observed is the load the planner starts from. It is also the format of
// the --metrics file, so an operator can save what --prometheus found, edit
// it ("what if eu-west-1 doubled?") and plan again.
type Observed struct {
	Source string    `json:"source"`
	At     time.Time `json:"at"`
	// Sessions is the number of live sessions in the store (all regions:
	// sessions are not pinned to a region).
	Sessions int64 `json:"sessions"`
	// StoreWritesPerSec is the rate of quorum writes into the session
	// store; 0 means unknown, and the planner estimates it from RPS with
	// Params.WritesPerRequest.
	StoreWritesPerSec float64      `json:"store_writes_per_sec"`
	Regions           []RegionLoad `json:"regions"`
}

// RegionLoad is what one region serves today.
type RegionLoad struct {
	Name       string  `json:"name"`
	RPS        float64 `json:"rps"`
	Workers    int     `json:"workers"`
	Stores     int     `json:"stores"`
	P95Seconds float64 `json:"p95_seconds"`
	// CPUUtilization is the workers' mean CPU use in cores per worker
	// (0 when unknown).
	CPUUtilization float64 `json:"cpu_utilization"`
}

// Params are the capacities of one node of this build and the planning
// policy. DefaultParams documents where each default comes from.
type Params struct {
	WorkerRPS           float64 `json:"worker_rps"`             // one worker's tools/call capacity at the latency budget
	StoreWritesPerSec   float64 `json:"store_writes_per_sec"`   // one store node's replicated write capacity
	WritesPerRequest    float64 `json:"writes_per_request"`     // store writes per MCP request, when not observed
	SessionBytes        int64   `json:"session_bytes"`          // RAM per session per replica, record included
	StoreMemoryBytes    int64   `json:"store_memory_bytes"`     // RAM a store node may use for sessions
	TargetUtilization   float64 `json:"target_utilization"`     // plan nodes to run at this fraction of capacity
	ReplicationFactor   int     `json:"replication_factor"`     // store replicas per shard
	MinWorkersPerRegion int     `json:"min_workers_per_region"` // floor per serving region
	MinStores           int     `json:"min_stores"`             // floor for the whole store cluster
	GrowthPerQuarter    float64 `json:"growth_per_quarter"`     // 0.25 = +25 % load per quarter
	Quarters            int     `json:"quarters"`               // how far to project
	P95Budget           float64 `json:"p95_budget_seconds"`     // the SLO the plan must keep
}

// DefaultParams are the planning defaults. The node capacities are the
// figures `make bench` measured on a 2-vCPU machine (docs/benchmarks.md);
// operators on other hardware pass their own with the flags.
func DefaultParams() Params {
	return Params{
		WorkerRPS:           80,
		StoreWritesPerSec:   650,
		WritesPerRequest:    1,
		SessionBytes:        4 << 10,
		StoreMemoryBytes:    8 << 30,
		TargetUtilization:   0.6,
		ReplicationFactor:   3,
		MinWorkersPerRegion: 2,
		MinStores:           3,
		GrowthPerQuarter:    0.25,
		Quarters:            4,
		P95Budget:           0.1,
	}
}

// Validate reports the first parameter that cannot make a plan.
func (p Params) Validate() error {
	switch {
	case p.WorkerRPS <= 0:
		return errors.New("worker rps must be > 0 (one worker's measured capacity; see docs/benchmarks.md)")
	case p.StoreWritesPerSec <= 0:
		return errors.New("store writes/s must be > 0 (one store node's measured write capacity)")
	case p.WritesPerRequest < 0:
		return errors.New("writes per request must be >= 0")
	case p.SessionBytes <= 0 || p.StoreMemoryBytes <= 0:
		return errors.New("session bytes and store memory must be > 0")
	case p.TargetUtilization <= 0 || p.TargetUtilization > 1:
		return fmt.Errorf("target utilization %.2f must be in (0, 1]", p.TargetUtilization)
	case p.ReplicationFactor < 1:
		return errors.New("replication factor must be >= 1")
	case p.MinWorkersPerRegion < 0 || p.MinStores < 0:
		return errors.New("minimum node counts must be >= 0")
	case p.GrowthPerQuarter < -1 || p.GrowthPerQuarter > 10:
		return fmt.Errorf("growth per quarter %.2f must be in [-1, 10]", p.GrowthPerQuarter)
	case p.Quarters < 0 || p.Quarters > 40:
		return fmt.Errorf("quarters %d must be in [0, 40]", p.Quarters)
	case p.P95Budget <= 0:
		return errors.New("p95 budget must be > 0")
	}
	return nil
}

// Validate reports the first thing wrong with an observed load.
func (o Observed) Validate() error {
	if len(o.Regions) == 0 {
		return errors.New("no regions in the observed load")
	}
	seen := map[string]bool{}
	for _, r := range o.Regions {
		switch {
		case r.Name == "":
			return errors.New("a region has no name")
		case seen[r.Name]:
			return fmt.Errorf("region %q listed twice", r.Name)
		case r.RPS < 0 || math.IsNaN(r.RPS) || math.IsInf(r.RPS, 0):
			return fmt.Errorf("region %q: rps %v must be a number >= 0", r.Name, r.RPS)
		case r.Workers < 0 || r.Stores < 0:
			return fmt.Errorf("region %q: node counts must be >= 0", r.Name)
		}
		seen[r.Name] = true
	}
	if o.Sessions < 0 || o.StoreWritesPerSec < 0 {
		return errors.New("sessions and store writes/s must be >= 0")
	}
	return nil
}

// RegionPlan is the plan for one region.
type RegionPlan struct {
	Name string  `json:"name"`
	RPS  float64 `json:"rps"`
	// RPSAfterLoss is what the region carries when the largest other
	// region is lost and its load spreads over the survivors.
	RPSAfterLoss      float64 `json:"rps_after_loss"`
	Workers           int     `json:"workers"`
	WorkersNeeded     int     `json:"workers_needed"`
	Stores            int     `json:"stores"`
	StoresNeeded      int     `json:"stores_needed"`
	WorkerUtilization float64 `json:"worker_utilization"` // today's load over today's capacity
}

// Quarter is the projection for one future quarter.
type Quarter struct {
	Quarter       int     `json:"quarter"`
	RPS           float64 `json:"rps"`
	Sessions      int64   `json:"sessions"`
	WorkersNeeded int     `json:"workers_needed"`
	StoresNeeded  int     `json:"stores_needed"`
}

// Recommendation is one thing to do, with why.
type Recommendation struct {
	Action string `json:"action"`
	Reason string `json:"reason"`
}

// Plan is the planner's answer.
type Plan struct {
	Params        Params       `json:"params"`
	Observed      Observed     `json:"observed"`
	LargestRegion string       `json:"largest_region"`
	TotalRPS      float64      `json:"total_rps"`
	StoreWrites   float64      `json:"store_writes_per_sec"`
	Regions       []RegionPlan `json:"regions"`
	WorkersNeeded int          `json:"workers_needed"`
	StoresNeeded  int          `json:"stores_needed"`
	// StoreCluster is the store nodes the load needs in all; StoresNeeded
	// is more, spread so that any one region's loss leaves StoreCluster.
	StoreCluster    int              `json:"store_cluster_minimum"`
	Quarters        []Quarter        `json:"quarters"`
	Recommendations []Recommendation `json:"recommendations"`
}

// Make plans for obs under p. It never fails on a valid input.
func Make(obs Observed, p Params) (Plan, error) {
	if err := p.Validate(); err != nil {
		return Plan{}, fmt.Errorf("capacity parameters: %w", err)
	}
	if err := obs.Validate(); err != nil {
		return Plan{}, fmt.Errorf("observed load: %w", err)
	}
	regions := append([]RegionLoad(nil), obs.Regions...)
	sort.Slice(regions, func(i, j int) bool { return regions[i].Name < regions[j].Name })
	obs.Regions = regions

	pl := Plan{Params: p, Observed: obs}
	pl.LargestRegion = largest(regions)
	for _, r := range regions {
		pl.TotalRPS += r.RPS
	}
	pl.StoreWrites = obs.StoreWritesPerSec
	if pl.StoreWrites == 0 {
		pl.StoreWrites = pl.TotalRPS * p.WritesPerRequest
	}

	after := afterLoss(regions, pl.LargestRegion)
	pl.StoreCluster = storesFor(pl.StoreWrites, obs.Sessions, p)
	perRegionStores := spreadStores(pl.StoreCluster, len(regions), p)
	for i, r := range regions {
		rp := RegionPlan{
			Name:          r.Name,
			RPS:           r.RPS,
			RPSAfterLoss:  after[i],
			Workers:       r.Workers,
			Stores:        r.Stores,
			StoresNeeded:  perRegionStores,
			WorkersNeeded: workersFor(math.Max(r.RPS, after[i]), p),
		}
		if r.Workers > 0 {
			rp.WorkerUtilization = r.RPS / (float64(r.Workers) * p.WorkerRPS)
		}
		pl.WorkersNeeded += rp.WorkersNeeded
		pl.StoresNeeded += rp.StoresNeeded
		pl.Regions = append(pl.Regions, rp)
	}

	for q := 1; q <= p.Quarters; q++ {
		f := math.Pow(1+p.GrowthPerQuarter, float64(q))
		grown := make([]RegionLoad, len(regions))
		for i, r := range regions {
			grown[i] = r
			grown[i].RPS = r.RPS * f
		}
		ga := afterLoss(grown, largest(grown))
		qq := Quarter{Quarter: q, RPS: pl.TotalRPS * f, Sessions: int64(math.Ceil(float64(obs.Sessions) * f))}
		for i, r := range grown {
			qq.WorkersNeeded += workersFor(math.Max(r.RPS, ga[i]), p)
		}
		qq.StoresNeeded = len(regions) * spreadStores(storesFor(pl.StoreWrites*f, qq.Sessions, p), len(regions), p)
		pl.Quarters = append(pl.Quarters, qq)
	}
	pl.Recommendations = recommend(pl)
	return pl, nil
}

// largest is the region with the most load (ties: the first by name), the
// one whose loss the plan must survive.
func largest(rs []RegionLoad) string {
	best := -1
	for i, r := range rs {
		if best < 0 || r.RPS > rs[best].RPS {
			best = i
		}
	}
	return rs[best].Name
}

// afterLoss is each region's load once lost's load has moved to the
// survivors in proportion to what they carry (evenly when they carry
// nothing). The lost region's own entry keeps its load: it must carry it
// when another region is lost.
func afterLoss(rs []RegionLoad, lost string) []float64 {
	out := make([]float64, len(rs))
	var lostRPS, rest float64
	survivors := 0
	for _, r := range rs {
		if r.Name == lost {
			lostRPS = r.RPS
		} else {
			rest += r.RPS
			survivors++
		}
	}
	for i, r := range rs {
		out[i] = r.RPS
		if r.Name == lost || survivors == 0 {
			continue
		}
		share := 1 / float64(survivors)
		if rest > 0 {
			share = r.RPS / rest
		}
		out[i] += lostRPS * share
	}
	return out
}

func workersFor(rps float64, p Params) int {
	n := int(math.Ceil(rps / (p.WorkerRPS * p.TargetUtilization)))
	return max(n, p.MinWorkersPerRegion)
}

// storesFor is the store nodes the whole cluster needs: every write lands
// on ReplicationFactor nodes, and every session is held by as many.
func storesFor(writes float64, sessions int64, p Params) int {
	rf := float64(p.ReplicationFactor)
	byWrites := math.Ceil(writes * rf / (p.StoreWritesPerSec * p.TargetUtilization))
	byMemory := math.Ceil(float64(sessions) * float64(p.SessionBytes) * rf / (float64(p.StoreMemoryBytes) * p.TargetUtilization))
	n := int(math.Max(byWrites, byMemory))
	return max(n, p.MinStores, p.ReplicationFactor)
}

// spreadStores is the store nodes per region so that the survivors of any
// one region's loss still hold total nodes: total/(regions-1), rounded up.
func spreadStores(total, regions int, p Params) int {
	if regions <= 1 {
		return total
	}
	per := int(math.Ceil(float64(total) / float64(regions-1)))
	// A shard keeps one replica per region at most, so with fewer
	// regions than the replication factor each region holds more.
	return max(per, int(math.Ceil(float64(p.ReplicationFactor)/float64(regions-1))))
}

func recommend(pl Plan) []Recommendation {
	var out []Recommendation
	p := pl.Params
	for _, r := range pl.Regions {
		switch {
		case r.Workers < r.WorkersNeeded:
			out = append(out, Recommendation{
				Action: fmt.Sprintf("add %d worker(s) in %s (have %d, need %d)", r.WorkersNeeded-r.Workers, r.Name, r.Workers, r.WorkersNeeded),
				Reason: fmt.Sprintf("%s must carry %.0f req/s if %s is lost; one worker does %.0f req/s at %.0f %% target utilisation", r.Name, math.Max(r.RPS, r.RPSAfterLoss), pl.LargestRegion, p.WorkerRPS, p.TargetUtilization*100),
			})
		case r.Workers > 2*r.WorkersNeeded && r.Workers-r.WorkersNeeded >= 2:
			out = append(out, Recommendation{
				Action: fmt.Sprintf("remove up to %d worker(s) in %s (have %d, need %d)", r.Workers-r.WorkersNeeded, r.Name, r.Workers, r.WorkersNeeded),
				Reason: fmt.Sprintf("utilisation today is %.0f %%, and %d workers survive the loss of %s at target", r.WorkerUtilization*100, r.WorkersNeeded, pl.LargestRegion),
			})
		}
		if r.Stores < r.StoresNeeded {
			out = append(out, Recommendation{
				Action: fmt.Sprintf("add %d store node(s) in %s (have %d, need %d)", r.StoresNeeded-r.Stores, r.Name, r.Stores, r.StoresNeeded),
				Reason: fmt.Sprintf("the store needs %d nodes for %.0f writes/s and %d sessions at RF %d; spread so that losing any one region leaves enough", pl.StoreCluster, pl.StoreWrites, pl.Observed.Sessions, p.ReplicationFactor),
			})
		}
	}
	for _, r := range pl.Observed.Regions {
		if r.P95Seconds > p.P95Budget {
			out = append(out, Recommendation{
				Action: fmt.Sprintf("investigate latency in %s before adding load", r.Name),
				Reason: fmt.Sprintf("p95 %.0f ms is over the %.0f ms budget; more workers help only if they are CPU-bound (mean CPU %.2f cores per worker)", r.P95Seconds*1000, p.P95Budget*1000, r.CPUUtilization),
			})
		}
	}
	if n := len(pl.Quarters); n > 0 {
		last := pl.Quarters[n-1]
		out = append(out, Recommendation{
			Action: fmt.Sprintf("budget for %d workers and %d store nodes by quarter %d", last.WorkersNeeded, last.StoresNeeded, last.Quarter),
			Reason: fmt.Sprintf("load grows %.0f %% per quarter to %.0f req/s and %d sessions", p.GrowthPerQuarter*100, last.RPS, last.Sessions),
		})
	}
	if len(pl.Regions) < 2 {
		out = append(out, Recommendation{
			Action: "add a second region",
			Reason: "with one region the loss of that region loses service; the plan cannot survive it",
		})
	}
	return out
}
