package sessionstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The membership RPCs of StoreAdminService. Each makes at most one change,
// and only one that the leader's own reconcile pass (reconcileConf) would
// also make: they only do it sooner, so an operator and the node never pull
// a group in different directions. Both may propose the same change at
// once; Raft accepts one pending configuration change per group, the other
// is dropped (UNAVAILABLE, retry) and its retry finds the step done.

// membershipTarget is what a membership RPC works on: this node's view of
// the shard as its leader, the map entry, and the store's replica id.
type membershipTarget struct {
	shard uint32
	st    multiraft.ShardStatus
	entry clusterstate.Shard
	// listed is the map's replica on the store (ok false: not listed).
	listed clusterstate.Replica
	ok     bool
}

// target checks the request and that this node leads the shard, and finds
// the shard's map entry.
func (a *adminService) target(ctx context.Context, shard uint32, store string) (membershipTarget, error) {
	n := a.n
	if n.raft == nil {
		return membershipTarget{}, status.Error(codes.Unavailable, "no replication")
	}
	if store == "" {
		return membershipTarget{}, status.Error(codes.InvalidArgument, "store is empty: give the member id of the store whose replica to change")
	}
	r := n.route.Load()
	if r == nil {
		return membershipTarget{}, status.Errorf(codes.Unavailable, "store node %q has not read the shard map yet; retry shortly", n.ID())
	}
	if int(shard) >= len(r.shards) {
		return membershipTarget{}, status.Errorf(codes.InvalidArgument, "shard %d: the cluster has %d shards (0..%d)", shard, len(r.shards), len(r.shards)-1)
	}
	if _, err := n.raft.mr.Status(shard); errors.Is(err, multiraft.ErrShardNotFound) {
		return membershipTarget{}, status.Errorf(codes.NotFound, "store node %q hosts no replica of shard %d", n.ID(), shard)
	}
	if err := n.raft.leading(ctx, shard); err != nil {
		return membershipTarget{}, err
	}
	st, err := n.raft.mr.Status(shard)
	if err != nil {
		return membershipTarget{}, n.raft.mapErr(shard, err)
	}
	t := membershipTarget{shard: shard, st: st, entry: r.shards[shard]}
	for _, rep := range t.entry.Replicas {
		if rep.Store == store {
			t.listed, t.ok = rep, true
		}
	}
	return t, nil
}

// mapSays describes the shard's map entry for a FAILED_PRECONDITION message.
func (t membershipTarget) mapSays() string {
	var reps []string
	for _, rep := range t.entry.Replicas {
		role := rep.Role
		if role == "" {
			role = clusterstate.RoleVoter
		}
		reps = append(reps, fmt.Sprintf("%s (%s, replica %v)", rep.Store, role, effectiveID(rep)))
	}
	if len(reps) == 0 {
		return fmt.Sprintf("the shard map lists no replica for shard %d (conf epoch %d)", t.shard, t.entry.ConfEpoch)
	}
	return fmt.Sprintf("the shard map lists for shard %d (conf epoch %d): %s", t.shard, t.entry.ConfEpoch, strings.Join(reps, ", "))
}

// inGroup finds store's replica in the group's configuration.
func (t membershipTarget) inGroup(store string) (id multiraft.ReplicaID, voter, ok bool) {
	sid := multiraft.StoreID(clusterstate.RaftStoreID(store))
	for _, v := range t.st.Voters {
		if v.Store() == sid {
			return v, true, true
		}
	}
	for _, l := range t.st.Learners {
		if l.Store() == sid {
			return l, false, true
		}
	}
	return 0, false, false
}

// changeErr maps the error of a membership change.
func (a *adminService) changeErr(shard uint32, what string, err error) error {
	switch {
	case errors.Is(err, multiraft.ErrLearnerNotReady):
		return status.Errorf(codes.Unavailable, "shard %d: %s: the learner has not caught up yet (%v); retry shortly", shard, what, err)
	case errors.Is(err, multiraft.ErrProposalDropped):
		return status.Errorf(codes.Unavailable, "shard %d: %s: not applied (another membership change of the shard is in progress, or leadership changed); retry", shard, what)
	}
	return a.n.raft.mapErr(shard, err)
}

func (a *adminService) AddLearner(ctx context.Context, req *pb.AddLearnerRequest) (*pb.AddLearnerResponse, error) {
	t, err := a.target(ctx, req.GetShard(), req.GetStore())
	if err != nil {
		return nil, err
	}
	if !t.ok {
		return nil, status.Errorf(codes.FailedPrecondition, "shard %d: will not add store %q: %s; put the store in the map first (the control plane's placement does)", t.shard, req.GetStore(), t.mapSays())
	}
	want := effectiveID(t.listed)
	if slices.Contains(t.st.Voters, want) || slices.Contains(t.st.Learners, want) {
		return &pb.AddLearnerResponse{ReplicaId: uint64(want)}, nil
	}
	if old, _, ok := t.inGroup(req.GetStore()); ok {
		return nil, status.Errorf(codes.FailedPrecondition, "shard %d: store %q still has replica %v in the group, an older incarnation than the map's %v; remove it first (RemoveReplica once the map no longer lists it, or wait for the nodes' reconciliation)", t.shard, req.GetStore(), old, want)
	}
	if err := a.n.raft.mr.AddLearner(ctx, t.shard, want); err != nil {
		return nil, a.changeErr(t.shard, "add learner", err)
	}
	a.n.log.WithField("shard", t.shard).WithField("replica", want).Info("add learner done (admin request)")
	return &pb.AddLearnerResponse{ReplicaId: uint64(want), Changed: true}, nil
}

func (a *adminService) PromoteLearner(ctx context.Context, req *pb.PromoteLearnerRequest) (*pb.PromoteLearnerResponse, error) {
	t, err := a.target(ctx, req.GetShard(), req.GetStore())
	if err != nil {
		return nil, err
	}
	if !t.ok || !isVoter(t.listed) {
		return nil, status.Errorf(codes.FailedPrecondition, "shard %d: will not promote store %q: %s; the map must list it as a voter", t.shard, req.GetStore(), t.mapSays())
	}
	want := effectiveID(t.listed)
	switch {
	case slices.Contains(t.st.Voters, want):
		return &pb.PromoteLearnerResponse{ReplicaId: uint64(want)}, nil
	case !slices.Contains(t.st.Learners, want):
		return nil, status.Errorf(codes.FailedPrecondition, "shard %d: store %q's replica %v is not a learner of the group (voters %v, learners %v): AddLearner first", t.shard, req.GetStore(), want, t.st.Voters, t.st.Learners)
	}
	if err := a.n.raft.mr.Promote(ctx, t.shard, want); err != nil {
		return nil, a.changeErr(t.shard, "promote", err)
	}
	a.n.log.WithField("shard", t.shard).WithField("replica", want).Info("promote done (admin request)")
	return &pb.PromoteLearnerResponse{ReplicaId: uint64(want), Changed: true}, nil
}

func (a *adminService) RemoveReplica(ctx context.Context, req *pb.RemoveReplicaRequest) (*pb.RemoveReplicaResponse, error) {
	t, err := a.target(ctx, req.GetShard(), req.GetStore())
	if err != nil {
		return nil, err
	}
	id, voter, inGroup := t.inGroup(req.GetStore())
	if t.ok && (!inGroup || id == effectiveID(t.listed)) {
		return nil, status.Errorf(codes.FailedPrecondition, "shard %d: will not remove store %q: %s; take it out of the map first", t.shard, req.GetStore(), t.mapSays())
	}
	if !inGroup {
		return &pb.RemoveReplicaResponse{}, nil
	}
	if id == t.st.Replica {
		return nil, status.Errorf(codes.FailedPrecondition, "shard %d: replica %v on store %q leads the shard: TransferLeader to a voter the map lists first, then call RemoveReplica on the new leader", t.shard, id, req.GetStore())
	}
	if voter {
		left := upToDateVoters(t.st, id)
		if len(left) < 2 {
			return nil, status.Errorf(codes.FailedPrecondition, "shard %d: removing voter %v would leave %d up-to-date voter(s) %v; at least 2 must remain (bring a replica back or let a learner catch up and promote it first)", t.shard, id, len(left), left)
		}
	}
	if err := a.n.raft.mr.RemoveReplica(ctx, t.shard, id); err != nil {
		return nil, a.changeErr(t.shard, "remove replica", err)
	}
	a.n.log.WithField("shard", t.shard).WithField("replica", id).Info("remove replica done (admin request)")
	return &pb.RemoveReplicaResponse{ReplicaId: uint64(id), Changed: true}, nil
}

// upToDateVoters are the voters of the leader's status st, other than
// except, that count as up to date for the removal guard: the leader
// itself, and voters heard from recently whose durable log is within
// upToDateLag entries of the commit index.
func upToDateVoters(st multiraft.ShardStatus, except multiraft.ReplicaID) []multiraft.ReplicaID {
	var out []multiraft.ReplicaID
	for _, v := range st.Voters {
		if v != except && replicaUpToDate(st, v) {
			out = append(out, v)
		}
	}
	return out
}

func replicaUpToDate(st multiraft.ShardStatus, id multiraft.ReplicaID) bool {
	if id == st.Replica {
		return true
	}
	for _, p := range st.Progress {
		if p.ID == id {
			return p.RecentActive && logCaughtUp(p, st.Commit)
		}
	}
	return false
}

// logCaughtUp: p, in a leader's progress, is a voter whose durable log is
// within upToDateLag of the commit index. Match 0 means the leader has not
// heard from it in this term (a new leader starts every follower at 0,
// recently active), so on a short log the lag test alone would count a
// dead voter.
func logCaughtUp(p multiraft.ReplicaStatus, commit uint64) bool {
	return !p.Learner && p.Match > 0 && p.Match+upToDateLag >= commit
}
