package multiraft

import (
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The applier applies committed entries to the state machine in raft.db,
// off the loop: the loop hands it each iteration's committed entries once
// they are durable in the WAL and goes on (next appends, messages,
// heartbeats) while the applier works. Its rounds apply into one bbolt
// transaction that stays open across rounds, shards and iterations until
// somebody needs its state (applyTx), so apply commits are batched like
// the WAL's appends, and more.
//
// Durability: a proposer is answered as soon as its entry is applied in
// the open transaction (the entry is committed, i.e. durable in a quorum's
// logs, and the deterministic state machine gives the same result on
// replay), readers once that transaction is committed (they wait for the
// applied index, published after the commit, and ask for the commit when
// it holds what they wait for). The commit is not fsynced:
// a goroutine of its own (runCheckpoints) fsyncs raft.db in a checkpoint
// every checkpointInterval while anything was committed, and a restart
// rolls raft.db back to the last checkpoint and replays the WAL from
// there (checkpoint.go has the argument; the log is compacted only up to
// a checkpoint). Before checkpoints each apply transaction cost two
// fdatasyncs, about half the node's fsyncs and a third of its CPU in the
// store benchmark.
//
// The loop waits for the applier (barrier) before a snapshot is restored
// and before Advance of a Ready that committed a conf change (raft must
// see it applied before it accepts the next one).

// applyItem is one replica's committed entries of one loop iteration.
type applyItem struct {
	r    *replica
	ents []*pb.Entry
}

// applyBatch is one loop iteration's work; done (if set) is closed once it
// is applied and published, or dropped after a storage failure.
type applyBatch struct {
	items []applyItem
	done  chan struct{}
	// queued is when the loop enqueued it (ApplyQueueTime).
	queued time.Time
}

type applier struct {
	mu    sync.Mutex
	queue []*applyBatch
	wake  chan struct{}
	stopC chan struct{}
	doneC chan struct{}
}

func newApplier() *applier {
	return &applier{wake: make(chan struct{}, 1), stopC: make(chan struct{}), doneC: make(chan struct{})}
}

func (a *applier) enqueue(b *applyBatch) {
	b.queued = time.Now()
	a.mu.Lock()
	a.queue = append(a.queue, b)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// pokeApplier has the applier commit its open transaction (applyTx): a
// reader waits for an index that may be applied in it. Never blocks.
func (n *Node) pokeApplier() {
	n.applyWanted.Store(true)
	select {
	case n.applier.wake <- struct{}{}:
	default:
	}
}

// barrier returns once everything enqueued before it is applied and
// committed (or the applier stopped).
func (a *applier) barrier() {
	b := &applyBatch{done: make(chan struct{})}
	a.enqueue(b)
	select {
	case <-b.done:
	case <-a.doneC:
	}
}

func (a *applier) stop() {
	close(a.stopC)
	<-a.doneC
}

func (n *Node) runApplier() {
	a := n.applier
	defer close(a.doneC)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	armed := false
	for {
		select {
		case <-a.stopC:
			return
		case <-a.wake:
		case <-linger.C:
			armed = false
			n.flushApply()
			continue
		}
		a.mu.Lock()
		batches := a.queue
		a.queue = nil
		a.mu.Unlock()
		if len(batches) == 0 {
			// A reader's poke (pokeApplier).
			if n.applyWanted.Swap(false) {
				n.flushApply()
			}
			continue
		}
		n.stats.applyQueueNanos.Add(nanos(time.Since(batches[0].queued)))
		n.stats.applyQueued.Add(1)
		barrier := false
		for _, b := range batches {
			barrier = barrier || b.done != nil
		}
		open := n.applyBatches(batches, barrier)
		for _, b := range batches {
			if b.done != nil {
				close(b.done)
			}
		}
		if open && !armed {
			// Committed applyLinger after the round that began it at
			// the latest (the rounds in between do not move it).
			linger.Reset(n.cfg.applyLinger)
			armed = true
		}
	}
}

// runCheckpoints takes raft.db's periodic checkpoints (checkpoint.go) on a
// goroutine of their own, so that their two fdatasyncs hold up neither
// the applier nor, through it, the proposers and readers waiting for an
// apply: when the applier took them, every write that committed during
// one waited for both fsyncs.
func (n *Node) runCheckpoints() {
	defer close(n.ckDoneC)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ckStopC:
			return
		case <-t.C:
		}
		if n.err() != nil {
			continue // the recovery's reopen takes its own checkpoint
		}
		if err := n.checkpointConcurrent(); err != nil {
			if !n.refusing() {
				n.fail(fmt.Errorf("%w: %v", ErrStorageFailed, err))
			}
			n.signal() // the loop starts the recovery
		}
	}
}

// checkpointConcurrent takes a checkpoint if raft.db has commits that are
// not fsynced, holding writeMu only to pin the latest transaction and to
// adopt the pin, not over the fsyncs: the applier's transactions go on
// meanwhile. That is safe because what the checkpoint records is the
// pinned transaction T, whatever commits after it: T's pages were written
// before the pin, so the fdatasync that follows covers them; the pin keeps
// any later commit from reusing them; T's meta page is copied into the
// record at the pin (a later commit may overwrite it in raft.db, and the
// rollback at the next open writes the copy back). The compaction bound
// moves to what T holds (the replicas' applied indexes at the pin), not
// to what was committed meanwhile.
func (n *Node) checkpointConcurrent() error {
	n.ckMu.Lock()
	defer n.ckMu.Unlock()
	n.writeMu.Lock()
	db, ck := n.db(), n.ck
	if db == nil || ck == nil || !ck.dirty || ck.syncMode {
		n.writeMu.Unlock()
		return nil
	}
	if ck.tooBig() {
		// Rare and final: the simple way, under the lock.
		err := n.checkpointLocked("checkpoint", true)
		n.writeMu.Unlock()
		return err
	}
	t0 := time.Now()
	pin, meta, err := ck.prepare(db)
	if err != nil || pin == nil {
		if err == nil {
			ck.dirty = false
		}
		n.writeMu.Unlock()
		return err
	}
	ck.dirty = false // commits from now on are after the pin
	durable := n.appliedSnapshot()
	n.writeMu.Unlock()

	n.cfg.faults.duringCheckpoint()
	err = n.cfg.faults.beforeCommit()
	if err == nil {
		err = ck.syncDB()
	}
	if err == nil {
		err = n.cfg.faults.afterCommit()
	}
	slot := 0
	if err == nil {
		slot, err = ck.record(meta)
	}

	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	if err != nil {
		// The record may be in the page cache though not on disk: keep
		// its pin until close (checkpointer.kept).
		ck.kept = append(ck.kept, pin)
		ck.dirty = true
		return n.storageFailed("checkpoint (raft.db checkpoint)", err)
	}
	ck.adopt(pin, slot)
	n.stats.ckpts.Add(1)
	n.stats.ckptNanos.Add(uint64(time.Since(t0)))
	n.markDurable(durable)
	return nil
}

// appliedState is one replica's outcome of the applier's open
// transaction.
type appliedState struct {
	r       *replica
	applied indexTerm
	cs      *pb.ConfState
	// results of the current round (answered at its end); confs: the
	// conf changes applied in the transaction, answered after the commit
	// (with every result on the legacy write path).
	results []applyResult
	confs   []applyResult
	// count: entries applied in the transaction, roundCount in the round.
	count, roundCount int
	skip              bool
}

// applyTx is the applier's open bbolt transaction. Its entries are applied
// and their proposers answered, but readers see them only once it commits
// (commitApplyLocked), which happens when somebody needs the state:
//
//   - a reader waits for an index it holds (a replica a round applied has
//     a read waiting, checked after the round, or a reader asked with
//     pokeApplier);
//   - a barrier (a snapshot to restore, a conf change to Advance, a
//     replica to destroy) or an update of raft.db (Node.update) comes;
//   - it has been open for Config.applyLinger, or holds applyTxMaxEntries
//     entries.
//
// A write that nobody reads at once so shares its commit with the others
// of up to 100 ms, as etcd batches its backend commits: one commit per
// round dirtied the same shard bucket pages for a handful of writes each
// time, 11 page writes per create at 64 clients (docs/benchmarks.md).
// Guarded by Node.writeMu.
type applyTx struct {
	tx        *bolt.Tx
	entries   int
	pending   []*appliedState
	byReplica map[*replica]*appliedState
}

const (
	// defaultApplyLinger bounds how long an apply transaction stays open
	// (Config.applyLinger): what a plain View sees lags what was applied
	// by at most this.
	defaultApplyLinger = 100 * time.Millisecond
	// applyTxMaxEntries bounds the entries one apply transaction holds.
	applyTxMaxEntries = 10000
)

// applyBatches applies batches in the open transaction and commits it if
// due; it reports whether a transaction is left open.
func (n *Node) applyBatches(batches []*applyBatch, barrier bool) (open bool) {
	if n.err() != nil {
		// Refusing or stopped: the state machine must not move past what
		// the WAL replays after the restart from disk.
		n.writeMu.Lock()
		n.dropApplyLocked()
		n.writeMu.Unlock()
		return false
	}
	n.writeMu.Lock()
	t0 := time.Now()
	round, err := n.applyRoundLocked(batches)
	n.stats.applyNanos.Add(uint64(time.Since(t0)))
	var pending []*appliedState
	if err == nil && (barrier || n.cfg.legacyWritePath || n.applyWanted.Swap(false) || n.applyCommitDueLocked(round)) {
		pending, err = n.commitApplyLocked()
	}
	open = n.apply.tx != nil
	n.writeMu.Unlock()
	if err != nil {
		n.applyFailed(err)
		return false
	}
	if n.cfg.OnApplied != nil {
		for _, s := range round {
			if s.roundCount > 0 {
				n.cfg.OnApplied(s.r.shard, s.applied.index, false)
			}
		}
	}
	n.publishApplied(pending)
	return open
}

// applyRoundLocked applies batches in the open transaction (beginning one
// for the first entry to apply if none is open) and answers their
// proposers. It returns the replicas
// the round applied entries of. With writeMu.
func (n *Node) applyRoundLocked(batches []*applyBatch) ([]*appliedState, error) {
	t := &n.apply
	var round []*appliedState
	seen := map[*replica]bool{}
	for _, b := range batches {
		for _, it := range b.items {
			if it.r.isDestroyed() {
				continue
			}
			if t.tx == nil {
				// Begun for work only: a barrier alone commits nothing.
				db := n.db()
				if db == nil || n.ck == nil {
					return nil, n.stoppedErr()
				}
				tx, err := db.Begin(true)
				if err != nil {
					return nil, n.storageFailed("apply", err)
				}
				t.tx, t.byReplica = tx, map[*replica]*appliedState{}
			}
			s := t.byReplica[it.r]
			if s == nil {
				s = &appliedState{r: it.r, applied: it.r.smApplied, cs: it.r.smCS}
				t.byReplica[it.r] = s
				t.pending = append(t.pending, s)
			}
			if !seen[it.r] {
				seen[it.r] = true
				s.roundCount = 0
				round = append(round, s)
			}
			if s.skip {
				continue
			}
			if shardBucket(t.tx, it.r.shard) == nil && it.r.isDestroyed() {
				s.skip = true // destroyed since the batch started
				continue
			}
			before := s.count
			if err := n.applyEntries(t.tx, s, it.ents); err != nil {
				return nil, fmt.Errorf("shard %d: %w", it.r.shard, err)
			}
			s.roundCount += s.count - before
			t.entries += s.count - before
			n.stats.applied.Add(uint64(s.count - before))
		}
	}
	for _, s := range round {
		if s.skip {
			continue
		}
		if !n.cfg.legacyWritePath {
			// Before the commit: see the comment at the top.
			s.r.answer(s.results)
			for _, res := range s.results {
				if res.conf {
					s.confs = append(s.confs, res)
				}
			}
		} else {
			s.confs = append(s.confs, s.results...)
		}
		s.results = nil
		s.r.smApplied, s.r.smCS = s.applied, s.cs
	}
	return round, nil
}

// applyCommitDueLocked: the open transaction must commit now (see
// applyTx). Only the replicas of the round just applied need a look: a
// read waiting on another one either waits for an entry not applied yet
// (the round that applies it looks) or asked for the commit itself when it
// began waiting (pokeApplier), its entry already in the transaction. With
// writeMu.
func (n *Node) applyCommitDueLocked(round []*appliedState) bool {
	t := &n.apply
	if t.tx == nil {
		return false
	}
	if t.entries >= applyTxMaxEntries {
		return true
	}
	for _, s := range round {
		if s.r.readsWaiting() {
			return true
		}
	}
	return false
}

// commitApplyLocked commits the open apply transaction, if any, and returns
// its replicas for publishApplied. With writeMu.
func (n *Node) commitApplyLocked() ([]*appliedState, error) {
	t := &n.apply
	if t.tx == nil {
		return nil, nil
	}
	t0 := time.Now()
	defer func() { n.stats.applyNanos.Add(uint64(time.Since(t0))) }()
	tx, pending := t.tx, t.pending
	*t = applyTx{}
	for _, s := range pending {
		if s.skip {
			continue
		}
		b := shardBucket(tx, s.r.shard)
		if b == nil {
			_ = tx.Rollback()
			return nil, fmt.Errorf("%w: shard %d", ErrShardNotFound, s.r.shard)
		}
		v, err := encodeIndexTerm(s.applied, s.cs)
		if err == nil {
			err = b.Put(keyApplied, v)
		}
		if err == nil && s.count > 0 {
			// Entries after the snapshot are applied: they are in the WAL
			// (see fromWAL).
			err = b.Delete(keySnapshot)
		}
		if err != nil {
			_ = tx.Rollback()
			return nil, err
		}
	}
	if err := n.cfg.faults.beforeWrite(); err != nil {
		_ = tx.Rollback()
		return nil, n.storageFailed("apply", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, n.storageFailed("apply", err)
	}
	st := tx.Stats()
	n.stats.applyPages.Add(uint64(st.GetWrite()))
	for _, s := range pending {
		if !s.skip {
			s.r.commitApplied = s.applied
		}
	}
	if err := n.committedLocked("apply"); err != nil {
		return nil, err
	}
	n.stats.applyCommits.Add(1)
	return pending, nil
}

// dropApplyLocked rolls the open apply transaction back, if any: the node
// refuses work or stops, and restarts from raft.db's checkpoint and the WAL.
// With writeMu.
func (n *Node) dropApplyLocked() {
	if n.apply.tx != nil {
		_ = n.apply.tx.Rollback()
	}
	n.apply = applyTx{}
}

// publishApplied lets the readers of what a commit made readable go and
// hands its conf changes to the loop's Advance.
func (n *Node) publishApplied(pending []*appliedState) {
	for _, s := range pending {
		if !s.skip {
			s.r.appliedCommitted(s.applied, s.confs, n.cfg.legacyWritePath)
		}
	}
}

// flushApply commits the open apply transaction (a reader's poke, the
// linger timer). Applier goroutine.
func (n *Node) flushApply() {
	n.writeMu.Lock()
	if n.err() != nil {
		// Refusing or stopped: see applyBatches.
		n.dropApplyLocked()
		n.writeMu.Unlock()
		return
	}
	pending, err := n.commitApplyLocked()
	n.writeMu.Unlock()
	if err != nil {
		n.applyFailed(err)
		return
	}
	n.publishApplied(pending)
}

// applyFailed stops the node for an apply that failed (not the disk: the
// state machine is broken, and carrying on could diverge from the group)
// or has the loop recover (the disk).
func (n *Node) applyFailed(err error) {
	n.writeMu.Lock()
	n.dropApplyLocked()
	n.writeMu.Unlock()
	if !n.refusing() {
		n.fail(fmt.Errorf("%w: %v", ErrStorageFailed, err))
	}
	n.signal() // the loop starts the recovery
}

// applyEntries applies ents (committed, in order) to the replica's state
// machine bucket in tx.
func (n *Node) applyEntries(tx *bolt.Tx, s *appliedState, ents []*pb.Entry) error {
	r := s.r
	b := shardBucket(tx, r.shard)
	if b == nil {
		return ErrShardNotFound
	}
	smb := b.Bucket(bktSM)
	for _, e := range ents {
		if e.GetIndex() <= s.applied.index {
			continue // already in the state machine (restored by a snapshot)
		}
		if e.GetIndex() != s.applied.index+1 {
			return fmt.Errorf("applying entry %d after %d", e.GetIndex(), s.applied.index)
		}
		switch e.GetType() {
		case pb.EntryNormal:
			data := e.GetData()
			if len(data) == 0 { // a new leader's empty entry
				break
			}
			if len(data) < 8 {
				return fmt.Errorf("%w: entry %d: %d-byte payload", ErrCorrupt, e.GetIndex(), len(data))
			}
			res, err := n.cfg.StateMachine.Apply(smb, r.shard, e.GetIndex(), data[8:])
			if err != nil {
				return fmt.Errorf("state machine: entry %d: %w", e.GetIndex(), err)
			}
			s.results = append(s.results, applyResult{id: binary.BigEndian.Uint64(data), data: res})
		case pb.EntryConfChange, pb.EntryConfChangeV2:
			var cc pb.ConfChangeI
			var ctx []byte
			if e.GetType() == pb.EntryConfChange {
				c := &pb.ConfChange{}
				if err := proto.Unmarshal(e.GetData(), c); err != nil {
					return err
				}
				cc, ctx = c, c.GetContext()
			} else {
				c := &pb.ConfChangeV2{}
				if err := proto.Unmarshal(e.GetData(), c); err != nil {
					return err
				}
				cc, ctx = c, c.GetContext()
			}
			r.mu.Lock()
			if !r.destroyed {
				s.cs = r.rn.ApplyConfChange(cc)
			}
			r.mu.Unlock()
			if len(ctx) == 8 {
				s.results = append(s.results, applyResult{id: binary.BigEndian.Uint64(ctx), conf: true})
			}
		}
		s.applied = indexTerm{e.GetIndex(), e.GetTerm()}
		s.count++
	}
	return nil
}
