package controlplane

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
)

// This file is the placement planner: a pure function from the cluster's
// state (stores, shard map with replica progress, in-flight operators,
// active region) to the next small steps. It touches no etcd and keeps no
// state between calls; the executor (executor.go) and the tests feed it.
//
// Rules, in priority order:
//
//  0. Mass lease expiry guard: when more than MassExpiryFraction of the
//     known stores went down within MassExpiryWindow of one another, plan
//     nothing and say why (an etcd hiccup must not move everything). The
//     pause lasts while those stores stay down.
//  1. In-flight operators advance one step at a time when the step's
//     precondition holds (a learner is promoted only once caught up; a
//     replica is removed only once the promotion is applied, and never when
//     fewer than min(2, RF) up-to-date voters or less than a majority of the
//     remaining voters would be left). A replica that leads is removed from
//     the map like any other: a leader the map dropped hands leadership to
//     a listed up-to-date voter, which then removes it (sessionstore
//     reconcileConf). Waiting for a transfer to target_leader first would
//     tie the move to a preference the store acts on only once the
//     configuration matches the map, and to the target being caught up. An operator
//     whose target store died (before or after the promotion), or that
//     made no progress for OperatorTimeout, is cancelled; a learner it
//     added is removed.
//  2. Initial placement (a shard with no replica): RF voters spread across
//     regions first, then zones, then nodes, least-loaded first; the
//     replica in the active region is named preferred leader.
//  3. Repair: stray learners (no operator owns them) are removed; a replica
//     on a store down longer than DownGrace is replaced (add learner on the
//     best new store → promote once caught up → remove the dead one); a
//     shard with fewer voters than RF gains one (add learner → promote).
//  4. Leader preference: a shard led from outside the active region gets a
//     preferred leader (TransferLeader) among its up-to-date voters in the
//     active region.
//  5. Drain: replicas on draining stores are replaced like dead ones;
//     over-replicated shards shed a voter (dead, draining, then the one
//     that adds least to the spread).
//  6. Spread: a shard whose voters (all up to date, none on an unusable
//     store) span fewer regions than min(RF, regions among usable stores)
//     moves one voter out of a region holding two or more to the best store
//     of a region it lacks (add learner → promote → remove, as a repair);
//     once the regions are full, the same for zones. A placement made while
//     only some regions' stores had registered would otherwise keep a
//     majority in one region for good, and lose quorum with that region.
//     The victim is a voter that does not lead when there is one.
//  7. Rebalance, only when no shard is under-replicated and no repair or
//     spread move is in flight: while the replica counts of usable stores
//     differ by more than RebalanceThreshold, move one replica from a
//     fuller to an emptier store when that keeps the shard's region/zone
//     spread (never fewer regions, nor fewer zones in as many regions), so
//     it cannot undo what rule 6 did and the two never flap: neither ever
//     lowers a shard's spread.
//
// Throttles: at most MaxOpsPerStore operators in flight that add a replica
// to, or remove one from, a live store, and MaxOpsTotal operators in all;
// initial placement moves no data and is not throttled. A shard has at most
// one operator at a time.

// StepKind names one small change to a shard's replica set.
type StepKind string

// Step kinds.
const (
	// StepBootstrap writes a new shard's initial voters (Stores) at once;
	// Store, if set, is the preferred leader.
	StepBootstrap StepKind = "bootstrap"
	// StepAddLearner adds Store as a learner (it receives the log and a
	// snapshot but does not vote).
	StepAddLearner StepKind = "add_learner"
	// StepPromoteLearner turns learner Store into a voter.
	StepPromoteLearner StepKind = "promote_learner"
	// StepRemoveReplica removes Store's replica (voter or learner).
	StepRemoveReplica StepKind = "remove_replica"
	// StepTransferLeader names Store the shard's preferred leader
	// (shard map field target_leader).
	StepTransferLeader StepKind = "transfer_leader"
)

// OperatorKind says why an operator exists.
type OperatorKind string

// Operator kinds.
const (
	KindPlace       OperatorKind = "place"
	KindRepair      OperatorKind = "repair"
	KindUpReplicate OperatorKind = "up_replicate"
	KindCleanup     OperatorKind = "cleanup"
	KindLeader      OperatorKind = "leader"
	KindDrain       OperatorKind = "drain"
	KindShrink      OperatorKind = "shrink"
	KindSpread      OperatorKind = "spread"
	KindRebalance   OperatorKind = "rebalance"
)

// Step is one step of an operator. Done is set, in the same etcd Txn that
// changes the shard map, once the step has been written; a standby that
// takes over continues from the first step not done.
type Step struct {
	Kind   StepKind  `json:"kind"`
	Store  string    `json:"store,omitempty"`
	Stores []string  `json:"stores,omitempty"`
	Done   bool      `json:"done"`
	DoneAt time.Time `json:"done_at,omitzero"`
}

// Operator is a group of steps on one shard, recorded at <prefix>ops/<id>
// while in flight and deleted in the Txn that completes (or cancels) it.
type Operator struct {
	ID      string       `json:"id"`
	Shard   int          `json:"shard"`
	Kind    OperatorKind `json:"kind"`
	Reason  string       `json:"reason"`
	Steps   []Step       `json:"steps"`
	Created time.Time    `json:"created"`
	// Updated is when the last step was done (Created before the first).
	Updated time.Time `json:"updated"`
}

// Next is the index of the first step not done (len(Steps) when all are).
func (o Operator) Next() int {
	for i, s := range o.Steps {
		if !s.Done {
			return i
		}
	}
	return len(o.Steps)
}

// Operation is one thing the executor does now: apply Action to shard
// Shard's map entry and, in the same Txn, record the operator's progress.
type Operation struct {
	// Operator is the operator's id.
	Operator string `json:"operator"`
	Shard    int    `json:"shard"`
	Kind     OperatorKind
	// Step is the index of the operator step this operation performs, or
	// -1 when it performs none (a cancel).
	Step int `json:"step"`
	// Action is the shard map change; a zero Action changes nothing.
	Action Step `json:"action"`
	// New is the operator this operation starts (nil for in-flight ones).
	New *Operator `json:"-"`
	// Cancel abandons the operator after Action (which then rolls back a
	// learner it added, if any).
	Cancel bool   `json:"cancel,omitempty"`
	Reason string `json:"reason"`
}

// StoreState is one store node as the planner sees it.
type StoreState struct {
	ID, Region, Zone string
	// Alive: the store's membership key exists (its lease is kept alive).
	Alive bool
	// DownSince is when the store was first seen gone (zero: unknown,
	// taken as now).
	DownSince time.Time
	Draining  bool
}

// ReplicaState is one replica: its shard map role and, when the store
// reported it (status/shards/<nnn>/<store>), its progress.
type ReplicaState struct {
	Store string
	Role  string // clusterstate.RoleVoter or RoleLearner, as in the shard map
	// Reported: the store has a status for this replica.
	Reported bool
	// ReportedRole is the role in the replica's applied Raft configuration.
	ReportedRole string
	// Lag is how many log entries the replica is behind the leader; <0 unknown.
	Lag int64
}

// ShardState is one shard map entry plus progress.
type ShardState struct {
	Shard    int
	Replicas []ReplicaState
	// Leader is the store the replicas report as leader ("" unknown).
	Leader string
	// TargetLeader is the preferred leader in the shard map.
	TargetLeader string
	ConfEpoch    uint64
}

func (s ShardState) replica(store string) (ReplicaState, bool) {
	for _, r := range s.Replicas {
		if r.Store == store {
			return r, true
		}
	}
	return ReplicaState{}, false
}

// ClusterState is the planner's whole input besides config and time.
type ClusterState struct {
	Stores   []StoreState
	Shards   []ShardState
	InFlight []Operator
	// ActiveRegion is the region leaders should be in ("" no preference).
	ActiveRegion string
	// BootstrapAllowed lets the planner place shards that have no replica
	// (the executor holds it back until enough stores registered).
	BootstrapAllowed bool
}

// PlannerConfig tunes Plan. Zero fields take DefaultPlannerConfig's values.
type PlannerConfig struct {
	ReplicationFactor int
	// DownGrace is how long a store must be gone before its replicas are
	// replaced (data moves; a restart within it moves nothing).
	DownGrace time.Duration
	// MaxPromoteLag is the most log entries a learner may lag and still be
	// promoted, and a voter may lag and still count as up to date.
	MaxPromoteLag int64
	// MaxOpsPerStore bounds in-flight operators adding a replica to or
	// removing one from one live store.
	MaxOpsPerStore int
	// MaxOpsTotal bounds all in-flight operators.
	MaxOpsTotal int
	// RebalanceThreshold: rebalance while max-min replica count across
	// usable stores exceeds it (at least 1).
	RebalanceThreshold int
	// MassExpiryFraction and MassExpiryWindow: pause when more than the
	// fraction of known stores went down within the window.
	MassExpiryFraction float64
	MassExpiryWindow   time.Duration
	// OperatorTimeout cancels an operator that made no progress this long.
	OperatorTimeout time.Duration
}

// DefaultPlannerConfig returns the defaults.
func DefaultPlannerConfig() PlannerConfig {
	return PlannerConfig{
		ReplicationFactor:  clusterstate.DefaultReplicationFactor,
		DownGrace:          30 * time.Second,
		MaxPromoteLag:      100,
		MaxOpsPerStore:     2,
		MaxOpsTotal:        16,
		RebalanceThreshold: 2,
		MassExpiryFraction: 0.5,
		MassExpiryWindow:   10 * time.Second,
		OperatorTimeout:    10 * time.Minute,
	}
}

func (c PlannerConfig) withDefaults() PlannerConfig {
	d := DefaultPlannerConfig()
	if c.ReplicationFactor <= 0 {
		c.ReplicationFactor = d.ReplicationFactor
	}
	if c.DownGrace <= 0 {
		c.DownGrace = d.DownGrace
	}
	if c.MaxPromoteLag <= 0 {
		c.MaxPromoteLag = d.MaxPromoteLag
	}
	if c.MaxOpsPerStore <= 0 {
		c.MaxOpsPerStore = d.MaxOpsPerStore
	}
	if c.MaxOpsTotal <= 0 {
		c.MaxOpsTotal = d.MaxOpsTotal
	}
	if c.RebalanceThreshold <= 0 {
		c.RebalanceThreshold = d.RebalanceThreshold
	}
	if c.MassExpiryFraction <= 0 {
		c.MassExpiryFraction = d.MassExpiryFraction
	}
	if c.MassExpiryWindow <= 0 {
		c.MassExpiryWindow = d.MassExpiryWindow
	}
	if c.OperatorTimeout <= 0 {
		c.OperatorTimeout = d.OperatorTimeout
	}
	return c
}

// minSafeVoters is the fewest up-to-date voters a step may leave: 2, or
// RF when RF is 1.
func (c PlannerConfig) minSafeVoters() int { return min(2, c.ReplicationFactor) }

// PlanResult is Plan's answer with what it noticed.
type PlanResult struct {
	Ops []Operation
	// Paused is set by the mass lease expiry guard; PauseReason says why.
	Paused      bool
	PauseReason string
	// UnderReplicated counts placed shards with fewer voters on live stores
	// than the replication factor.
	UnderReplicated int
	// QuorumLost lists shards with less than a majority of voters alive:
	// Raft cannot change them; they need their stores back.
	QuorumLost []int
}

// Plan returns the operations to perform now. See PlanDetailed.
func Plan(state ClusterState, cfg PlannerConfig, now time.Time) []Operation {
	return PlanDetailed(state, cfg, now).Ops
}

// PlanDetailed applies the rules above to state at time now. It does not
// modify state.
func PlanDetailed(state ClusterState, cfg PlannerConfig, now time.Time) PlanResult {
	p := newPlanner(state, cfg.withDefaults(), now)
	var res PlanResult
	for _, sh := range state.Shards {
		if len(sh.Replicas) == 0 {
			continue
		}
		if p.aliveVoters(sh) < p.cfg.ReplicationFactor || p.hasDead(sh) {
			res.UnderReplicated++
		}
		if p.quorumLost(sh) {
			res.QuorumLost = append(res.QuorumLost, sh.Shard)
		}
	}
	if reason := massExpiry(state.Stores, p.cfg, now); reason != "" {
		res.Paused, res.PauseReason = true, reason
		return res
	}
	for _, op := range p.inflight {
		p.advance(op)
	}
	if state.BootstrapAllowed {
		for _, sh := range state.Shards {
			if len(sh.Replicas) == 0 && !p.busy[sh.Shard] {
				p.bootstrap(sh)
			}
		}
	}
	for _, class := range []func(ShardState) bool{p.repair, p.preferLeader, p.drain, p.shrink, p.spreadRepair} {
		for _, sh := range state.Shards {
			if len(sh.Replicas) == 0 || p.busy[sh.Shard] || p.quorumLost(sh) {
				continue
			}
			if p.total >= p.cfg.MaxOpsTotal {
				break
			}
			class(sh)
		}
	}
	if res.UnderReplicated == 0 && !p.repairing {
		p.rebalance()
	}
	res.Ops = p.ops
	return res
}

// massExpiry returns why placement must pause, or "".
func massExpiry(stores []StoreState, cfg PlannerConfig, now time.Time) string {
	var down []time.Time
	for _, s := range stores {
		if !s.Alive {
			t := s.DownSince
			if t.IsZero() {
				t = now
			}
			down = append(down, t)
		}
	}
	if len(down) < 2 {
		return ""
	}
	slices.SortFunc(down, func(a, b time.Time) int { return a.Compare(b) })
	best, j := 0, 0
	for i := range down {
		for down[i].Sub(down[j]) > cfg.MassExpiryWindow {
			j++
		}
		best = max(best, i-j+1)
	}
	if best >= 2 && float64(best) > cfg.MassExpiryFraction*float64(len(stores)) {
		return fmt.Sprintf("mass lease expiry: %d of %d stores went down within %s; placement paused until they return (check etcd health)",
			best, len(stores), cfg.MassExpiryWindow)
	}
	return ""
}

type planner struct {
	cfg      PlannerConfig
	now      time.Time
	state    ClusterState
	stores   map[string]StoreState
	shards   map[int]ShardState
	inflight []Operator
	busy     map[int]bool // shards with an operator (in flight or new)
	owned    map[int]map[string]bool
	perStore map[string]int // in-flight operators adding to / removing from a live store
	total    int
	// count is each store's projected replica count (in-flight adds
	// counted, in-flight removals not).
	count   map[string]int
	leaders map[string]int
	// repairing: a repair-class or spread operator is in flight or
	// planned (rebalancing waits for both).
	repairing bool
	// avail is the (regions, zones) the usable stores span: the most
	// spread a shard can have.
	avail [2]int
	ops   []Operation
}

func newPlanner(state ClusterState, cfg PlannerConfig, now time.Time) *planner {
	p := &planner{
		cfg: cfg, now: now, state: state,
		stores:   map[string]StoreState{},
		shards:   map[int]ShardState{},
		busy:     map[int]bool{},
		owned:    map[int]map[string]bool{},
		perStore: map[string]int{},
		count:    map[string]int{},
		leaders:  map[string]int{},
	}
	var usableIDs []string
	for _, s := range state.Stores {
		p.stores[s.ID] = s
		if s.Alive && !s.Draining {
			usableIDs = append(usableIDs, s.ID)
		}
	}
	p.avail = p.spread(usableIDs)
	for _, sh := range state.Shards {
		p.shards[sh.Shard] = sh
		for _, r := range sh.Replicas {
			p.count[r.Store]++
		}
		if sh.Leader != "" {
			p.leaders[sh.Leader]++
		}
	}
	p.inflight = slices.Clone(state.InFlight)
	sort.Slice(p.inflight, func(i, j int) bool { return p.inflight[i].ID < p.inflight[j].ID })
	for _, op := range p.inflight {
		p.busy[op.Shard] = true
		p.total++
		if isRepairKind(op.Kind) || op.Kind == KindSpread {
			p.repairing = true
		}
		own := map[string]bool{}
		for _, s := range op.Steps {
			if s.Kind == StepAddLearner {
				own[s.Store] = true
			}
			if s.Done {
				continue
			}
			switch s.Kind {
			case StepAddLearner:
				p.count[s.Store]++
			case StepRemoveReplica:
				p.count[s.Store]--
			}
		}
		p.owned[op.Shard] = own
		for _, st := range p.touched(op.Steps) {
			p.perStore[st]++
		}
	}
	return p
}

func isRepairKind(k OperatorKind) bool {
	return k == KindRepair || k == KindUpReplicate || k == KindPlace
}

// touched lists the live stores steps add a replica to or remove one from.
func (p *planner) touched(steps []Step) []string {
	var out []string
	for _, s := range steps {
		if s.Kind != StepAddLearner && s.Kind != StepRemoveReplica {
			continue
		}
		if st, ok := p.stores[s.Store]; ok && st.Alive && !slices.Contains(out, s.Store) {
			out = append(out, s.Store)
		}
	}
	return out
}

func (p *planner) alive(store string) bool {
	s, ok := p.stores[store]
	return ok && s.Alive
}

// usable: alive and not draining.
func (p *planner) usable(store string) bool {
	s, ok := p.stores[store]
	return ok && s.Alive && !s.Draining
}

// deadPastGrace: gone for DownGrace or longer.
func (p *planner) deadPastGrace(store string) bool {
	s, ok := p.stores[store]
	if ok && s.Alive {
		return false
	}
	since := p.now
	if ok && !s.DownSince.IsZero() {
		since = s.DownSince
	}
	if !ok {
		return true // a store nobody knows of (not even as dead) is long gone
	}
	return p.now.Sub(since) >= p.cfg.DownGrace
}

func (p *planner) hasDead(sh ShardState) bool {
	for _, r := range sh.Replicas {
		if !p.alive(r.Store) {
			return true
		}
	}
	return false
}

func voters(sh ShardState) []ReplicaState {
	var out []ReplicaState
	for _, r := range sh.Replicas {
		if r.Role == clusterstate.RoleVoter {
			out = append(out, r)
		}
	}
	return out
}

func (p *planner) aliveVoters(sh ShardState) int {
	n := 0
	for _, r := range voters(sh) {
		if p.alive(r.Store) {
			n++
		}
	}
	return n
}

func (p *planner) quorumLost(sh ShardState) bool {
	v := len(voters(sh))
	return v > 0 && p.aliveVoters(sh) < v/2+1
}

// upToDate: a voter, in the map and in its applied configuration, on a
// live store, caught up within MaxPromoteLag.
func upToDate(r ReplicaState, alive func(string) bool, maxLag int64) bool {
	return r.Role == clusterstate.RoleVoter && r.Reported && r.ReportedRole == clusterstate.RoleVoter &&
		r.Lag >= 0 && r.Lag <= maxLag && alive(r.Store)
}

// UpToDateVoters counts sh's up-to-date voters.
func UpToDateVoters(sh ShardState, alive func(string) bool, maxLag int64) int {
	n := 0
	for _, r := range sh.Replicas {
		if upToDate(r, alive, maxLag) {
			n++
		}
	}
	return n
}

// RemovalSafe reports whether removing store's replica from sh leaves at
// least minSafe up-to-date voters and a majority of the remaining voters up
// to date.
func RemovalSafe(sh ShardState, store string, alive func(string) bool, maxLag int64, minSafe int) bool {
	r, ok := sh.replica(store)
	if !ok || r.Role != clusterstate.RoleVoter {
		return true // removing a learner (or nothing) changes no vote
	}
	after, _ := ApplyToState(sh, Step{Kind: StepRemoveReplica, Store: store})
	n := UpToDateVoters(after, alive, maxLag)
	return n >= minSafe && n >= len(voters(after))/2+1
}

func (p *planner) emit(op Operation) {
	p.ops = append(p.ops, op)
	p.busy[op.Shard] = true
}

// start begins a new operator with its first step. It starts nothing (and
// returns false) when the first step cannot be done now.
func (p *planner) start(sh ShardState, kind OperatorKind, reason string, steps []Step) bool {
	op := Operator{
		ID:    fmt.Sprintf("%d-s%03d-%s", p.now.UnixMilli(), sh.Shard, kind),
		Shard: sh.Shard, Kind: kind, Reason: reason, Steps: steps, Created: p.now, Updated: p.now,
	}
	first := steps[0]
	if ready, why := p.stepReady(op, sh, 0); why != "" || !ready {
		return false
	}
	if isRepairKind(kind) || kind == KindSpread {
		p.repairing = true
	}
	if kind != KindPlace {
		p.total++
		for _, st := range p.touched(steps) {
			p.perStore[st]++
		}
	}
	for _, s := range steps {
		switch s.Kind {
		case StepAddLearner:
			p.count[s.Store]++
		case StepRemoveReplica:
			p.count[s.Store]--
		case StepBootstrap:
			for _, st := range s.Stores {
				p.count[st]++
			}
		}
	}
	p.emit(Operation{Operator: op.ID, Shard: sh.Shard, Kind: kind, Step: 0, Action: first, New: &op, Reason: reason})
	return true
}

// removeOK: a replica on id may be removed now (per-store throttle; a
// dead store is not throttled).
func (p *planner) removeOK(id string) bool {
	return !p.alive(id) || p.perStore[id] < p.cfg.MaxOpsPerStore
}

// storeOK: can take a new replica of a shard now (per-store throttle).
func (p *planner) storeOK(id string) bool {
	return p.usable(id) && p.perStore[id] < p.cfg.MaxOpsPerStore
}

// bestTarget picks the store to add a replica of sh to: not hosting sh,
// usable, under its throttle; new region first, then new zone, then fewest
// replicas, then id. keep are the replicas that stay.
func (p *planner) bestTarget(sh ShardState, keep []string, throttle bool) (string, bool) {
	regions, zones := map[string]bool{}, map[string]bool{}
	for _, k := range keep {
		s := p.stores[k]
		regions[s.Region] = true
		zones[s.Region+"/"+s.Zone] = true
	}
	best := ""
	var bestKey [3]int
	for _, s := range p.state.Stores {
		if !p.usable(s.ID) || sh.hosts(s.ID) || (throttle && !p.storeOK(s.ID)) {
			continue
		}
		key := [3]int{b2i(regions[s.Region]), b2i(zones[s.Region+"/"+s.Zone]), p.count[s.ID]}
		if best == "" || less3(key, bestKey) || (key == bestKey && s.ID < best) {
			best, bestKey = s.ID, key
		}
	}
	return best, best != ""
}

func (s ShardState) hosts(store string) bool {
	_, ok := s.replica(store)
	return ok
}

func (s ShardState) stores() []string {
	out := make([]string, 0, len(s.Replicas))
	for _, r := range s.Replicas {
		out = append(out, r.Store)
	}
	return out
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func less3(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

func (p *planner) bootstrap(sh ShardState) {
	n := p.cfg.ReplicationFactor
	var chosen []string
	tmp := sh
	for range n {
		t, ok := p.bestTarget(tmp, chosen, false)
		if !ok {
			break
		}
		chosen = append(chosen, t)
		tmp.Replicas = append(tmp.Replicas, ReplicaState{Store: t})
		p.count[t]++ // spread the next shard
	}
	for _, t := range chosen {
		p.count[t]--
	}
	if len(chosen) == 0 {
		return
	}
	lead := ""
	for _, t := range chosen {
		if p.stores[t].Region == p.state.ActiveRegion && (lead == "" || p.leaders[t] < p.leaders[lead]) {
			lead = t
		}
	}
	if p.start(sh, KindPlace, fmt.Sprintf("initial placement on %d stores", len(chosen)),
		[]Step{{Kind: StepBootstrap, Stores: chosen, Store: lead}}) && lead != "" {
		p.leaders[lead]++
	}
}

// replace starts add learner → promote → remove old.
func (p *planner) replace(sh ShardState, old string, kind OperatorKind, reason string) bool {
	var keep []string
	for _, s := range sh.stores() {
		if s != old {
			keep = append(keep, s)
		}
	}
	if !p.removeOK(old) {
		return false
	}
	t, ok := p.bestTarget(sh, keep, true)
	if !ok {
		return false
	}
	return p.start(sh, kind, reason, []Step{
		{Kind: StepAddLearner, Store: t},
		{Kind: StepPromoteLearner, Store: t},
		{Kind: StepRemoveReplica, Store: old},
	})
}

func (p *planner) repair(sh ShardState) bool {
	// Stray learners: no operator adds them.
	for _, r := range sh.Replicas {
		if r.Role == clusterstate.RoleLearner && !p.owned[sh.Shard][r.Store] {
			if p.removeOK(r.Store) && p.start(sh, KindCleanup, "remove learner "+r.Store+" that no operator owns",
				[]Step{{Kind: StepRemoveReplica, Store: r.Store}}) {
				return true
			}
		}
	}
	vs := voters(sh)
	for _, r := range vs {
		if p.alive(r.Store) || !p.deadPastGrace(r.Store) {
			continue
		}
		reason := fmt.Sprintf("store %s down for more than %s", r.Store, p.cfg.DownGrace)
		if p.aliveVoters(sh) >= p.cfg.ReplicationFactor {
			if p.start(sh, KindRepair, reason+"; enough voters left", []Step{{Kind: StepRemoveReplica, Store: r.Store}}) {
				return true
			}
			continue
		}
		if p.replace(sh, r.Store, KindRepair, reason) {
			return true
		}
	}
	if len(vs) < p.cfg.ReplicationFactor {
		t, ok := p.bestTarget(sh, sh.stores(), true)
		if ok && p.start(sh, KindUpReplicate, fmt.Sprintf("%d of %d voters", len(vs), p.cfg.ReplicationFactor),
			[]Step{{Kind: StepAddLearner, Store: t}, {Kind: StepPromoteLearner, Store: t}}) {
			return true
		}
	}
	return false
}

func (p *planner) preferLeader(sh ShardState) bool {
	active := p.state.ActiveRegion
	if active == "" || sh.Leader == "" {
		return false
	}
	if p.stores[sh.Leader].Region == active && p.alive(sh.Leader) {
		// Led from the active region: make sure no preferred leader
		// elsewhere pulls leadership out again.
		if t := sh.TargetLeader; t != "" && t != sh.Leader && p.stores[t].Region != active {
			if r, ok := sh.replica(sh.Leader); ok && upToDate(r, p.alive, p.cfg.MaxPromoteLag) {
				return p.start(sh, KindLeader, "preferred leader "+t+" is outside the active region "+active,
					[]Step{{Kind: StepTransferLeader, Store: sh.Leader}})
			}
		}
		return false
	}
	best := ""
	for _, r := range sh.Replicas {
		st := p.stores[r.Store]
		if st.Region != active || st.Draining || !upToDate(r, p.alive, p.cfg.MaxPromoteLag) {
			continue
		}
		if r.Store == sh.TargetLeader {
			return false // already asked for; the shard's leader transfers
		}
		if best == "" || p.leaders[r.Store] < p.leaders[best] || p.leaders[r.Store] == p.leaders[best] && r.Store < best {
			best = r.Store
		}
	}
	if best == "" {
		return false
	}
	if !p.start(sh, KindLeader, fmt.Sprintf("leader %s is outside the active region %s", sh.Leader, active),
		[]Step{{Kind: StepTransferLeader, Store: best}}) {
		return false
	}
	p.leaders[best]++
	return true
}

func (p *planner) drain(sh ShardState) bool {
	for _, r := range sh.Replicas {
		st, ok := p.stores[r.Store]
		if !ok || !st.Alive || !st.Draining {
			continue
		}
		reason := "store " + r.Store + " is draining"
		if r.Role == clusterstate.RoleLearner || len(voters(sh)) > p.cfg.ReplicationFactor {
			if p.removeOK(r.Store) && p.start(sh, KindDrain, reason, []Step{{Kind: StepRemoveReplica, Store: r.Store}}) {
				return true
			}
			continue
		}
		if p.replace(sh, r.Store, KindDrain, reason) {
			return true
		}
	}
	return false
}

// shrink removes a voter from an over-replicated shard.
func (p *planner) shrink(sh ShardState) bool {
	vs := voters(sh)
	if len(vs) <= p.cfg.ReplicationFactor {
		return false
	}
	victim, bestKey := "", [3]int{}
	regions, zones := map[string]int{}, map[string]int{}
	for _, r := range vs {
		s := p.stores[r.Store]
		regions[s.Region]++
		zones[s.Region+"/"+s.Zone]++
	}
	for _, r := range vs {
		s := p.stores[r.Store]
		// Lower key = better victim.
		key := [3]int{b2i(p.alive(r.Store)), b2i(!s.Draining), -(regions[s.Region]*100 + zones[s.Region+"/"+s.Zone]*10)}
		if victim == "" || less3(key, bestKey) || key == bestKey && r.Store > victim {
			victim, bestKey = r.Store, key
		}
	}
	if !p.removeOK(victim) {
		return false
	}
	return p.start(sh, KindShrink, fmt.Sprintf("%d voters, want %d", len(vs), p.cfg.ReplicationFactor),
		[]Step{{Kind: StepRemoveReplica, Store: victim}})
}

// spread is a replica set's (distinct regions, distinct zones).
func (p *planner) spread(stores []string) [2]int {
	regions, zones := map[string]bool{}, map[string]bool{}
	for _, id := range stores {
		s := p.stores[id]
		regions[s.Region] = true
		zones[s.Region+"/"+s.Zone] = true
	}
	return [2]int{len(regions), len(zones)}
}

// spreadRepair starts a spread move (rule 6) for sh when its voters span
// fewer regions, or as many regions but fewer zones, than the usable
// stores allow. Only a healthy shard moves: every replica an up-to-date
// voter on a usable store (repair and drain own the others), so the move
// starts with RF up-to-date voters and its removal, gated by RemovalSafe,
// leaves RF.
func (p *planner) spreadRepair(sh ShardState) bool {
	vs := voters(sh)
	if len(vs) != len(sh.Replicas) || len(vs) != p.cfg.ReplicationFactor {
		return false
	}
	for _, r := range vs {
		if !p.usable(r.Store) || !upToDate(r, p.alive, p.cfg.MaxPromoteLag) {
			return false
		}
	}
	have := p.spread(sh.stores())
	want := [2]int{min(p.cfg.ReplicationFactor, p.avail[0]), min(p.cfg.ReplicationFactor, p.avail[1])}
	switch {
	case have[0] < want[0]:
		return p.spreadMove(sh, func(s StoreState) string { return s.Region }, "region", have[0], want[0])
	case have[1] < want[1]:
		return p.spreadMove(sh, func(s StoreState) string { return s.Region + "/" + s.Zone }, "zone", have[1], want[1])
	}
	return false
}

// spreadMove moves one voter of sh from a group (region or zone, as group
// says) holding two or more of its voters to the best store of a group
// holding none. Moving out of a doubled group and into a new one raises
// the group count by one and lowers no coarser spread: a doubled zone lies
// in a doubled region.
func (p *planner) spreadMove(sh ShardState, group func(StoreState) string, what string, have, want int) bool {
	held := map[string]int{}
	for _, id := range sh.stores() {
		held[group(p.stores[id])]++
	}
	// Best victim first: not the leader nor the preferred leader (no
	// leadership moves), then the fullest store, then the id.
	var victims []string
	for _, id := range sh.stores() {
		if held[group(p.stores[id])] >= 2 && p.removeOK(id) {
			victims = append(victims, id)
		}
	}
	key := func(id string) [3]int {
		return [3]int{b2i(id == sh.Leader), b2i(id == sh.TargetLeader), -p.count[id]}
	}
	sort.Slice(victims, func(i, j int) bool {
		a, b := key(victims[i]), key(victims[j])
		if a != b {
			return less3(a, b)
		}
		return victims[i] < victims[j]
	})
	for _, old := range victims {
		var keep []string
		for _, id := range sh.stores() {
			if id != old {
				keep = append(keep, id)
			}
		}
		// bestTarget ranks a store in a group the kept voters lack first.
		t, ok := p.bestTarget(sh, keep, true)
		if !ok || held[group(p.stores[t])] != 0 {
			continue
		}
		return p.start(sh, KindSpread, fmt.Sprintf("voters span %d %ss, the usable stores allow %d; moving %s out of its shared %s to %s",
			have, what, want, old, what, t), []Step{
			{Kind: StepAddLearner, Store: t},
			{Kind: StepPromoteLearner, Store: t},
			{Kind: StepRemoveReplica, Store: old},
		})
	}
	return false
}

func (p *planner) rebalance() {
	var ids []string
	for _, s := range p.state.Stores {
		if p.usable(s.ID) {
			ids = append(ids, s.ID)
		}
	}
	if len(ids) < 2 {
		return
	}
	for p.total < p.cfg.MaxOpsTotal {
		// Fullest sources first, emptiest targets first.
		src := slices.Clone(ids)
		sort.Slice(src, func(i, j int) bool {
			if p.count[src[i]] != p.count[src[j]] {
				return p.count[src[i]] > p.count[src[j]]
			}
			return src[i] < src[j]
		})
		dst := slices.Clone(src)
		slices.Reverse(dst)
		if p.count[src[0]]-p.count[dst[0]] <= p.cfg.RebalanceThreshold {
			return
		}
		moved := false
	search:
		for _, s := range src {
			for _, d := range dst {
				if p.count[s]-p.count[d] < 2 {
					break
				}
				if p.storeOK(s) && p.storeOK(d) && p.moveOne(s, d) {
					moved = true
					break search
				}
			}
		}
		if !moved {
			return
		}
	}
}

// moveOne starts a rebalance of one shard's replica from s to d.
// Shards that s does not lead go first (no leader transfer needed).
func (p *planner) moveOne(s, d string) bool {
	for pass := range 2 {
		if p.moveOneFrom(s, d, pass == 1) {
			return true
		}
	}
	return false
}

func (p *planner) moveOneFrom(s, d string, leaders bool) bool {
	for _, sh := range p.state.Shards {
		if p.busy[sh.Shard] || len(sh.Replicas) == 0 || sh.hosts(d) || p.hasDead(sh) || (sh.Leader == s) != leaders {
			continue
		}
		r, ok := sh.replica(s)
		if !ok || r.Role != clusterstate.RoleVoter {
			continue
		}
		old := sh.stores()
		var moved []string
		for _, x := range old {
			if x != s {
				moved = append(moved, x)
			}
		}
		moved = append(moved, d)
		a, b := p.spread(old), p.spread(moved)
		if b[0] < a[0] || b[0] == a[0] && b[1] < a[1] {
			continue
		}
		p.start(sh, KindRebalance, fmt.Sprintf("store %s holds %d replicas, %s %d", s, p.count[s], d, p.count[d]), []Step{
			{Kind: StepAddLearner, Store: d},
			{Kind: StepPromoteLearner, Store: d},
			{Kind: StepRemoveReplica, Store: s},
		})
		return true
	}
	return false
}

// advance continues, or cancels, one in-flight operator.
func (p *planner) advance(op Operator) {
	sh, ok := p.shards[op.Shard]
	i := op.Next()
	cancel := func(why string) {
		var rollback Step
		for _, s := range op.Steps[:i] {
			if s.Kind == StepAddLearner {
				if r, ok := sh.replica(s.Store); ok && r.Role == clusterstate.RoleLearner {
					rollback = Step{Kind: StepRemoveReplica, Store: s.Store}
				}
			}
		}
		p.emit(Operation{Operator: op.ID, Shard: op.Shard, Kind: op.Kind, Step: -1, Action: rollback, Cancel: true, Reason: why})
	}
	switch {
	case !ok:
		cancel("shard not in the shard map")
		return
	case i == len(op.Steps):
		p.emit(Operation{Operator: op.ID, Shard: op.Shard, Kind: op.Kind, Step: -1, Cancel: true, Reason: "all steps done"})
		return
	case !op.Updated.IsZero() && p.now.Sub(op.Updated) > p.cfg.OperatorTimeout:
		cancel(fmt.Sprintf("no progress for %s", p.cfg.OperatorTimeout))
		return
	}
	ready, why := p.stepReady(op, sh, i)
	if why != "" {
		cancel(why)
		return
	}
	if !ready {
		return
	}
	p.emit(Operation{Operator: op.ID, Shard: op.Shard, Kind: op.Kind, Step: i, Action: op.Steps[i], Reason: op.Reason})
}

// prevConfirmed: every promotion the operator did is applied by Raft (the
// replica reports itself a caught-up voter).
func (p *planner) prevConfirmed(op Operator, sh ShardState, i int) bool {
	for _, s := range op.Steps[:i] {
		if s.Kind != StepPromoteLearner {
			continue
		}
		r, ok := sh.replica(s.Store)
		if !ok || !upToDate(r, p.alive, p.cfg.MaxPromoteLag) {
			return false
		}
	}
	return true
}

// stepReady says whether step i can be done now; a non-empty reason means
// the operator cannot finish and must be cancelled.
func (p *planner) stepReady(op Operator, sh ShardState, i int) (bool, string) {
	s := op.Steps[i]
	switch s.Kind {
	case StepBootstrap:
		if len(sh.Replicas) > 0 {
			return false, "shard already placed"
		}
		return true, ""
	case StepAddLearner:
		if !p.usable(s.Store) {
			return false, "target store " + s.Store + " is gone or draining"
		}
		return !p.quorumLost(sh), ""
	case StepPromoteLearner:
		r, ok := sh.replica(s.Store)
		if !ok {
			return false, "learner " + s.Store + " is no longer in the shard map"
		}
		if !p.alive(s.Store) {
			return false, "target store " + s.Store + " is gone"
		}
		if r.Role == clusterstate.RoleVoter {
			return true, ""
		}
		caught := r.Reported && r.Lag >= 0 && r.Lag <= p.cfg.MaxPromoteLag
		return caught && !p.quorumLost(sh), ""
	case StepRemoveReplica:
		if !sh.hosts(s.Store) {
			return true, ""
		}
		if p.alive(s.Store) {
			// A move whose new replica died cannot finish: removing the
			// live old one would only lose a second replica, and waiting
			// for OperatorTimeout would hold the shard's repair that long.
			for _, prev := range op.Steps[:i] {
				if prev.Kind == StepPromoteLearner && !p.alive(prev.Store) {
					return false, "promoted store " + prev.Store + " is gone; " + s.Store + " stays"
				}
			}
		}
		if !p.prevConfirmed(op, sh, i) {
			return false, ""
		}
		return RemovalSafe(sh, s.Store, p.alive, p.cfg.MaxPromoteLag, p.cfg.minSafeVoters()), ""
	case StepTransferLeader:
		r, ok := sh.replica(s.Store)
		if !ok || r.Role != clusterstate.RoleVoter || !p.alive(s.Store) {
			return false, "new leader " + s.Store + " is not a live voter"
		}
		return true, ""
	}
	return false, "unknown step " + string(s.Kind)
}

// Record is the operator's record after op: cur (or op.New) with the step
// marked done at now, or nil when the operator is finished or cancelled
// and its ops/ key is to be deleted. It does not modify cur.
func (op Operation) Record(cur *Operator, now time.Time) *Operator {
	var rec Operator
	switch {
	case op.New != nil:
		rec = *op.New
	case cur != nil:
		rec = *cur
	default:
		return nil
	}
	if op.Cancel {
		return nil
	}
	rec.Steps = slices.Clone(rec.Steps)
	if op.Step >= 0 && op.Step < len(rec.Steps) && !rec.Steps[op.Step].Done {
		rec.Steps[op.Step].Done = true
		rec.Steps[op.Step].DoneAt = now
		rec.Updated = now
	}
	if rec.Next() == len(rec.Steps) {
		return nil
	}
	return &rec
}

// ApplyReplicas applies a step to a replica list and preferred leader. It
// is idempotent: a step already in effect changes nothing (changed false).
// Only replica changes count as changed for the conf epoch; a preferred
// leader change is reported by leaderChanged.
func ApplyReplicas(reps []clusterstate.Replica, target string, a Step) (out []clusterstate.Replica, newTarget string, changed, leaderChanged bool) {
	out = slices.Clone(reps)
	newTarget = target
	idx := slices.IndexFunc(out, func(r clusterstate.Replica) bool { return r.Store == a.Store })
	switch a.Kind {
	case StepBootstrap:
		if len(out) == 0 && len(a.Stores) > 0 {
			for _, s := range a.Stores {
				out = append(out, clusterstate.Replica{Store: s, Role: clusterstate.RoleVoter})
			}
			changed = true
			if a.Store != "" {
				newTarget = a.Store
			}
		}
	case StepAddLearner:
		if idx < 0 {
			out = append(out, clusterstate.Replica{Store: a.Store, Role: clusterstate.RoleLearner})
			changed = true
		}
	case StepPromoteLearner:
		if idx >= 0 && out[idx].Role != clusterstate.RoleVoter {
			out[idx].Role = clusterstate.RoleVoter
			changed = true
		}
	case StepRemoveReplica:
		if idx >= 0 {
			out = slices.Delete(out, idx, idx+1)
			changed = true
		}
		if newTarget == a.Store {
			newTarget = ""
		}
	case StepTransferLeader:
		if idx >= 0 {
			newTarget = a.Store
		}
	}
	return out, newTarget, changed, newTarget != target
}

// ApplyToState applies a step to a ShardState (progress of kept replicas
// kept; a new learner starts unreported), bumping ConfEpoch on a replica
// change.
func ApplyToState(sh ShardState, a Step) (ShardState, bool) {
	reps := make([]clusterstate.Replica, len(sh.Replicas))
	for i, r := range sh.Replicas {
		reps[i] = clusterstate.Replica{Store: r.Store, Role: r.Role}
	}
	out, target, changed, lc := ApplyReplicas(reps, sh.TargetLeader, a)
	if !changed && !lc {
		return sh, false
	}
	next := sh
	next.TargetLeader = target
	next.Replicas = make([]ReplicaState, 0, len(out))
	for _, r := range out {
		old, ok := sh.replica(r.Store)
		if !ok {
			old = ReplicaState{Store: r.Store, Lag: -1}
		}
		old.Role = r.Role
		next.Replicas = append(next.Replicas, old)
	}
	if changed {
		next.ConfEpoch++
	}
	return next, true
}
