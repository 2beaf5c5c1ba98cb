package multiraft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// replica is one shard's Raft group member on this node.
type replica struct {
	n     *Node
	shard uint32
	id    ReplicaID
	st    *raftStorage

	// applier-owned: the state machine's applied index (in the applier's
	// open transaction) and the ConfState at it.
	smApplied indexTerm
	smCS      *pb.ConfState
	// commitApplied is the applied index of raft.db's latest committed
	// transaction (guarded by Node.writeMu): durable at the next
	// checkpoint (checkpoint.go).
	commitApplied indexTerm

	mu        sync.Mutex // guards everything below and rn
	rn        *raft.RawNode
	destroyed bool
	lead      ReplicaID
	role      raft.StateType
	leaderCh  chan struct{} // closed and replaced when lead or role changes
	appliedIx uint64        // committed applied index, for readers
	// durApplied is the applied index, with its term, of raft.db's last
	// checkpoint: the log can be compacted up to it.
	durApplied indexTerm
	// confDone are applied conf changes whose proposers are answered after
	// the loop's next Advance.
	confDone  []applyResult
	proposals map[uint64]*proposal
	unplaced  []uint64 // proposals accepted since the last Ready
	// readQueue are reads not yet handed to raft: the loop issues one
	// ReadIndex for all of them (issueReads), so concurrent reads of a
	// shard share one quorum round instead of a heartbeat broadcast each.
	readQueue []*readReq
	// reads are the batches handed to raft, by request context.
	reads    map[uint64][]*readReq
	readWait []*readReq // read index known, waiting for apply

	// Leader lease (lease.go): reads before leaseUntil in leaseTerm skip
	// the ReadIndex round; leaseRounds are the rounds that may extend it
	// (endLease forgets them); renewWanted asks the loop for a
	// round without readers, renewIssued is when it last issued one;
	// voteGuard: vote requests are ignored until then (a replica loaded
	// from disk).
	leaseUntil  time.Time
	leaseTerm   uint64
	leaseRounds map[uint64]leaseRound
	noLeaseTerm uint64 // a TimeoutNow was sent in this term
	renewWanted bool
	renewIssued time.Time
	voteGuard   time.Time

	// appRecv: when the first append message not yet persisted arrived
	// (FollowerTimings).
	appRecv time.Time

	// dirty: r is in Node.dirty (guarded by Node.dirtyMu, not mu).
	dirty bool
	// inflight: the loop has taken a Ready of r that waits in the WAL
	// writer (walwriter.go); loop goroutine only.
	inflight bool
}

type proposal struct {
	ch     chan propResult
	placed bool
	index  uint64
	writeStamps
}

type propResult struct {
	data []byte
	err  error
}

type readReq struct {
	index uint64
	ch    chan error
}

// errRetryRead: the read request was lost with a leader change; ReadIndex
// reissues it.
var errRetryRead = errors.New("multiraft: read index retry")

func (r *replica) complete(id uint64, p *proposal, data []byte, err error) {
	delete(r.proposals, id)
	if err == nil {
		r.n.stats.timings.record(&p.writeStamps, r.n.stats.iters.Load(), time.Now())
	}
	p.ch <- propResult{data, err}
}

func (r *replica) failAll(err error) {
	for id, p := range r.proposals {
		r.complete(id, p, nil, err)
	}
	for id, qs := range r.reads {
		delete(r.reads, id)
		for _, q := range qs {
			q.ch <- err
		}
	}
	for _, q := range r.readQueue {
		q.ch <- err
	}
	r.readQueue = nil
	for _, q := range r.readWait {
		q.ch <- err
	}
	r.readWait = nil
	r.unplaced = nil
}

// issueReads hands the queued reads to raft as one ReadIndex request, once
// a leader is known (a follower without one drops the request; the queue
// waits for the next iteration instead). Called on the loop with r.mu held.
//
// Batching is safe: the read index raft returns for the request is at
// least the leader's commit index when the request reached it, which is
// after every queued read started, so each read still sees every write
// acknowledged before it began.
func (r *replica) issueReads() {
	if len(r.readQueue) == 0 && !r.renewWanted || r.rn.BasicStatus().Lead == raft.None {
		return
	}
	now := time.Now()
	if r.renewWanted {
		r.renewWanted, r.renewIssued = false, now
	}
	id := r.n.newID()
	if len(r.readQueue) > 0 {
		r.reads[id] = r.readQueue
		r.readQueue = nil
	}
	r.recordRound(id, now)
	r.rn.ReadIndex(binary.BigEndian.AppendUint64(nil, id))
	r.n.stats.readRounds.Add(1)
}

func entryProposalID(e *pb.Entry) (uint64, bool) {
	switch e.GetType() {
	case pb.EntryNormal:
		if len(e.GetData()) >= 8 {
			return binary.BigEndian.Uint64(e.GetData()), true
		}
	case pb.EntryConfChangeV2:
		cc := &pb.ConfChangeV2{}
		if proto.Unmarshal(e.GetData(), cc) == nil && len(cc.GetContext()) == 8 {
			return binary.BigEndian.Uint64(cc.GetContext()), true
		}
	}
	return 0, false
}

// placeProposals records the log index of each proposal accepted since the
// previous Ready. A leader appends an accepted proposal to its log at once,
// so it is in this Ready's entries; one that is not was dropped by raft (a
// conf change refused while another is pending) or truncated by a new
// leader before it was ever sent: definitely not committed. Called with
// r.mu held.
func (r *replica) placeProposals(w *readyWork, now time.Time) {
	if len(r.unplaced) == 0 {
		return
	}
	for _, e := range w.rd.Entries {
		if id, ok := entryProposalID(e); ok {
			if p := r.proposals[id]; p != nil && !p.placed {
				p.placed, p.index = true, e.GetIndex()
				p.ready = now
				w.placed = append(w.placed, p)
			}
		}
	}
	for _, id := range r.unplaced {
		if p := r.proposals[id]; p != nil && !p.placed {
			r.complete(id, p, nil, ErrProposalDropped)
		}
	}
	r.unplaced = r.unplaced[:0]
}

// stampCommitted notes, for WriteTimings, the proposals of this replica
// whose entries w commits. Called with r.mu held.
func (r *replica) stampCommitted(w *readyWork, now time.Time) {
	if len(r.proposals) == 0 {
		return
	}
	for _, e := range w.rd.CommittedEntries {
		if id, ok := entryProposalID(e); ok {
			if p := r.proposals[id]; p != nil && p.placed && p.index == e.GetIndex() {
				p.committed = now
				w.committed = append(w.committed, p)
			}
		}
	}
}

// published runs once the iteration's WAL records are durable: it hands
// the new entries, HardState or snapshot to raft.Storage (before Advance
// lets raft drop them from its unstable log).
func (r *replica) published(w *readyWork) {
	if w.snapIndex > 0 {
		md := w.rd.Snapshot.GetMetadata()
		r.st.resetTo(indexTerm{md.GetIndex(), md.GetTerm()})
	}
	if len(w.rd.Entries) > 0 {
		r.st.appendDurable(w.rd.Entries)
	}
	if !raft.IsEmptyHardState(w.rd.HardState) {
		r.st.mu.Lock()
		r.st.hs = w.rd.HardState
		r.st.mu.Unlock()
	}
}

func (r *replica) isDestroyed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.destroyed
}

// answer answers the proposers of results but conf changes (see
// applier.go).
func (r *replica) answer(results []applyResult) {
	if len(results) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, res := range results {
		if p := r.proposals[res.id]; p != nil && !res.conf {
			r.complete(res.id, p, res.data, nil)
		}
	}
}

// appliedCommitted runs on the applier once the transaction that applied
// entries up to applied is committed (readable; durable through the WAL
// until the next checkpoint: see checkpoint.go): readers waiting for it
// go, conf changes wait for the loop's Advance (advance answers them).
func (r *replica) appliedCommitted(applied indexTerm, results []applyResult, answerAll bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.destroyed {
		return
	}
	if applied.index > r.appliedIx {
		r.appliedIx = applied.index
	}
	for _, res := range results {
		p := r.proposals[res.id]
		switch {
		case p == nil:
		case res.conf:
			r.confDone = append(r.confDone, res)
		case answerAll:
			r.complete(res.id, p, res.data, nil)
		}
	}
	r.dropOverwritten(0)
	r.releaseReads()
}

// dropOverwritten answers the placed proposals whose slot is applied but
// was not theirs: another leader's entry took it, so they are not
// committed. If a snapshot (up to snapIndex) covered the slot we cannot
// tell. Conf changes waiting for Advance are not overwritten. With r.mu.
func (r *replica) dropOverwritten(snapIndex uint64) {
	for id, p := range r.proposals {
		if !p.placed || p.index > r.appliedIx {
			continue
		}
		if r.confWaiting(id) {
			continue
		}
		if p.index <= snapIndex {
			r.complete(id, p, nil, ErrResultUnknown)
		} else {
			r.complete(id, p, nil, ErrProposalDropped)
		}
	}
}

func (r *replica) confWaiting(id uint64) bool {
	for _, c := range r.confDone {
		if c.id == id {
			return true
		}
	}
	return false
}

// readsWaiting: a read waits for an index to be applied here.
func (r *replica) readsWaiting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.readWait) > 0
}

// releaseReads answers the reads whose index is applied. With r.mu.
func (r *replica) releaseReads() {
	if len(r.readWait) == 0 {
		return
	}
	kept := r.readWait[:0]
	for _, q := range r.readWait {
		if q.index <= r.appliedIx {
			q.ch <- nil
		} else {
			kept = append(kept, q)
		}
	}
	r.readWait = kept
}

// advance hands the Ready back to raft and then answers the conf changes
// applied meanwhile, so a caller that proposes again right after an answer
// (say a second conf change) finds raft's applied index already moved.
func (r *replica) advance(w *readyWork) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.destroyed {
		return
	}
	r.rn.Advance(w.rd)
	if w.snapIndex > r.appliedIx {
		r.appliedIx = w.snapIndex
		r.durApplied = indexTerm{w.snapIndex, w.rd.Snapshot.GetMetadata().GetTerm()}
	}
	confs := r.confDone
	r.confDone = nil
	for _, res := range confs {
		if p := r.proposals[res.id]; p != nil {
			r.complete(res.id, p, res.data, nil)
		}
	}
	r.dropOverwritten(w.snapIndex)
	for _, rs := range w.rd.ReadStates {
		if len(rs.RequestCtx) != 8 {
			continue
		}
		id := binary.BigEndian.Uint64(rs.RequestCtx)
		r.roundDone(id)
		if qs, ok := r.reads[id]; ok {
			delete(r.reads, id)
			for _, q := range qs {
				q.index = rs.Index
				r.readWait = append(r.readWait, q)
			}
		}
	}
	r.releaseReads()
	if len(r.readWait) > 0 {
		r.n.pokeApplier()
	}
	if ss := w.rd.SoftState; ss != nil {
		lead := ReplicaID(ss.Lead)
		if lead != r.lead || ss.RaftState != r.role {
			r.endLease()
			r.lead, r.role = lead, ss.RaftState
			close(r.leaderCh)
			r.leaderCh = make(chan struct{})
			// Read requests in flight went to the old leader, which may
			// never answer; they are reissued.
			for id, qs := range r.reads {
				delete(r.reads, id)
				for _, q := range qs {
					q.ch <- errRetryRead
				}
			}
		}
	}
}

// propose runs fn (which hands a proposal to raft) if this replica leads,
// and registers p to be answered when its entry is applied.
func (r *replica) propose(id uint64, p *proposal, fn func(*raft.RawNode) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.n.err(); err != nil {
		return err
	}
	if r.destroyed {
		return fmt.Errorf("%w: shard %d", ErrShardNotFound, r.shard)
	}
	if st := r.rn.BasicStatus(); st.RaftState != raft.StateLeader {
		return &NotLeaderError{Shard: r.shard, Leader: ReplicaID(st.Lead)}
	}
	if err := fn(r.rn); err != nil {
		if errors.Is(err, raft.ErrProposalDropped) {
			return fmt.Errorf("%w: shard %d: %v", ErrProposalDropped, r.shard, err)
		}
		return err
	}
	p.start, p.iter0 = time.Now(), r.n.stats.iters.Load()
	r.proposals[id] = p
	r.unplaced = append(r.unplaced, id)
	r.n.stats.proposals.Add(1)
	r.n.signalReplica(r)
	return nil
}

func (r *replica) wait(ctx context.Context, id uint64, p *proposal) ([]byte, error) {
	select {
	case res := <-p.ch:
		return res.data, res.err
	case <-ctx.Done():
		r.mu.Lock()
		delete(r.proposals, id)
		r.mu.Unlock()
		select {
		case res := <-p.ch: // answered meanwhile
			return res.data, res.err
		default:
		}
		return nil, ctx.Err()
	}
}

// Propose replicates cmd through shard's Raft group and returns the state
// machine's result once the command is committed by a quorum (durable in
// their logs) and applied on this replica (in the transaction that is
// still being committed: reads see it once that is done, see applier.go).
// It fails with *NotLeaderError when this replica does not lead the shard,
// ErrProposalDropped when the command is definitely not committed,
// ErrStorageUnavailable without ErrResultUnknown when the node refused it
// (not committed), ErrResultUnknown (also wrapped by ErrStorageUnavailable
// for a proposal in flight when the disk failed)/ErrStopped/
// ErrStorageFailed/ctx.Err() when the outcome is unknown. Deduplicating retries (request
// ids) is the state machine's job.
func (n *Node) Propose(ctx context.Context, shard uint32, cmd []byte) ([]byte, error) {
	r, err := n.replica(shard)
	if err != nil {
		return nil, err
	}
	id := n.newID()
	data := make([]byte, 8+len(cmd))
	binary.BigEndian.PutUint64(data, id)
	copy(data[8:], cmd)
	p := &proposal{ch: make(chan propResult, 1)}
	if err := r.propose(id, p, func(rn *raft.RawNode) error { return rn.Propose(data) }); err != nil {
		return nil, err
	}
	return r.wait(ctx, id, p)
}

// ReadIndex returns an index such that a read of shard's state at any
// applied index ≥ it is linearizable, and waits until this replica has
// applied it. A leader whose lease holds (lease.go) answers at once with
// its commit index. Otherwise it works through raft, on followers too
// (raft forwards the request to the leader, which confirms its leadership
// with a quorum of heartbeats before answering). The reads of a shard that arrive while the loop is busy
// share one such request (see issueReads). A request lost with a leader
// change is reissued until ctx ends.
func (n *Node) ReadIndex(ctx context.Context, shard uint32) (uint64, error) {
	r, err := n.replica(shard)
	if err != nil {
		return 0, err
	}
	n.stats.reads.Add(1)
	for {
		q := &readReq{ch: make(chan error, 1)}
		r.mu.Lock()
		if err := n.err(); err != nil {
			r.mu.Unlock()
			return 0, err
		}
		if r.destroyed {
			r.mu.Unlock()
			return 0, ErrShardNotFound
		}
		if r.rn.BasicStatus().Lead == raft.None {
			ch := r.leaderCh
			r.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		if idx, ok := r.leaseIndex(time.Now()); ok {
			n.stats.leaseReads.Add(1)
			if idx <= r.appliedIx {
				r.mu.Unlock()
				return idx, nil
			}
			q.index = idx
			r.readWait = append(r.readWait, q) // released by the applier
			r.mu.Unlock()
			n.pokeApplier()
		} else {
			r.readQueue = append(r.readQueue, q)
			r.mu.Unlock()
			n.signalReplica(r)
		}
		select {
		case err := <-q.ch:
			if errors.Is(err, errRetryRead) {
				continue
			}
			if err != nil {
				return 0, err
			}
			return q.index, nil
		case <-ctx.Done():
			// Still queued: dropped. Already issued: its batch answers
			// q.ch (buffered) and forgets it.
			r.mu.Lock()
			if i := slices.Index(r.readQueue, q); i >= 0 {
				r.readQueue = slices.Delete(r.readQueue, i, i+1)
			}
			r.mu.Unlock()
			return 0, ctx.Err()
		}
	}
}

// Leader returns the replica this replica believes leads shard (0 if none).
func (n *Node) Leader(shard uint32) (ReplicaID, error) {
	r, err := n.replica(shard)
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lead, nil
}

// Replica returns the id of this node's replica of shard.
func (n *Node) Replica(shard uint32) (ReplicaID, error) {
	r, err := n.replica(shard)
	if err != nil {
		return 0, err
	}
	return r.id, nil
}

// Shards lists the shards hosted on this node.
func (n *Node) Shards() []uint32 {
	n.mu.RLock()
	defer n.mu.RUnlock()
	out := make([]uint32, 0, len(n.replicas))
	for s := range n.replicas {
		out = append(out, s)
	}
	return out
}
