package multiraft

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

// Read runs fn on shard's state-machine bucket after a ReadIndex round: fn
// sees every write acknowledged before Read was called (linearizable).
func (n *Node) Read(ctx context.Context, shard uint32, fn func(b *bolt.Bucket) error) error {
	if _, err := n.ReadIndex(ctx, shard); err != nil {
		return err
	}
	return n.View(shard, fn)
}

// View runs fn on this replica's current state of shard, without any
// linearizability guarantee (it may lag the leader).
func (n *Node) View(shard uint32, fn func(b *bolt.Bucket) error) error {
	if _, err := n.replica(shard); err != nil {
		return err
	}
	db := n.db()
	if db == nil {
		return n.stoppedErr()
	}
	return db.View(func(tx *bolt.Tx) error {
		b := shardBucket(tx, shard)
		if b == nil {
			return fmt.Errorf("%w: shard %d", ErrShardNotFound, shard)
		}
		return fn(b.Bucket(bktSM))
	})
}

// CreateReplica starts this node's replica id of shard. With peers (the
// shard's initial voters, id among them) it bootstraps a new group: every
// initial replica is created with the same peers and they elect a leader.
// Without peers it creates an empty replica that joins an existing group:
// the leader must add it (AddLearner) and then sends it a snapshot.
func (n *Node) CreateReplica(shard uint32, id ReplicaID, peers []ReplicaID) error {
	if id.Store() != n.cfg.Store {
		return fmt.Errorf("multiraft: replica %v is not on store %d", id, n.cfg.Store)
	}
	if len(peers) > 0 && !slices.Contains(peers, id) {
		return fmt.Errorf("multiraft: replica %v not among initial peers %v", id, peers)
	}
	return n.onLoop(func() error {
		n.mu.RLock()
		_, exists := n.replicas[shard]
		n.mu.RUnlock()
		if exists {
			return fmt.Errorf("%w: shard %d", ErrReplicaExists, shard)
		}
		// The log first: a crash before the bbolt bucket exists leaves an
		// orphan WAL log, dropped at the next start; the reverse would
		// leave a replica without a log.
		st := &raftStorage{shard: shard, hs: &pb.HardState{}, cs: &pb.ConfState{}}
		var applied indexTerm
		if len(peers) > 0 {
			// Bootstrap as if from a snapshot at index 1, term 1 holding
			// the initial configuration (as raft recommends instead of
			// Bootstrap): identical on every initial replica.
			for _, p := range peers {
				st.cs.Voters = append(st.cs.Voters, uint64(p))
			}
			st.hs = &pb.HardState{Term: new(uint64(1)), Commit: new(uint64(1))}
			st.trunc, applied = indexTerm{1, 1}, indexTerm{1, 1}
		}
		if err := st.checkpoint(n.wal, id); err != nil {
			return err
		}
		if err := n.walSync("create replica"); err != nil {
			return err
		}
		err := n.update("create replica", func(tx *bolt.Tx) error {
			b, err := tx.Bucket(bktShards).CreateBucket(u32key(shard))
			if err != nil {
				return fmt.Errorf("%w: shard %d: %v", ErrReplicaExists, shard, err)
			}
			if err := b.Put(keyReplica, binary.BigEndian.AppendUint64(nil, uint64(id))); err != nil {
				return err
			}
			if _, err := b.CreateBucket(bktSM); err != nil {
				return err
			}
			if len(peers) == 0 {
				return nil
			}
			av, err := encodeIndexTerm(applied, st.cs)
			if err != nil {
				return err
			}
			return b.Put(keyApplied, av)
		})
		if err != nil {
			return err
		}
		if err := n.startReplica(shard, id, st, applied, false); err != nil {
			return err
		}
		return nil
	})
}

// DestroyReplica stops this node's replica of shard and deletes its log and
// state. Remove it from the group first (RemoveReplica on the leader).
func (n *Node) DestroyReplica(shard uint32) error {
	return n.onLoop(func() error {
		n.mu.Lock()
		r := n.replicas[shard]
		delete(n.replicas, shard)
		n.mu.Unlock()
		if r == nil {
			return fmt.Errorf("%w: shard %d", ErrShardNotFound, shard)
		}
		r.mu.Lock()
		r.destroyed = true
		r.failAll(fmt.Errorf("%w: shard %d destroyed", ErrShardNotFound, shard))
		r.mu.Unlock()
		n.loopReplicas = slices.DeleteFunc(n.loopReplicas, func(x *replica) bool { return x == r })
		// The applier may be applying to the bucket: let it finish (its
		// next batches skip the destroyed replica). The WAL log is left
		// to the next checkpoint, which no longer includes it.
		n.applier.barrier()
		return n.update("destroy replica", func(tx *bolt.Tx) error {
			return tx.Bucket(bktShards).DeleteBucket(u32key(shard))
		})
	})
}

func (n *Node) changeConf(ctx context.Context, shard uint32, t pb.ConfChangeType, target ReplicaID, check func(raft.Status) error) error {
	r, err := n.replica(shard)
	if err != nil {
		return err
	}
	id := n.newID()
	cc := &pb.ConfChangeV2{
		Changes: []*pb.ConfChangeSingle{{Type: t.Enum(), NodeId: new(uint64(target))}},
		Context: binary.BigEndian.AppendUint64(nil, id),
	}
	p := &proposal{ch: make(chan propResult, 1)}
	err = r.propose(id, p, func(rn *raft.RawNode) error {
		if check != nil {
			if err := check(rn.Status()); err != nil {
				return err
			}
		}
		return rn.ProposeConfChange(cc)
	})
	if err != nil {
		return err
	}
	_, err = r.wait(ctx, id, p)
	return err
}

// AddLearner adds replica to shard's group as a non-voting learner; it
// receives the log (or a snapshot) but does not count for quorum. Create
// the replica on its store (CreateReplica without peers) too.
func (n *Node) AddLearner(ctx context.Context, shard uint32, replica ReplicaID) error {
	return n.changeConf(ctx, shard, pb.ConfChangeAddLearnerNode, replica, nil)
}

// PromoteMaxLag is how many entries behind the leader's commit index a
// learner may be and still be promoted.
const PromoteMaxLag = 1000

// Promote turns a learner that has caught up into a voter. It fails with
// ErrLearnerNotReady while the learner is being sent a snapshot or lags by
// more than PromoteMaxLag entries.
func (n *Node) Promote(ctx context.Context, shard uint32, replica ReplicaID) error {
	return n.changeConf(ctx, shard, pb.ConfChangeAddNode, replica, func(st raft.Status) error {
		pr, ok := st.Progress[uint64(replica)]
		if !ok || !pr.IsLearner {
			return fmt.Errorf("multiraft: shard %d: %v is not a learner", shard, replica)
		}
		if pr.State != tracker.StateReplicate || pr.Match+PromoteMaxLag < st.HardState.GetCommit() {
			return fmt.Errorf("%w: shard %d: %v at %d (%v), commit %d", ErrLearnerNotReady, shard, replica, pr.Match, pr.State, st.HardState.GetCommit())
		}
		return nil
	})
}

// RemoveReplica removes replica (voter or learner) from shard's group. To
// remove the leader, TransferLeader away first. Destroy the removed
// replica on its store afterwards.
func (n *Node) RemoveReplica(ctx context.Context, shard uint32, replica ReplicaID) error {
	return n.changeConf(ctx, shard, pb.ConfChangeRemoveNode, replica, nil)
}

// TransferLeader asks this replica, which must lead shard, to hand
// leadership to replica, and waits until this replica sees it lead.
func (n *Node) TransferLeader(ctx context.Context, shard uint32, to ReplicaID) error {
	r, err := n.replica(shard)
	if err != nil {
		return err
	}
	r.mu.Lock()
	st := r.rn.BasicStatus()
	if ReplicaID(st.Lead) == to {
		r.mu.Unlock()
		return nil
	}
	if st.RaftState != raft.StateLeader {
		r.mu.Unlock()
		return &NotLeaderError{Shard: shard, Leader: ReplicaID(st.Lead)}
	}
	r.rn.TransferLeader(uint64(to))
	r.mu.Unlock()
	n.signalReplica(r)
	for {
		r.mu.Lock()
		lead, ch, gone := r.lead, r.leaderCh, r.destroyed
		r.mu.Unlock()
		if gone {
			return n.goneErr(shard)
		}
		if lead == to {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Campaign makes this replica of shard start an election now instead of
// waiting for its election timeout (a single-voter group elects itself at
// once; in a larger group it only speeds up the first election, PreVote
// keeps it from disturbing a healthy leader).
func (n *Node) Campaign(shard uint32) error {
	r, err := n.replica(shard)
	if err != nil {
		return err
	}
	r.mu.Lock()
	if r.destroyed {
		r.mu.Unlock()
		return ErrShardNotFound
	}
	err = r.rn.Campaign()
	r.mu.Unlock()
	n.signalReplica(r)
	return err
}

// WaitLeader waits until this replica knows a leader of shard and returns it.
func (n *Node) WaitLeader(ctx context.Context, shard uint32) (ReplicaID, error) {
	r, err := n.replica(shard)
	if err != nil {
		return 0, err
	}
	for {
		r.mu.Lock()
		lead, ch, gone := r.lead, r.leaderCh, r.destroyed
		r.mu.Unlock()
		if gone {
			return 0, n.goneErr(shard)
		}
		if lead != 0 {
			return lead, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// ReplicaStatus is one member of a shard's group as the leader sees it.
type ReplicaStatus struct {
	ID      ReplicaID
	Learner bool
	// Match is the highest log index known to be durable on the replica.
	Match uint64
	// Next is the next index the leader will send it.
	Next uint64
	// State is the leader's replication state for it: probe, replicate or
	// snapshot.
	State string
	// RecentActive is whether it was heard from in the last election timeout.
	RecentActive bool
}

// ShardStatus describes this node's replica of a shard.
type ShardStatus struct {
	Shard   uint32
	Replica ReplicaID
	// Role is leader, follower, candidate, pre-candidate, or learner.
	Role    string
	Term    uint64
	Leader  ReplicaID
	Commit  uint64
	Applied uint64
	// Voters and Learners are the group's configuration as this replica
	// knows it.
	Voters, Learners []ReplicaID
	// Progress is set on the leader only: every member's replication
	// progress (followers' applied indexes are not known to the leader;
	// Match is how far their log is durable).
	Progress []ReplicaStatus
}

// Status reports this node's replica of shard.
func (n *Node) Status(shard uint32) (ShardStatus, error) {
	r, err := n.replica(shard)
	if err != nil {
		return ShardStatus{}, err
	}
	r.mu.Lock()
	st := r.rn.Status()
	applied := r.appliedIx
	r.mu.Unlock()
	s := ShardStatus{
		Shard:   shard,
		Replica: r.id,
		Role:    roleName(st.RaftState),
		Term:    st.HardState.GetTerm(),
		Leader:  ReplicaID(st.Lead),
		Commit:  st.HardState.GetCommit(),
		Applied: applied,
	}
	for v := range st.Config.Voters.IDs() {
		s.Voters = append(s.Voters, ReplicaID(v))
	}
	for v := range st.Config.Learners {
		s.Learners = append(s.Learners, ReplicaID(v))
	}
	slices.Sort(s.Voters)
	slices.Sort(s.Learners)
	if slices.Contains(s.Learners, r.id) {
		s.Role = "learner"
	}
	for id, pr := range st.Progress {
		s.Progress = append(s.Progress, ReplicaStatus{
			ID: ReplicaID(id), Learner: pr.IsLearner, Match: pr.Match, Next: pr.Next,
			State: pr.State.String(), RecentActive: pr.RecentActive,
		})
	}
	slices.SortFunc(s.Progress, func(a, b ReplicaStatus) int { return cmpID(a.ID, b.ID) })
	return s, nil
}

// goneErr is why a replica a caller holds was dropped: the node's failure,
// or the replica's destruction.
func (n *Node) goneErr(shard uint32) error {
	if err := n.err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: shard %d", ErrShardNotFound, shard)
}

func cmpID(a, b ReplicaID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func roleName(s raft.StateType) string {
	switch s {
	case raft.StateLeader:
		return "leader"
	case raft.StateCandidate:
		return "candidate"
	case raft.StatePreCandidate:
		return "pre-candidate"
	default:
		return "follower"
	}
}
