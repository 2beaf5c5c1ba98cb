package multiraft

import (
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Storage failures: refuse, discard, probe, restart.
//
// When a commit of raft.db fails (a write error such as ENOSPC, or a failed
// fsync) the node cannot know what reached the disk, and after a failed
// fsync the page cache cannot be trusted either: Linux marks the failed
// pages clean, so reads may show data that was never persisted, and a later
// fsync on the same file reports success (PostgreSQL's "fsyncgate"). Retrying
// the commit, or carrying on with the in-memory Raft state, would risk
// acknowledging a write (or a vote, or an append to a leader) that a crash
// then loses. So the node:
//
//  1. refuses work at once: every call fails with ErrStorageUnavailable
//     wrapping the cause (StorageErr reports it); nothing of the failed
//     iteration is sent or acknowledged; proposals and reads in flight fail
//     too (a proposal's outcome is unknown: the other replicas may commit
//     it; retry with the same request id);
//  2. discards all in-memory state that may not be on disk: every RawNode
//     with its unstable log and unsent messages, pending proposals, cached
//     snapshots, and closes raft.db (its mmap and in-memory freelist);
//  3. every StorageRetryInterval reopens raft.db, which rolls it back to
//     its last checkpoint (checkpoint.go: a tree whose pages were fsynced
//     and never written since, so the page cache cannot disagree with the
//     disk about any of them; what came after is replayed from the WAL),
//     and commits a probe write (probeBytes of data, then deletes it),
//     fsynced and checkpointed: the disk takes writes, fsyncs and
//     checkpoints again. The probe's size makes sure there is room for
//     real work again, not just for one page;
//  4. restarts every Raft group from what is on disk, exactly as a process
//     restart would (raft's durability contract makes that safe: the
//     HardState and log on disk are all a replica has promised), and
//     resumes; the groups catch up from their leaders.
//
// Meanwhile the rest of each group (a quorum on other nodes) keeps the
// shards available. An error that is not the disk's (a state machine or
// log that fails its checks) still stops the node for good with
// ErrStorageFailed: retrying cannot fix it.

// probeBytes is the size of the recovery probe write.
const probeBytes = 1 << 20

var keyProbe = []byte("probe")

// refusing reports whether the node is refusing work after a storage
// failure (and not stopped for good).
func (n *Node) refusing() bool {
	n.failMu.Lock()
	defer n.failMu.Unlock()
	return n.failErr == nil && n.storErr != nil
}

// update runs fn in a write transaction of raft.db and makes it durable
// with a checkpoint (checkpoint.go). If the commit or the checkpoint fails
// (write or fsync), the node starts refusing work (the loop then recovers)
// and the error returned wraps ErrStorageUnavailable; an error of fn is
// returned as it is. Called on the loop goroutine.
func (n *Node) update(what string, fn func(*bolt.Tx) error) error {
	n.ckMu.Lock()
	defer n.ckMu.Unlock()
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	// bbolt has one writer: the applier's transaction commits first.
	pending, err := n.commitApplyLocked()
	if err != nil {
		if !n.refusing() {
			// Not the disk: see applyFailed.
			n.fail(fmt.Errorf("%w: %v", ErrStorageFailed, err))
		}
		return err
	}
	n.publishApplied(pending)
	if err := n.commitLocked(what, true, fn); err != nil {
		return err
	}
	return n.checkpointLocked(what, false)
}

// commitLocked runs fn in a write transaction of raft.db, not fsynced
// (unless bbolt is in syncMode). faults: a slow disk delays it too.
// With writeMu.
func (n *Node) commitLocked(what string, slow bool, fn func(*bolt.Tx) error) error {
	db := n.db()
	if db == nil || n.ck == nil {
		return n.stoppedErr()
	}
	var err error
	if slow {
		err = n.cfg.faults.beforeCommit()
	} else {
		err = n.cfg.faults.beforeWrite()
	}
	if err != nil {
		return n.storageFailed(what, err)
	}
	var fnErr error
	err = db.Update(func(tx *bolt.Tx) error {
		fnErr = fn(tx)
		return fnErr
	})
	if err != nil && fnErr != nil {
		return err
	}
	if err != nil {
		return n.storageFailed(what, err)
	}
	return n.committedLocked(what)
}

// committedLocked follows every raft.db commit (commitLocked, the
// applier's commitApplyLocked): the next checkpoint takes it, or, in
// syncMode, the commit itself was fsynced (an injected failure of that
// fsync fails here) and everything committed is durable now. With writeMu.
func (n *Node) committedLocked(what string) error {
	if n.ck.syncMode {
		if err := n.cfg.faults.afterCommit(); err != nil {
			return n.storageFailed(what, err)
		}
	}
	n.ck.dirty = true
	if n.ck.syncMode {
		n.markDurableLocked()
	}
	return nil
}

// checkpointLocked fsyncs raft.db and records the checkpoint
// (checkpoint.go); then the logs may be compacted up to what it holds. slow:
// an injected slow disk delays it (update's commit already did). With
// writeMu.
func (n *Node) checkpointLocked(what string, slow bool) error {
	db, ck := n.db(), n.ck
	if db == nil || ck == nil {
		return n.stoppedErr()
	}
	if !ck.dirty || ck.syncMode {
		return nil
	}
	t0 := time.Now()
	if ck.tooBig() {
		if err := ck.enterSyncMode(n.cfg.Dir, db); err != nil {
			return n.storageFailed(what, err)
		}
		ck.dirty = false
		n.markDurableLocked()
		return nil
	}
	var err error
	if slow {
		err = n.cfg.faults.beforeCommit()
	}
	if err == nil {
		err = db.Sync()
	}
	if err == nil {
		err = n.cfg.faults.afterCommit()
	}
	if err == nil {
		err = ck.save(db)
	}
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			return err
		}
		return n.storageFailed(what+" (raft.db checkpoint)", err)
	}
	ck.dirty = false
	n.stats.ckpts.Add(1)
	n.stats.ckptNanos.Add(uint64(time.Since(t0)))
	n.markDurableLocked()
	return nil
}

// markDurableLocked: everything committed to raft.db is durable now, so
// each replica's log may be compacted up to its committed applied index.
// With writeMu.
func (n *Node) markDurableLocked() {
	n.markDurable(n.appliedSnapshot())
}

// appliedSnapshot is every replica's applied index in raft.db's latest
// committed transaction. With writeMu.
func (n *Node) appliedSnapshot() map[*replica]indexTerm {
	n.mu.RLock()
	defer n.mu.RUnlock()
	m := make(map[*replica]indexTerm, len(n.replicas))
	for _, r := range n.replicas {
		m[r] = r.commitApplied
	}
	return m
}

// markDurable lets each replica's log be compacted up to its applied index
// in durable, now durable in raft.db.
func (n *Node) markDurable(durable map[*replica]indexTerm) {
	for r, it := range durable {
		r.mu.Lock()
		if it.index > r.durApplied.index {
			r.durApplied = it
		}
		r.mu.Unlock()
	}
	n.compactDue.Store(true)
	n.wake() // the compaction sweep needs no Ready scan
}

// storageFailed records a failed commit: from now on every call is refused
// with the returned error until the loop has recovered.
func (n *Node) storageFailed(what string, cause error) error {
	err := fmt.Errorf("%w: store %d: %s: writing %s failed: %w; the node refuses writes and reads until a probe write succeeds (retried every %v): free disk space under %s or fix the disk",
		ErrStorageUnavailable, n.cfg.Store, what, n.cfg.Dir, cause, n.cfg.StorageRetryInterval, n.cfg.Dir)
	n.failMu.Lock()
	first := n.storErr == nil
	n.storErr = err
	n.failMu.Unlock()
	if first {
		n.stats.storFails.Add(1)
		n.cfg.Logger.Errorf("%v", err)
	}
	return err
}

// recoverStorage runs on the loop after a storage failure: it discards the
// in-memory state, then probes the disk until it takes a write again and
// restarts the groups from disk. It returns false if the node was closed
// (or failed for good) meanwhile.
func (n *Node) recoverStorage() bool {
	// The WAL writer must be done with the WAL before it is cut back, and
	// nothing it held is finished (published, applied or advanced). A
	// batch whose fsync succeeded before the failure has had its messages
	// sent by the writer already (sendSynced): that is safe, as what they
	// acknowledge is durable, and the cut back keeps everything up to the
	// last successful sync.
	n.dropWrites()
	n.discard()
	var logged string // the last probe failure logged: no log line per retry
	t := time.NewTimer(n.cfg.StorageRetryInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stopC:
			return false
		case op := <-n.opC:
			op() // refused: n.err() is set
		case <-n.readyC:
		case <-t.C:
			err := n.reopen()
			if err == nil {
				return true
			}
			if errors.Is(err, ErrStorageFailed) {
				return false
			}
			n.storageFailed("recovery probe", err)
			if msg := err.Error(); msg != logged {
				logged = msg
				n.cfg.Logger.Warningf("multiraft: store %d: disk under %s still failing (retrying every %v): %v", n.cfg.Store, n.cfg.Dir, n.cfg.StorageRetryInterval, err)
			}
			t.Reset(n.cfg.StorageRetryInterval)
		}
	}
}

// discard drops every replica (RawNode, unstable entries, unsent messages,
// cached snapshot), fails their waiters, and closes raft.db. The dropped
// replicas stay listed (Shards) until the restart replaces them: they are
// still on disk, and placement should not try to create them meanwhile.
func (n *Node) discard() {
	cause := n.err()
	inflight := fmt.Errorf("%w (%w)", cause, ErrResultUnknown)
	n.mu.RLock()
	reps := make([]*replica, 0, len(n.replicas))
	for _, r := range n.replicas {
		reps = append(reps, r)
	}
	n.mu.RUnlock()
	n.loopReplicas = nil
	for _, r := range reps {
		r.mu.Lock()
		r.destroyed = true
		for id, p := range r.proposals {
			r.complete(id, p, nil, inflight)
		}
		r.failAll(cause)
		r.lead = 0
		close(r.leaderCh) // wake WaitLeader/TransferLeader; they see destroyed
		r.leaderCh = make(chan struct{})
		r.mu.Unlock()
	}
	// The applier drops its work from now on (n.err is set); wait for the
	// transaction it may be in.
	n.applier.barrier()
	// Waits for read transactions in flight; the error of a close after
	// a failed commit says nothing new. The reopen rolls raft.db back to
	// its last checkpoint.
	_ = n.closeDB()
}

// reopen opens raft.db again, proves with a probe commit that the disk takes
// writes and restarts every replica from disk. An error wrapping
// ErrStorageFailed means the node cannot recover (it then has failed for
// good); any other means try again later.
func (n *Node) reopen() error {
	// What the WAL's page cache holds past its last successful fsync may
	// not be on disk: cut it off before anything reads the file again.
	if err := n.wal.cutBack(); err != nil {
		return fmt.Errorf("probe write: %w", err)
	}
	db, ck, err := openDB(n.cfg.Dir)
	if err != nil {
		return err
	}
	probe := func(put bool) error {
		if err := n.cfg.faults.beforeCommit(); err != nil {
			return err
		}
		err := db.Update(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bktMeta)
			if meta == nil {
				return fmt.Errorf("%w: no meta bucket", ErrCorrupt)
			}
			if put {
				return meta.Put(keyProbe, make([]byte, probeBytes))
			}
			return meta.Delete(keyProbe)
		})
		if err == nil {
			err = db.Sync()
		}
		if err != nil {
			return err
		}
		if err := n.cfg.faults.afterCommit(); err != nil {
			return err
		}
		// The probe's state is the new checkpoint: raft.db.meta takes
		// writes and fsyncs too.
		return ck.save(db)
	}
	closeAll := func() {
		ck.close()
		_ = db.Close()
	}
	if err := probe(true); err != nil {
		closeAll()
		return fmt.Errorf("probe write: %w", err)
	}
	// Deleting the probe frees its pages inside the file for the groups'
	// next commits.
	if err := probe(false); err != nil {
		closeAll()
		return fmt.Errorf("probe write: %w", err)
	}
	n.ckMu.Lock()
	n.writeMu.Lock()
	n.dbp.Store(db)
	n.ck = ck
	n.writeMu.Unlock()
	n.ckMu.Unlock()
	n.mu.Lock()
	n.replicas = map[uint32]*replica{}
	n.mu.Unlock()
	if err := n.load(); err != nil {
		if errors.Is(err, ErrCorrupt) {
			// What is on disk fails its checks: a restart would too.
			err = fmt.Errorf("%w: reloading after a storage failure: %w", ErrStorageFailed, err)
			n.fail(err)
			return err
		}
		n.discard()
		return fmt.Errorf("reload: %w", err)
	}
	n.failMu.Lock()
	n.storErr = nil
	n.failMu.Unlock()
	n.stats.storRecoveries.Add(1)
	n.cfg.Logger.Infof("multiraft: store %d: storage under %s works again; restarted %d replicas from disk", n.cfg.Store, n.cfg.Dir, len(n.loopReplicas))
	if n.cfg.OnApplied != nil {
		// The state readers may have seen is now what is on disk: wake
		// them as after a snapshot.
		for _, r := range n.loopReplicas {
			n.cfg.OnApplied(r.shard, r.smApplied.index, true)
		}
	}
	return nil
}
