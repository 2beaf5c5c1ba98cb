package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/etcdwatch"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ReplicaStatus is the value of <prefix>status/shards/<nnn>/<store>. The
// shard's leader writes it for every member of the group, under the
// leader's own membership lease (so a dead leader's reports vanish until
// the next leader writes them), when a field changes and periodically:
//
//		{"role":"learner","applied_index":1042,"match_lag":17,"leader":"store-b",
//		 "term":7,"active":true,"replica_id":4294967297}
//
//	  - role: the member's role in the leader's applied Raft configuration:
//	    "leader", "voter" or "learner" ("leader" counts as a voter here).
//	  - applied_index: the leader's own applied index for itself; for a
//	    follower, how far its log matches the leader's (durable on it).
//	  - match_lag: commit index − that match (0 on the leader; -1 unknown).
//	    The control plane takes lag = max(match_lag, leader's
//	    applied_index − applied_index).
//	  - leader: the store id this replica believes leads the shard ("" none).
//	  - term: the Raft term of that belief; the report with the highest term
//	    decides who leads.
//	  - conf_epoch: the shard map conf_epoch the replica's configuration
//	    matches (optional; informational).
//	  - replica_id: the Raft id of the replica reported on; a report on
//	    another incarnation of the store's replica than the map lists (the
//	    key is per store, and a removed replica's report may linger) is
//	    ignored.
//	  - updated_at: when written (optional; informational).
//
// The planner promotes a learner once its lag is at most MaxPromoteLag,
// and removes a replica only once the replicas that replace it report
// themselves caught-up voters.
type ReplicaStatus struct {
	Role         string    `json:"role"`
	AppliedIndex uint64    `json:"applied_index"`
	MatchLag     int64     `json:"match_lag"`
	Leader       string    `json:"leader"`
	Term         uint64    `json:"term"`
	ConfEpoch    uint64    `json:"conf_epoch,omitempty"`
	UpdatedAt    time.Time `json:"updated_at,omitzero"`
	ReplicaID    uint64    `json:"replica_id,omitempty"`
}

// decodeStatuses parses status keys: shard → store → status.
func decodeStatuses(prefix string, kvs map[string][]byte) map[int]map[string]ReplicaStatus {
	out := map[int]map[string]ReplicaStatus{}
	for k, v := range kvs {
		n, store, ok := ParseStatusKey(prefix, k)
		if !ok {
			continue
		}
		var s ReplicaStatus
		if json.Unmarshal(v, &s) != nil {
			continue
		}
		// Store nodes report the shard's leader with role "leader"; in the
		// applied configuration it is a voter.
		if s.Role == "leader" {
			s.Role = clusterstate.RoleVoter
		}
		if out[n] == nil {
			out[n] = map[string]ReplicaStatus{}
		}
		out[n][store] = s
	}
	return out
}

// decodeShardDocs parses the shard map (with target_leader).
// unplaced reports whether a shard has no replica yet (initial placement
// has work to do).
func unplaced(docs []ShardDoc) bool {
	for _, d := range docs {
		if len(d.Shard.Replicas) == 0 {
			return true
		}
	}
	return false
}

func decodeShardDocs(prefix string, shardCount int, kvs map[string][]byte) []ShardDoc {
	out := make([]ShardDoc, shardCount)
	for i := range out {
		out[i].Shard.Shard = i
	}
	for k, v := range kvs {
		n, err := clusterstate.ParseShardKey(prefix, k)
		if err != nil || n < 0 || n >= shardCount {
			continue
		}
		var d ShardDoc
		if json.Unmarshal(v, &d) == nil {
			d.Shard.Shard = n
			out[n] = d
		}
	}
	return out
}

func decodeOps(kvs map[string][]byte) map[string]Operator {
	out := map[string]Operator{}
	for _, v := range kvs {
		var o Operator
		if json.Unmarshal(v, &o) == nil && o.ID != "" {
			out[o.ID] = o
		}
	}
	return out
}

func decodeRegions(prefix string, kvs map[string][]byte) []RegionDoc {
	var out []RegionDoc
	for k, v := range kvs {
		var d RegionDoc
		if json.Unmarshal(v, &d) == nil {
			d.Name = k[len(RegionsPrefix(prefix)):]
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// shardState joins a shard map entry with its replicas' reports.
func shardState(d ShardDoc, st map[string]ReplicaStatus) ShardState {
	s := ShardState{Shard: d.Shard.Shard, Leader: d.Leader, TargetLeader: d.TargetLeader, ConfEpoch: d.ConfEpoch}
	// The leader is the one named by the report with the highest term,
	// among this shard's replicas.
	var term uint64
	found := false
	for _, r := range d.Replicas {
		if rs, ok := st[r.Store]; ok && rs.Leader != "" && d.Hosts(rs.Leader) && (!found || rs.Term > term) {
			s.Leader, term, found = rs.Leader, rs.Term, true
		}
	}
	leaderApplied, leaderKnown := uint64(0), false
	if ls, ok := st[s.Leader]; ok && ls.Leader == s.Leader {
		leaderApplied, leaderKnown = ls.AppliedIndex, true
	}
	for _, r := range d.Replicas {
		rs := ReplicaState{Store: r.Store, Role: r.Role, Lag: -1}
		if rep, ok := st[r.Store]; ok && (rep.ReplicaID == 0 || r.ID == 0 || rep.ReplicaID == r.ID) {
			rs.Reported, rs.ReportedRole, rs.Lag = true, rep.Role, rep.MatchLag
			if rep.AppliedIndex == 0 && r.Store != s.Leader {
				// Nothing replicated to it yet (a new learner waiting for
				// its snapshot): its lag is commit − 0, small on a young
				// shard, yet it holds no data and must not be promoted.
				rs.Lag = -1
			} else if leaderKnown {
				behind := int64(0)
				if leaderApplied > rep.AppliedIndex {
					behind = int64(leaderApplied - rep.AppliedIndex)
				}
				if rep.MatchLag >= 0 || r.Store == s.Leader {
					rs.Lag = max(rep.MatchLag, behind)
				}
			}
		}
		if rs.Role == "" {
			rs.Role = clusterstate.RoleVoter
		}
		s.Replicas = append(s.Replicas, rs)
	}
	return s
}

// storeTracker remembers stores across passes, so a store that vanished
// has a DownSince. A new leader sees stores that are already gone as gone
// since it took over (the grace period starts again).
type storeTracker struct {
	known map[string]StoreState
}

func (t *storeTracker) update(members []membership.Member, docs []ShardDoc, ops map[string]Operator, now time.Time, forget time.Duration) []StoreState {
	if t.known == nil {
		t.known = map[string]StoreState{}
	}
	alive := map[string]bool{}
	for _, m := range members {
		alive[m.ID] = true
		t.known[m.ID] = StoreState{ID: m.ID, Region: m.Region, Zone: m.Zone, Alive: true, Draining: m.Draining}
	}
	used := map[string]bool{}
	for _, d := range docs {
		for _, r := range d.Replicas {
			used[r.Store] = true
		}
	}
	for _, o := range ops {
		for _, s := range o.Steps {
			used[s.Store] = true
		}
	}
	for id := range used {
		if _, ok := t.known[id]; !ok && id != "" {
			t.known[id] = StoreState{ID: id, DownSince: now}
		}
	}
	for id, s := range t.known {
		if alive[id] {
			continue
		}
		if s.Alive {
			s.Alive, s.DownSince = false, now
			t.known[id] = s
		}
		if !used[id] && now.Sub(s.DownSince) > forget {
			delete(t.known, id)
		}
	}
	out := make([]StoreState, 0, len(t.known))
	for _, s := range t.known {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// raftPlacementLoop is placement in raft mode: level-triggered on the
// store members, shard map, operators, replica status and regions, plus a
// tick for time-based rules (grace periods, timeouts). Each pass runs the
// planner and carries out its operations, each in one fenced Txn that
// changes the shard map entry (bumping conf_epoch when the replica set
// changes) and records the operator's progress in ops/<id>. It returns
// only ErrNotLeader or ctx's error.
func (cp *ControlPlane) raftPlacementLoop(ctx context.Context, lead leadership, cc clusterstate.ClusterConfig) error {
	prefix := cp.cfg.Common.Prefix
	const (
		wStores = iota
		wShards
		wOps
		wStatus
		wRegions
		wAdmin
		nWatch
	)
	prefixes := [nWatch]string{
		membership.RolePrefix(prefix, membership.RoleStore), clusterstate.ShardsPrefix(prefix),
		OpsPrefix(prefix), StatusPrefix(prefix), RegionsPrefix(prefix), AdminPrefix(prefix),
	}
	var chans [nWatch]chan etcdwatch.Snapshot
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{}, nWatch)
	opts := etcdwatch.Options{OnError: func(err error) { cp.log.WithError(err).Warn("placement: etcd watch failed; listing again") }}
	for i := range chans {
		chans[i] = make(chan etcdwatch.Snapshot, 1)
		go func() {
			_ = etcdwatch.Run(wctx, cp.cli, prefixes[i], opts, latest(chans[i]))
			done <- struct{}{}
		}()
	}
	defer func() {
		cancel()
		for range nWatch {
			<-done
		}
	}()

	var snaps [nWatch]*etcdwatch.Snapshot
	var need [nWatch]int64 // a pass waits until each snapshot shows our writes
	var tracker storeTracker
	var firstStore time.Time
	waitingLogged := false // "waiting for regions", once per wait
	lastPause := ""
	tick := time.NewTicker(cp.cfg.PlannerTick)
	defer tick.Stop()
	pcfg := cp.cfg.Planner
	pcfg.ReplicationFactor = cc.ReplicationFactor
	log := cp.log.WithField("term", lead.rev)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case s := <-chans[wStores]:
			snaps[wStores] = &s
		case s := <-chans[wShards]:
			snaps[wShards] = &s
		case s := <-chans[wOps]:
			snaps[wOps] = &s
		case s := <-chans[wStatus]:
			snaps[wStatus] = &s
		case s := <-chans[wRegions]:
			snaps[wRegions] = &s
		case s := <-chans[wAdmin]:
			snaps[wAdmin] = &s
		case <-tick.C:
		}
		ready := true
		for i, s := range snaps {
			if s == nil || s.Revision < need[i] {
				ready = false
			}
		}
		if !ready {
			continue
		}
		now := time.Now()
		members := usable(membership.FromKVs(snaps[wStores].KVs))
		if len(members) == 0 {
			firstStore = time.Time{}
		} else if firstStore.IsZero() {
			firstStore = now
		}
		docs := decodeShardDocs(prefix, cc.ShardCount, snaps[wShards].KVs)
		ops := decodeOps(snaps[wOps].KVs)
		statuses := decodeStatuses(prefix, snaps[wStatus].KVs)
		all := membership.FromKVs(snaps[wStores].KVs)
		regions := decodeRegions(prefix, snaps[wRegions].KVs)
		state := ClusterState{
			Stores:           tracker.update(all, docs, ops, now, 2*max(pcfg.DownGrace, pcfg.MassExpiryWindow, time.Minute)),
			BootstrapAllowed: cp.bootstrapReady(members, all, regions, cc.ReplicationFactor, firstStore, now),
		}
		if !state.BootstrapAllowed && len(members) > 0 && unplaced(docs) {
			if !waitingLogged {
				cp.log.WithFields(map[string]any{"stores": len(members), "store_regions": distinctRegions(members),
					"settle": cp.cfg.PlacementSettle.String()}).
					Info("placement: waiting for store nodes in more regions before placing shards (a region without store nodes delays it up to --placement-settle)")
				waitingLogged = true
			}
		} else {
			waitingLogged = false
		}
		for _, d := range regions {
			if d.State == RegionActive {
				state.ActiveRegion = d.Name
			}
		}
		if len(regions) == 0 {
			// Not registered yet: the region loop will make this
			// instance's region active (see ensureRegions).
			state.ActiveRegion = cp.cfg.Common.Region
		}
		for _, d := range docs {
			state.Shards = append(state.Shards, shardState(d, statuses[d.Shard.Shard]))
		}
		for _, o := range ops {
			state.InFlight = append(state.InFlight, o)
		}
		admin := decodeAdmin(prefix, snaps[wAdmin].KVs)
		applyDrains(state.Stores, admin.drained)
		res := PlanDetailed(state, pcfg, now)
		if admin.placement.Paused && !res.Paused {
			// An operator's pause: plan and report, act on nothing.
			res.Paused, res.PauseReason, res.Ops = true, "paused by an operator: "+admin.placement.Reason, nil
		}
		cp.metrics.underReplicated.Set(float64(res.UnderReplicated))
		cp.metrics.opsInFlight.Set(float64(len(ops)))
		cp.metrics.placementPaused.Set(float64(b2i(res.Paused)))
		if res.PauseReason != lastPause {
			if res.Paused {
				log.WithField("alert", "placement_paused").Error("placement: " + res.PauseReason)
			} else {
				log.Info("placement: resumed")
			}
			lastPause = res.PauseReason
		}
		for _, op := range res.Ops {
			rev, touched, err := cp.execute(ctx, lead, op, docs, ops, snaps[wShards].Revision, snaps[wOps].Revision, now)
			if err != nil {
				if errors.Is(err, ErrNotLeader) || ctx.Err() != nil {
					return err
				}
				log.WithError(err).Warn("placement: carrying out an operation failed; will retry on the next pass")
				continue
			}
			if rev > 0 {
				if touched[0] {
					need[wShards] = max(need[wShards], rev)
				}
				if touched[1] {
					need[wOps] = max(need[wOps], rev)
				}
				log.WithFields(logrus.Fields{"shard": op.Shard, "operator": op.Operator, "kind": op.Kind, "step": op.Action.Kind,
					"store": op.Action.Store, "cancel": op.Cancel, "reason": op.Reason}).Info("placement: step done")
				if op.Action.Kind == StepBootstrap {
					cp.metrics.shardsPlaced.Inc()
				}
			}
		}
	}
}

// execute carries out one operation in one fenced Txn. It returns the
// revision written (0 when nothing was written: no change, or a guard
// failed because the shard or operator changed since the snapshot) and
// which of shards/ and ops/ it touched.
func (cp *ControlPlane) execute(ctx context.Context, lead leadership, op Operation, docs []ShardDoc, ops map[string]Operator,
	shardsRev, opsRev int64, now time.Time) (int64, [2]bool, error) {
	prefix := cp.cfg.Common.Prefix
	var touched [2]bool
	var guard []clientv3.Cmp
	var puts []clientv3.Op
	if op.Shard < 0 || op.Shard >= len(docs) {
		return 0, touched, nil
	}
	doc := docs[op.Shard]
	reps, target, changed, leaderChanged := ApplyReplicas(doc.Replicas, doc.TargetLeader, op.Action)
	if changed || leaderChanged {
		nd := doc
		nd.Replicas, nd.TargetLeader = reps, target
		if changed {
			nd.ConfEpoch++
			assignReplicaIDs(nd.Replicas, nd.ConfEpoch)
		}
		val, err := json.Marshal(nd)
		if err != nil {
			return 0, touched, err
		}
		key := clusterstate.ShardKey(prefix, op.Shard)
		guard = append(guard, clientv3.Compare(clientv3.ModRevision(key), "<", shardsRev+1))
		puts = append(puts, clientv3.OpPut(key, string(val)))
		touched[0] = true
	}
	key := OpKey(prefix, op.Operator)
	var cur *Operator
	if o, ok := ops[op.Operator]; ok {
		cur = &o
	}
	rec := op.Record(cur, now.UTC())
	switch {
	case op.New != nil:
		guard = append(guard, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
	default:
		guard = append(guard, clientv3.Compare(clientv3.ModRevision(key), "<", opsRev+1))
	}
	switch {
	case rec == nil && cur != nil:
		puts = append(puts, clientv3.OpDelete(key))
		touched[1] = true
	case rec != nil:
		if cur == nil || !sameOperator(*cur, *rec) {
			val, err := json.Marshal(rec)
			if err != nil {
				return 0, touched, err
			}
			puts = append(puts, clientv3.OpPut(key, string(val)))
			touched[1] = true
		}
	}
	if len(puts) == 0 {
		return 0, touched, nil
	}
	ok, rev, err := lead.txnRev(ctx, guard, puts, nil)
	if err != nil || !ok {
		return 0, touched, err
	}
	return rev, touched, nil
}

func sameOperator(a, b Operator) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// assignReplicaIDs gives every replica that has no Raft id yet the id of
// its incarnation: the conf epoch at which it joined the shard (so initial
// replicas get incarnation 1, and a store that leaves and rejoins gets a
// new id). It changes reps in place.
func assignReplicaIDs(reps []clusterstate.Replica, epoch uint64) {
	for i := range reps {
		if reps[i].ID == 0 {
			reps[i].ID = clusterstate.ReplicaID(reps[i].Store, epoch)
		}
	}
}
