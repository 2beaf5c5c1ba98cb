package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/etcdwatch"
	"github.com/erlmcp/erlmcp/internal/membership"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// PlaceInitial returns the placement of every shard in shards that has no
// replica yet: one voter on store ids[shard % n], where ids are the ids of
// stores (draining ones left out) sorted. Shards that already have
// replicas are never moved and are not returned. It returns nil when there
// is no store to place on. The input is not modified.
//
// This first version places one replica per shard, because the store is
// single-replica until it becomes Raft-replicated.
func PlaceInitial(shards []clusterstate.Shard, stores []membership.Member) []clusterstate.Shard {
	ids := make([]string, 0, len(stores))
	seen := map[string]bool{}
	for _, m := range stores {
		if m.Draining || m.ID == "" || seen[m.ID] {
			continue
		}
		seen[m.ID] = true
		ids = append(ids, m.ID)
	}
	if len(ids) == 0 {
		return nil
	}
	sort.Strings(ids)
	var out []clusterstate.Shard
	for _, s := range shards {
		if len(s.Replicas) > 0 {
			continue
		}
		out = append(out, clusterstate.Shard{
			Shard:     s.Shard,
			Replicas:  []clusterstate.Replica{{Store: ids[s.Shard%len(ids)], Role: clusterstate.RoleVoter}},
			ConfEpoch: s.ConfEpoch + 1,
		})
	}
	return out
}

// placementReady says whether initial placement may run: once the nStores
// usable stores number min(rf, 3) and the storeRegions regions they span
// are at least wantRegions (see placementRegions), or once settle has
// passed since the first store was seen (firstStore zero: none seen yet).
// Placement made early is not wrong, only badly spread until the planner's
// spread rule moves it, so the wait is bounded; but placing while one
// region's stores have not registered yet gives many shards two voters in
// one region, which then lose quorum with that region until every one of
// them has been moved.
func placementReady(nStores, storeRegions, wantRegions, rf int, firstStore, now time.Time, settle time.Duration) bool {
	if nStores == 0 {
		return false
	}
	if nStores >= max(1, min(rf, 3)) && storeRegions >= wantRegions {
		return true
	}
	return !firstStore.IsZero() && now.Sub(firstStore) >= settle
}

// placementRegions is how many regions the usable stores must span before
// initial placement runs without waiting for the settle time:
// min(rf, clusterRegions) when the cluster's region count is known
// (clusterRegions > 0), else rf, because stores seen in fewer regions may
// only be the first to register.
func placementRegions(rf, clusterRegions int) int {
	if clusterRegions <= 0 {
		return max(1, rf)
	}
	return max(1, min(rf, clusterRegions))
}

// clusterRegionCount is how many regions the cluster has, as the control
// plane knows them: the registered regions (regions/, written by the
// region loop for every region a member names) that have not failed, and
// the regions of registered stores. A region none of whose members
// answers is failed by the detector, so one where nothing runs yet is not
// waited for. It is 0, unknown, until the region loop has registered any:
// the stores alone do not say which regions are still to come.
func clusterRegionCount(regions []RegionDoc, stores []membership.Member) int {
	if len(regions) == 0 {
		return 0
	}
	names := map[string]bool{}
	for _, d := range regions {
		if d.State != RegionFailed {
			names[d.Name] = true
		}
	}
	for _, m := range stores {
		names[m.Region] = true
	}
	return len(names)
}

// distinctRegions counts the regions stores are in.
func distinctRegions(stores []membership.Member) int {
	names := map[string]bool{}
	for _, m := range stores {
		names[m.Region] = true
	}
	return len(names)
}

// bootstrapReady is placementReady for raft mode, where a shard's voters
// must span regions: usable are the usable store members, all every
// registered store (draining ones name regions too), regions the region
// docs.
func (cp *ControlPlane) bootstrapReady(usable, all []membership.Member, regions []RegionDoc, rf int, firstStore, now time.Time) bool {
	want := placementRegions(rf, clusterRegionCount(regions, all))
	return placementReady(len(usable), distinctRegions(usable), want, rf, firstStore, now, cp.cfg.PlacementSettle)
}

// shardsPerTxn keeps a placement Txn within maxTxnOps: the fence and the
// inner txn at the outer level, one guard and one put per shard inside.
const shardsPerTxn = (maxTxnOps - 2) / 2

// writePlacement writes shards in batches, each fenced on lead and guarded
// so that a shard key changed since snapshot revision rev is not
// overwritten. It returns how many shards were written; a batch whose
// guard failed is skipped (the next snapshot shows why).
func (cp *ControlPlane) writePlacement(ctx context.Context, lead leadership, rev int64, shards []clusterstate.Shard) (int, error) {
	written := 0
	for start := 0; start < len(shards); start += shardsPerTxn {
		batch := shards[start:min(start+shardsPerTxn, len(shards))]
		var guard []clientv3.Cmp
		var puts []clientv3.Op
		for _, s := range batch {
			key := clusterstate.ShardKey(cp.cfg.Common.Prefix, s.Shard)
			val, err := json.Marshal(s)
			if err != nil {
				return written, err
			}
			guard = append(guard, clientv3.Compare(clientv3.ModRevision(key), "<", rev+1))
			puts = append(puts, clientv3.OpPut(key, string(val)))
		}
		ok, _, err := lead.txn(ctx, guard, puts, nil)
		if err != nil {
			return written, err
		}
		if !ok {
			cp.log.WithField("first_shard", batch[0].Shard).Info("placement: shard map changed since it was read; waiting for the new state")
			continue
		}
		written += len(batch)
		cp.metrics.shardsPlaced.Add(float64(len(batch)))
	}
	return written, nil
}

// latest keeps only the newest snapshot of a prefix for the reconcile loop.
func latest(ch chan etcdwatch.Snapshot) func(etcdwatch.Snapshot) {
	return func(s etcdwatch.Snapshot) {
		for {
			select {
			case ch <- s:
				return
			default:
			}
			select {
			case <-ch:
			default:
			}
		}
	}
}

// placementLoop is level-triggered: it watches the store members and the
// shard map and places every shard that has no replica, until ctx ends or
// the leadership is lost (ErrNotLeader).
func (cp *ControlPlane) placementLoop(ctx context.Context, lead leadership, cc clusterstate.ClusterConfig) error {
	prefix := cp.cfg.Common.Prefix
	storesCh := make(chan etcdwatch.Snapshot, 1)
	shardsCh := make(chan etcdwatch.Snapshot, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts := etcdwatch.Options{OnError: func(err error) { cp.log.WithError(err).Warn("placement: etcd watch failed; listing again") }}
	done := make(chan struct{}, 2)
	go func() {
		_ = etcdwatch.Run(wctx, cp.cli, membership.RolePrefix(prefix, membership.RoleStore), opts, latest(storesCh))
		done <- struct{}{}
	}()
	go func() {
		_ = etcdwatch.Run(wctx, cp.cli, clusterstate.ShardsPrefix(prefix), opts, latest(shardsCh))
		done <- struct{}{}
	}()
	defer func() { cancel(); <-done; <-done }()

	var stores, shards *etcdwatch.Snapshot
	var firstStore time.Time
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	waitingLogged := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case s := <-storesCh:
			stores = &s
		case s := <-shardsCh:
			shards = &s
		case <-settle.C:
		}
		if stores == nil || shards == nil {
			continue
		}
		members := usable(membership.FromKVs(stores.KVs))
		if len(members) == 0 {
			firstStore = time.Time{}
			settle.Stop()
		} else if firstStore.IsZero() {
			firstStore = time.Now()
			settle.Reset(cp.cfg.PlacementSettle)
		}
		if err := cp.reconcilePlacement(ctx, lead, cc, *shards, members, firstStore, &waitingLogged); err != nil {
			return err
		}
		cp.placementStores.Store(int64(len(members)))
	}
}

// reconcilePlacement is one level-triggered pass: place what has no
// replica if enough stores are there. It returns only ErrNotLeader or a
// ctx error; other failures are logged and retried on the next pass.
func (cp *ControlPlane) reconcilePlacement(ctx context.Context, lead leadership, cc clusterstate.ClusterConfig, shards etcdwatch.Snapshot,
	members []membership.Member, firstStore time.Time, waitingLogged *bool) error {
	current := clusterstate.DecodeShards(cp.cfg.Common.Prefix, cc.ShardCount, shards.KVs)
	todo := PlaceInitial(current, members)
	if len(todo) == 0 {
		return nil
	}
	// Single mode places one replica per shard: there is no spread over
	// regions to wait for.
	if !placementReady(len(members), 1, 1, cc.ReplicationFactor, firstStore, time.Now(), cp.cfg.PlacementSettle) {
		if !*waitingLogged {
			cp.log.WithFields(map[string]any{"stores": len(members), "want": max(1, min(cc.ReplicationFactor, 3)), "settle": cp.cfg.PlacementSettle.String()}).
				Info("placement: waiting for more store nodes before placing shards")
			*waitingLogged = true
		}
		return nil
	}
	n, err := cp.writePlacement(ctx, lead, shards.Revision, todo)
	if err != nil {
		if errors.Is(err, ErrNotLeader) || ctx.Err() != nil {
			return err
		}
		cp.log.WithError(err).Warn("placement: writing the shard map failed; will retry on the next change or resync")
		return nil
	}
	if n > 0 {
		cp.log.WithFields(map[string]any{"shards": n, "stores": len(members)}).Info("placement: placed shards")
	}
	return nil
}

// usable drops draining stores.
func usable(ms []membership.Member) []membership.Member {
	out := ms[:0:0]
	for _, m := range ms {
		if !m.Draining {
			out = append(out, m)
		}
	}
	return out
}

// ensureCluster creates config/cluster if it is absent (fenced and
// create-if-absent in one Txn) and returns the cluster's config, the
// existing one when there is one.
func (cp *ControlPlane) ensureCluster(ctx context.Context, lead leadership) (clusterstate.ClusterConfig, error) {
	key := clusterstate.ConfigKey(cp.cfg.Common.Prefix)
	want := clusterstate.ClusterConfig{
		ShardCount:        cp.cfg.ShardCount,
		ReplicationFactor: cp.cfg.ReplicationFactor,
		CreatedAt:         time.Now().UTC(),
	}
	val, err := json.Marshal(want)
	if err != nil {
		return want, err
	}
	created, resp, err := lead.txn(ctx,
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
		[]clientv3.Op{clientv3.OpPut(key, string(val))},
		[]clientv3.Op{clientv3.OpGet(key)})
	if err != nil {
		return want, err
	}
	if created {
		cp.log.WithFields(map[string]any{"shard_count": want.ShardCount, "replication_factor": want.ReplicationFactor}).Info("created the cluster")
		return want, nil
	}
	rr := resp.Responses[0].GetResponseRange()
	if rr == nil || len(rr.Kvs) == 0 {
		return want, fmt.Errorf("%s: etcd said it exists but returned no value", key)
	}
	var have clusterstate.ClusterConfig
	if err := json.Unmarshal(rr.Kvs[0].Value, &have); err != nil {
		return have, fmt.Errorf("%s holds a value that is not a cluster config (fix or delete it with etcdctl): %v", key, err)
	}
	if err := have.Validate(); err != nil {
		return have, fmt.Errorf("%s is invalid (fix or delete it with etcdctl): %v", key, err)
	}
	if have.ShardCount != want.ShardCount || have.ReplicationFactor != want.ReplicationFactor {
		cp.log.WithFields(map[string]any{
			"cluster_shard_count": have.ShardCount, "flag_shard_count": want.ShardCount,
			"cluster_replication_factor": have.ReplicationFactor, "flag_replication_factor": want.ReplicationFactor,
		}).Warn("the cluster exists with other settings than this instance's flags; keeping the cluster's (they are fixed at creation)")
	}
	return have, nil
}
