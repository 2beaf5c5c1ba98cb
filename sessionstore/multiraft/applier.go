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
// heartbeats) while the applier's bbolt commit runs. Whatever queues up
// meanwhile goes into the applier's next transaction, so apply commits
// are batched across shards and iterations like the WAL's appends.
//
// Durability: a proposer is answered as soon as its entry is applied in
// the open transaction (the entry is committed, i.e. durable in a quorum's
// logs, and the deterministic state machine gives the same result on
// replay), readers once that transaction is committed (they wait for the
// applied index, published after the commit). The commit is not fsynced:
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

// barrier returns once everything enqueued before it is applied (or the
// applier stopped).
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
	for {
		select {
		case <-a.stopC:
			return
		case <-a.wake:
		}
		a.mu.Lock()
		batches := a.queue
		a.queue = nil
		a.mu.Unlock()
		if len(batches) > 0 {
			n.stats.applyQueueNanos.Add(nanos(time.Since(batches[0].queued)))
			n.stats.applyQueued.Add(1)
			n.applyBatches(batches)
			for _, b := range batches {
				if b.done != nil {
					close(b.done)
				}
			}
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
		err = db.Sync()
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

// applied is one replica's outcome of an apply transaction.
type appliedState struct {
	r       *replica
	applied indexTerm
	cs      *pb.ConfState
	results []applyResult
	count   int
	skip    bool
}

func (n *Node) applyBatches(batches []*applyBatch) {
	if n.err() != nil {
		// Refusing or stopped: the state machine must not move past what
		// the WAL replays after the restart from disk.
		return
	}
	var order []*appliedState
	byReplica := map[*replica]*appliedState{}
	for _, b := range batches {
		for _, it := range b.items {
			if it.r.isDestroyed() {
				continue
			}
			s := byReplica[it.r]
			if s == nil {
				s = &appliedState{r: it.r, applied: it.r.smApplied, cs: it.r.smCS}
				byReplica[it.r] = s
				order = append(order, s)
			}
		}
	}
	if len(order) == 0 {
		return
	}
	t0 := time.Now()
	n.writeMu.Lock()
	err := n.commitLocked("apply", false, func(tx *bolt.Tx) error {
		tx.OnCommit(func() {
			st := tx.Stats()
			n.stats.applyPages.Add(uint64(st.GetWrite()))
		})
		for _, b := range batches {
			for _, it := range b.items {
				s := byReplica[it.r]
				if s == nil || s.skip {
					continue
				}
				if shardBucket(tx, it.r.shard) == nil && it.r.isDestroyed() {
					s.skip = true // destroyed since the batch started
					continue
				}
				if err := n.applyEntries(tx, s, it.ents); err != nil {
					return fmt.Errorf("shard %d: %w", it.r.shard, err)
				}
			}
		}
		for _, s := range order {
			if s.skip {
				continue
			}
			b := shardBucket(tx, s.r.shard)
			if b == nil {
				return fmt.Errorf("%w: shard %d", ErrShardNotFound, s.r.shard)
			}
			v, err := encodeIndexTerm(s.applied, s.cs)
			if err != nil {
				return err
			}
			if err := b.Put(keyApplied, v); err != nil {
				return err
			}
			if s.count > 0 {
				// Entries after the snapshot are applied: they are in
				// the WAL (see fromWAL).
				if err := b.Delete(keySnapshot); err != nil {
					return err
				}
			}
		}
		if !n.cfg.legacyWritePath {
			// Before the commit: see the comment at the top.
			for _, s := range order {
				s.r.answer(s.results)
			}
		}
		return nil
	})
	if err == nil {
		for _, s := range order {
			if !s.skip {
				s.r.commitApplied = s.applied
			}
		}
	}
	n.writeMu.Unlock()
	if err != nil {
		if !n.refusing() {
			// Not the disk: the state machine is broken; carrying on
			// could diverge from the group.
			n.fail(fmt.Errorf("%w: %v", ErrStorageFailed, err))
		}
		n.signal() // the loop starts the recovery
		return
	}
	n.stats.applyCommits.Add(1)
	n.stats.applyNanos.Add(uint64(time.Since(t0)))
	for _, s := range order {
		if s.skip {
			continue
		}
		s.r.smApplied, s.r.smCS = s.applied, s.cs
		s.r.appliedCommitted(s.applied, s.results, n.cfg.legacyWritePath)
		n.stats.applied.Add(uint64(s.count))
	}
	if n.cfg.OnApplied != nil {
		for _, s := range order {
			if s.skip || s.count == 0 {
				continue
			}
			n.cfg.OnApplied(s.r.shard, s.applied.index, false)
		}
	}
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
