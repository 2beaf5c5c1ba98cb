package sessionstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
	"github.com/sirupsen/logrus"
	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Placement execution: the node makes its replicas follow the shard map.
//
//   - A shard the map lists this store for and that has no local replica
//     gets one: when the shard's replica set is its initial one (every
//     replica's id has incarnation 1: conf epoch 1, or a map written
//     without ids) the replica bootstraps the group with the voters' ids
//     as peers; otherwise it is created empty and waits for the leader to
//     add it as a learner and send it a snapshot.
//   - On the shard's leader, the Raft configuration is moved toward the map
//     one change at a time: a listed replica not in the configuration is
//     added as a learner, a listed voter that is a learner is promoted once
//     caught up, a member the map does not list is removed, but never if
//     that leaves fewer than two up-to-date voters (a leader that is itself
//     to go first hands leadership to an up-to-date listed voter).
//   - A local replica the map no longer lists is destroyed (its data
//     deleted) once its removal is applied: its own configuration no longer
//     has it, or the shard's leader (asked through StoreAdminService)
//     reports a configuration without it.
//   - Once the configuration matches the map, a leader that is not the
//     map's target_leader hands leadership to it when it is an up-to-date
//     voter (at most once per leaderMoveInterval per shard), so shard
//     leaders follow the control plane into the active region.

// upToDateLag is how far behind the leader's commit index a voter's
// durable log may be and still count as up to date for removals.
const upToDateLag = 100

// confChangeTimeout bounds one membership change.
const confChangeTimeout = 5 * time.Second

// leaderMoveInterval spaces attempts to hand a shard's leadership to its
// target_leader: a transfer needs an election round to show, and a target
// that cannot win must not be asked in a tight loop.
const leaderMoveInterval = 3 * time.Second

// deferLogInterval rate-limits, per shard, the info log saying why a
// removal the map asks for is deferred.
const deferLogInterval = 10 * time.Second

// placeState is the placement loop's memory between passes (used by the
// placeLoop goroutine only).
type placeState struct {
	// lastAsk: when a replica the map dropped last asked the shard's
	// leader whether its removal is applied.
	lastAsk map[uint32]time.Time
	// deferLogged: when a deferred removal was last logged.
	deferLogged map[uint32]time.Time
	// lastMove: when this node last asked a shard's target_leader to
	// take over.
	lastMove map[uint32]time.Time
}

func newPlaceState() *placeState {
	return &placeState{lastAsk: map[uint32]time.Time{}, deferLogged: map[uint32]time.Time{}, lastMove: map[uint32]time.Time{}}
}

// logDeferred logs at info, at most once per deferLogInterval per shard,
// why a removal is deferred.
func (ps *placeState) logDeferred(shard uint32, log *logrus.Entry, id multiraft.ReplicaID, why string, upToDate []multiraft.ReplicaID) {
	if time.Since(ps.deferLogged[shard]) < deferLogInterval {
		return
	}
	ps.deferLogged[shard] = time.Now()
	log.WithFields(logrus.Fields{"replica": id, "up_to_date_voters": upToDate}).Infof("removal deferred: %s", why)
}

func (n *Node) placeLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.ReconcileInterval)
	defer t.Stop()
	ps := newPlaceState()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.placeC:
		}
		if r := n.route.Load(); r != nil && n.raft != nil {
			n.reconcile(ctx, r, ps)
			n.markReady(r)
		}
	}
}

func (n *Node) reconcile(ctx context.Context, r *routing, ps *placeState) {
	mr := n.raft.mr
	me := n.ID()
	hosted := map[uint32]bool{}
	for _, s := range mr.Shards() {
		hosted[s] = true
	}
	for _, sh := range r.shards {
		if ctx.Err() != nil {
			return
		}
		shard := uint32(sh.Shard)
		log := n.log.WithField("shard", shard)
		if !sh.Hosts(me) {
			if !hosted[shard] {
				continue
			}
			// A leader the map dropped must hand leadership to a listed
			// voter (reconcileConf): only a leader changes the
			// configuration, so while it leads nobody would remove it.
			if st, err := mr.Status(shard); err == nil && st.Role == "leader" {
				n.reconcileConf(ctx, sh, st, ps, log)
			}
			n.maybeDestroy(ctx, r, sh, ps.lastAsk, log)
			continue
		}
		var mine clusterstate.Replica
		for _, rep := range sh.Replicas {
			if rep.Store == me {
				mine = rep
			}
		}
		myID := effectiveID(mine)
		if hosted[shard] {
			cur, err := mr.Replica(shard)
			if err == nil && cur != myID {
				// An older incarnation of this store's replica: the map
				// placed the shard here again under a new id.
				log.WithFields(logrus.Fields{"old": cur, "new": myID}).Info("destroying an old incarnation of the replica")
				if err := mr.DestroyReplica(shard); err != nil {
					log.WithError(err).Warn("destroy old replica")
					continue
				}
				hosted[shard] = false
			}
		}
		if !hosted[shard] {
			var peers []multiraft.ReplicaID
			initial := true
			for _, rep := range sh.Replicas {
				id := effectiveID(rep)
				if id.Incarnation() != 1 {
					initial = false
				}
				if isVoter(rep) {
					peers = append(peers, id)
				}
			}
			if !initial || !isVoter(mine) {
				peers = nil
			}
			if err := mr.CreateReplica(shard, myID, peers); err != nil {
				if !errors.Is(err, multiraft.ErrReplicaExists) {
					log.WithError(err).Warn("create replica")
				}
				continue
			}
			log.WithFields(logrus.Fields{"replica": myID, "peers": peers}).Info("replica created")
			// One initial replica campaigns at once instead of waiting out
			// an election timeout; which one rotates with the shard
			// number, so the first leaders spread over the stores.
			if len(peers) > 0 && peers[int(shard)%len(peers)] == myID {
				_ = mr.Campaign(shard)
			}
			continue
		}
		st, err := mr.Status(shard)
		if err != nil {
			continue
		}
		if st.Leader == 0 && len(st.Voters) == 1 && st.Voters[0] == myID {
			_ = mr.Campaign(shard) // a group of one elects itself at once
			continue
		}
		if st.Role == "leader" {
			n.reconcileConf(ctx, sh, st, ps, log)
		}
	}
}

// reconcileConf makes at most one membership change of shard toward the map.
//
// It runs on the shard's leader, whether or not the map still lists the
// leader's store. A leader the map dropped does one thing only: hand
// leadership to an up-to-date voter the map lists (and its configuration
// already has), so that one carries on and removes it. It adds nobody: a
// listed replica it does not know of may have bootstrapped a group of its
// own (a single-replica shard moved to another store), and a group of one
// with no listed voter is kept as it is (see maybeDestroy).
func (n *Node) reconcileConf(ctx context.Context, sh clusterstate.Shard, st multiraft.ShardStatus, ps *placeState, log *logrus.Entry) {
	if n.cfg.manualMembership {
		return
	}
	mr := n.raft.mr
	shard := uint32(sh.Shard)
	want := map[multiraft.ReplicaID]clusterstate.Replica{}
	for _, rep := range sh.Replicas {
		want[effectiveID(rep)] = rep
	}
	inVoters := func(id multiraft.ReplicaID) bool { return slices.Contains(st.Voters, id) }
	inLearners := func(id multiraft.ReplicaID) bool { return slices.Contains(st.Learners, id) }
	_, listed := want[st.Replica]
	if !listed && !slices.ContainsFunc(st.Voters, func(v multiraft.ReplicaID) bool {
		rep, ok := want[v]
		return ok && isVoter(rep) && v != st.Replica
	}) {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, confChangeTimeout)
	defer cancel()
	change := func(what string, id multiraft.ReplicaID, fn func() error) {
		if err := fn(); err != nil {
			if !errors.Is(err, multiraft.ErrLearnerNotReady) {
				log.WithError(err).WithField("replica", id).Warnf("%s failed; will retry", what)
			}
			return
		}
		log.WithField("replica", id).Infof("%s done", what)
	}
	for _, rep := range sh.Replicas {
		id := effectiveID(rep)
		if listed && !inVoters(id) && !inLearners(id) {
			change("add learner", id, func() error { return mr.AddLearner(cctx, shard, id) })
			return
		}
	}
	for _, rep := range sh.Replicas {
		id := effectiveID(rep)
		if listed && isVoter(rep) && inLearners(id) {
			change("promote", id, func() error { return mr.Promote(cctx, shard, id) })
			return
		}
	}
	upToDate := func(id multiraft.ReplicaID) bool { return replicaUpToDate(st, id) }
	for _, id := range st.Learners {
		if _, ok := want[id]; !ok && listed {
			change("remove learner", id, func() error { return mr.RemoveReplica(cctx, shard, id) })
			return
		}
	}
	for _, id := range st.Voters {
		if _, ok := want[id]; ok || (!listed && id != st.Replica) {
			continue
		}
		var left []multiraft.ReplicaID
		for _, v := range st.Voters {
			if v != id && upToDate(v) {
				left = append(left, v)
			}
		}
		if len(left) < 2 {
			ps.logDeferred(shard, log, id, "fewer than 2 up-to-date voters would remain", left)
			continue
		}
		if id == st.Replica {
			// The leader leaves: hand over to an up-to-date listed voter.
			for _, v := range st.Voters {
				if rep, ok := want[v]; ok && isVoter(rep) && v != id && upToDate(v) {
					change("transfer leadership before removal", v, func() error { return mr.TransferLeader(cctx, shard, v) })
					return
				}
			}
			ps.logDeferred(shard, log, id, "this leader is to leave and no up-to-date listed voter can take over", left)
			continue
		}
		change("remove voter", id, func() error { return mr.RemoveReplica(cctx, shard, id) })
		return
	}
	if listed {
		n.moveToTarget(cctx, sh, st, ps, log)
	}
}

// moveToTarget hands the shard's leadership to the map's target_leader
// when that is another store whose replica is an up-to-date voter. It runs
// on the leader after the configuration matches the map.
func (n *Node) moveToTarget(ctx context.Context, sh clusterstate.Shard, st multiraft.ShardStatus, ps *placeState, log *logrus.Entry) {
	if sh.TargetLeader == "" || sh.TargetLeader == n.ID() {
		return
	}
	if r := n.route.Load(); r == nil || !r.registered(sh.TargetLeader) {
		// Stopping (it deregisters first and hands its shards away) or
		// its lease lapsed: leadership would only have to move again.
		return
	}
	shard := uint32(sh.Shard)
	for _, rep := range sh.Replicas {
		id := effectiveID(rep)
		if rep.Store != sh.TargetLeader || !isVoter(rep) || !slices.Contains(st.Voters, id) || !replicaUpToDate(st, id) {
			continue
		}
		if time.Since(ps.lastMove[shard]) < leaderMoveInterval {
			return
		}
		ps.lastMove[shard] = time.Now()
		if err := n.raft.mr.TransferLeader(ctx, shard, id); err != nil {
			log.WithError(err).WithField("to", sh.TargetLeader).Warn("hand leadership to the target leader failed; will retry")
			return
		}
		log.WithField("to", sh.TargetLeader).Info("leadership handed to the map's target leader")
		return
	}
}

// maybeDestroy deletes this node's replica of a shard the map no longer
// lists for it, once its removal from the group is applied.
func (n *Node) maybeDestroy(ctx context.Context, r *routing, sh clusterstate.Shard, lastAsk map[uint32]time.Time, log *logrus.Entry) {
	mr := n.raft.mr
	shard := uint32(sh.Shard)
	st, err := mr.Status(shard)
	if err != nil {
		return
	}
	member := slices.Contains(st.Voters, st.Replica) || slices.Contains(st.Learners, st.Replica)
	if member && len(st.Voters) == 1 && st.Voters[0] == st.Replica {
		// A group of one (a single-replica map moved the shard away):
		// nothing else holds its data, so it is kept.
		return
	}
	if member {
		// This replica may never hear of its removal (the leader stops
		// talking to it): ask the shard's current replicas.
		if time.Since(lastAsk[shard]) < 2*time.Second {
			return
		}
		lastAsk[shard] = time.Now()
		removed := false
		for _, rep := range sh.Replicas {
			m, ok := r.stores[rep.Store]
			if !ok || m.Addr == "" {
				continue
			}
			resp, err := askShardStatus(ctx, m.Addr, shard)
			if err != nil || resp.GetRole() != "leader" {
				continue
			}
			if !slices.Contains(resp.GetVoters(), uint64(st.Replica)) && !slices.Contains(resp.GetLearners(), uint64(st.Replica)) {
				removed = true
			}
			break
		}
		if !removed {
			return
		}
	}
	if err := mr.DestroyReplica(shard); err != nil {
		log.WithError(err).Warn("destroy removed replica")
		return
	}
	delete(lastAsk, shard)
	log.WithField("replica", st.Replica).Info("removed replica destroyed and its data deleted")
}

func askShardStatus(ctx context.Context, addr string, shard uint32) (*pb.ShardStatusResponse, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	actx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return pb.NewStoreAdminServiceClient(cc).ShardStatus(actx, &pb.ShardStatusRequest{Shard: shard})
}

// ReplicaStatusValue is the JSON of a status key
// <prefix>status/shards/<nnn>/<store>, written by the shard's leader for
// every member of the group under the leader's membership lease.
type ReplicaStatusValue struct {
	// Role is leader, voter or learner.
	Role string `json:"role"`
	// AppliedIndex: the leader's applied index for itself; for another
	// member the highest index durable on it as the leader knows (Match).
	AppliedIndex uint64 `json:"applied_index"`
	// MatchLag is the leader's commit index minus the member's Match.
	MatchLag uint64 `json:"match_lag"`
	// Leader is the leading store's member id.
	Leader string `json:"leader"`
	Term   uint64 `json:"term"`
	// Active: the leader heard from the member within an election timeout.
	Active bool `json:"active"`
	// ReplicaID is the member's Raft id.
	ReplicaID uint64 `json:"replica_id"`
}

// StatusKey is the status key of store's replica of shard.
func StatusKey(prefix string, shard int, store string) string {
	return fmt.Sprintf("%sstatus/shards/%03d/%s", prefix, shard, store)
}

// statusLoop writes the status keys of the shards this node leads, each
// at most once per StatusInterval and only when a value changed (all of
// them again every statusRefreshPasses passes, in case another node
// deleted or overwrote one), all changes of one pass in one Txn under the
// node's membership lease. The keys of a member that left a group this
// node leads are deleted; the keys of a shard this node stopped leading
// are left to the new leader, which overwrites them under its lease.
func (n *Node) statusLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.StatusInterval)
	defer t.Stop()
	written := map[uint32]map[string]string{} // shard → key → value this node last wrote
	for pass := 1; ; pass++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r := n.route.Load()
		if r == nil || n.raft == nil || n.reg == nil {
			continue
		}
		if pass%statusRefreshPasses == 0 {
			clear(written)
		}
		lease := n.reg.LeaseID()
		var ops []clientv3.Op
		next := map[uint32]map[string]string{}
		for _, s := range n.raft.mr.Shards() {
			st, err := n.raft.mr.Status(s)
			if err != nil || st.Role != "leader" {
				continue
			}
			want := map[string]string{}
			leader := r.raftStores[uint32(st.Replica.Store())]
			for _, p := range st.Progress {
				store, ok := r.raftStores[uint32(p.ID.Store())]
				if !ok {
					continue
				}
				v := ReplicaStatusValue{Role: "voter", AppliedIndex: p.Match, Leader: leader, Term: st.Term, Active: p.RecentActive, ReplicaID: uint64(p.ID)}
				if p.Learner {
					v.Role = "learner"
				}
				if p.ID == st.Replica {
					v.Role, v.AppliedIndex, v.Active = "leader", st.Applied, true
				}
				if st.Commit > p.Match {
					v.MatchLag = st.Commit - p.Match
				}
				b, _ := json.Marshal(v)
				want[StatusKey(n.cfg.Common.Prefix, int(s), store)] = string(b)
			}
			old := written[s]
			for k, v := range want {
				if old[k] != v {
					ops = append(ops, clientv3.OpPut(k, v, clientv3.WithLease(lease)))
				}
			}
			for k := range old {
				if _, ok := want[k]; !ok {
					ops = append(ops, clientv3.OpDelete(k))
				}
			}
			next[s] = want
		}
		if len(ops) == 0 {
			written = next
			continue
		}
		// One Txn per pass, split only to stay under etcd's limit on
		// operations per transaction (--max-txn-ops, 128 by default).
		var err error
		for len(ops) > 0 && err == nil {
			k := min(len(ops), maxStatusOpsPerTxn)
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = n.etcd.Txn(wctx).Then(ops[:k]...).Commit()
			cancel()
			ops = ops[k:]
		}
		if err != nil {
			n.log.WithError(err).Debug("write status keys")
			clear(written) // write everything again next pass
			continue
		}
		written = next
	}
}

const maxStatusOpsPerTxn = 100

// statusRefreshPasses: every this many passes the status keys are written
// again whether or not they changed.
const statusRefreshPasses = 20

// sweepLoop: on the shards this node leads, idle-expired sessions are
// found with a local read and deleted through the log (opSweep stamped
// with the leader's clock), so expiry is decided once, for every replica.
func (n *Node) sweepLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n.raft == nil || n.route.Load() == nil {
			continue
		}
		for _, s := range n.raft.mr.Shards() {
			st, err := n.raft.mr.Status(s)
			if err != nil || st.Role != "leader" {
				continue
			}
			now := n.store.nowMs(int(s))
			var ids []string
			_ = n.raft.mr.View(s, func(b *bolt.Bucket) error {
				ids, err = findExpired(shardTx{root: b}, now, 256)
				return err
			})
			if len(ids) == 0 {
				continue
			}
			cmd := command{Op: opSweep, Shard: int(s), IDs: ids, NowMs: now, Limits: n.limits()}
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := n.store.apply(sctx, cmd); err != nil {
				n.log.WithError(err).WithField("shard", s).Debug("expiry sweep")
			}
			cancel()
		}
	}
}

// adminService implements StoreAdminService.
type adminService struct {
	pb.UnimplementedStoreAdminServiceServer
	n *Node
}

func (a *adminService) ShardStatus(_ context.Context, req *pb.ShardStatusRequest) (*pb.ShardStatusResponse, error) {
	if a.n.raft == nil {
		return nil, status.Error(codes.Unavailable, "no replication")
	}
	st, err := a.n.raft.mr.Status(req.GetShard())
	if err != nil {
		if errors.Is(err, multiraft.ErrShardNotFound) {
			return nil, status.Errorf(codes.NotFound, "store node %q hosts no replica of shard %d", a.n.ID(), req.GetShard())
		}
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := a.n.route.Load()
	storeOf := func(id multiraft.ReplicaID) string {
		if r == nil {
			return ""
		}
		return r.raftStores[uint32(id.Store())]
	}
	resp := &pb.ShardStatusResponse{
		Shard: st.Shard, ReplicaId: uint64(st.Replica), Role: st.Role, Term: st.Term,
		LeaderId: uint64(st.Leader), Commit: st.Commit, Applied: st.Applied,
	}
	if st.Leader != 0 {
		resp.LeaderStore = storeOf(st.Leader)
	}
	for _, v := range st.Voters {
		resp.Voters = append(resp.Voters, uint64(v))
	}
	for _, l := range st.Learners {
		resp.Learners = append(resp.Learners, uint64(l))
	}
	for _, p := range st.Progress {
		resp.Progress = append(resp.Progress, &pb.ReplicaProgress{
			ReplicaId: uint64(p.ID), Store: storeOf(p.ID), Learner: p.Learner, Match: p.Match,
			Next: p.Next, State: p.State, RecentActive: p.RecentActive,
		})
	}
	return resp, nil
}

func (a *adminService) TransferLeader(ctx context.Context, req *pb.TransferLeaderRequest) (*pb.TransferLeaderResponse, error) {
	if a.n.raft == nil {
		return nil, status.Error(codes.Unavailable, "no replication")
	}
	shard := req.GetShard()
	st, err := a.n.raft.mr.Status(shard)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "store node %q hosts no replica of shard %d", a.n.ID(), shard)
	}
	var to multiraft.ReplicaID
	for _, id := range append(slices.Clone(st.Voters), st.Learners...) {
		if uint32(id.Store()) == clusterstate.RaftStoreID(req.GetToStore()) {
			to = id
		}
	}
	if to == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "store %q hosts no replica in shard %d's group", req.GetToStore(), shard)
	}
	if err := a.n.raft.mr.TransferLeader(ctx, shard, to); err != nil {
		return nil, a.n.raft.mapErr(shard, err)
	}
	return &pb.TransferLeaderResponse{}, nil
}
