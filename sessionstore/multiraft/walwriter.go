package multiraft

import (
	"sync"
	"time"
)

// The WAL writer: the loop no longer waits in the WAL's fdatasync.
//
// Before, each loop iteration collected the Readies of every replica,
// persisted them with one write and one fdatasync, and only then sent the
// messages that had to wait, handed committed entries to the applier and
// called Advance. While the loop was in that fsync it could take no new
// proposal into a Ready, send no follower acknowledgement, see no commit
// and issue no read: nearly every stage of a write, and every ReadIndex,
// waited for an fsync of other shards' entries.
//
// Now an iteration hands the Readies that need an fsync (new entries, a
// new term or vote) to this goroutine as a syncBatch, with their records
// added to the WAL, and goes on. Those replicas are in flight: the loop
// takes no Ready of theirs (raft's Ready contract: no Ready before the
// previous one's Advance) until their batch is durable; Step, Propose,
// ReadIndex and Tick still reach them meanwhile. Every other replica's
// Ready is served at once: messages that need nothing durable (heartbeats
// and their answers, read-index rounds, a leader's appends), commit-index
// HardStates (written, not fsynced, as before) and committed entries that
// are durable already. The writer takes every batch queued while it was
// in an fsync and makes them durable with one write and ONE fdatasync
// (group commit as before, and more of it: batches gather while a sync
// runs), sends the messages that waited for them (sendSynced: a
// follower's acknowledgement leaves without waiting for a loop turn) and
// hands them back; the loop finishes them at its next turn as the old
// iteration did after its fsync: the entries go to raft.Storage, the rest
// of the committed entries go to the applier, Advance.
//
// So a follower acknowledges, and a leader counts its own log for a
// quorum, only once the entries are durable (the messages of a batch wait
// for it, a leader's appends excepted as before; Advance, which lets raft
// count the leader's own log, comes after the fsync). A new term or vote
// makes its batch wait the same way.
//
// Why not raft's AsyncStorageWrites, which would also let one replica
// take new proposals while its own append is in flight: the store spreads
// its keys over 64 shards, so a shard rarely has a second write waiting
// behind its first, and the loop, not the shard, was what every write
// waited for. This keeps raft's synchronous Ready/Advance contract,
// snapshot restores, conf changes, compaction and the storage-failure
// recovery as they were: an iteration with a snapshot or a conf change
// first waits for the batches in flight and then runs the old,
// synchronous path (processSync).
//
// A failed write or fsync fails every batch the writer holds: none of
// them is finished (nothing of theirs is sent or acknowledged), and the
// loop recovers from disk (storagefail.go) once the writer is idle.

// syncBatch is one iteration's Readies waiting for their WAL records to be
// durable.
type syncBatch struct {
	work []*readyWork
	// durable is when the fsync that covered them ended; err is why they
	// are not durable.
	durable time.Time
	err     error
}

type walWriter struct {
	mu    sync.Mutex
	queue []*syncBatch // handed over, not taken by the writer yet
	done  []*syncBatch // synced or failed, not taken back by the loop yet
	// wake wakes the writer; doneC tells the loop there is something in
	// done (both hold one signal at most).
	wake, doneC     chan struct{}
	stopC, stoppedC chan struct{}
	// inflight counts the batches handed over and not taken back (loop
	// goroutine only).
	inflight int
}

func newWALWriter() *walWriter {
	return &walWriter{
		wake:     make(chan struct{}, 1),
		doneC:    make(chan struct{}, 1),
		stopC:    make(chan struct{}),
		stoppedC: make(chan struct{}),
	}
}

// runWALWriter makes the handed batches durable, all those queued at once
// with one fdatasync.
func (n *Node) runWALWriter() {
	ww := n.writer
	defer close(ww.stoppedC)
	var box outbox
	for {
		select {
		case <-ww.stopC:
			return
		case <-ww.wake:
		}
		for {
			ww.mu.Lock()
			batches := ww.queue
			ww.queue = nil
			ww.mu.Unlock()
			if len(batches) == 0 {
				break
			}
			// After a failure nothing is synced any more: a later fsync
			// that succeeds proves nothing about the pages whose fsync
			// failed (storagefail.go).
			err := n.err()
			if err == nil {
				t0 := time.Now()
				if e := n.wal.sync(n.cfg.faults); e != nil {
					err = n.storageFailed("WAL append", e)
				} else {
					t1 := time.Now()
					n.stats.syncs.Add(1)
					n.stats.syncNanos.Add(uint64(t1.Sub(t0)))
					for _, b := range batches {
						b.durable = t1
					}
					n.sendSynced(batches, &box, t1)
				}
			}
			for _, b := range batches {
				b.err = err
			}
			ww.mu.Lock()
			ww.done = append(ww.done, batches...)
			ww.mu.Unlock()
			select {
			case ww.doneC <- struct{}{}:
			default:
			}
		}
	}
}

// sendSynced sends the messages of batches now durable, but a leader's
// early ones (sent before the fsync): a follower's acknowledgement leaves
// as soon as its entries are durable, without waiting for the loop's next
// turn (which may be busy with other shards, or be the leader's own work
// on this node) to take the batch back: from append received to
// acknowledgement sent went from 2.0 to 1.6 ms at 16 clients on 2 cores,
// against a 0.25 ms flush (docs/benchmarks.md).
//
// Safe as the loop's send after finishSynced was: raft's Ready contract
// asks only that the entries, HardState and snapshot be durable before
// the messages leave, and they are; raft.Storage learns of the entries
// later (finish), which raft allows (they are in its unstable log until
// Advance). Per replica the order holds: its next Ready waits for this
// batch to be finished, which comes after this send. Writer goroutine.
func (n *Node) sendSynced(batches []*syncBatch, box *outbox, now time.Time) {
	for _, b := range batches {
		box.add(b.work, func(w *readyWork) bool { return !w.early })
		for _, w := range b.work {
			if !w.appRecv.IsZero() {
				n.stats.timings.followerCount.Add(1)
				n.stats.timings.followerNanos.Add(nanos(now.Sub(w.appRecv)))
				w.appRecv = time.Time{}
			}
		}
	}
	n.flush(*box)
}

// stopWALWriter stops the writer once its sync in progress, if any, is
// over. Batches still queued are dropped: the node is stopping.
func (n *Node) stopWALWriter() {
	close(n.writer.stopC)
	<-n.writer.stoppedC
}

// handOver queues b for the writer; its replicas are in flight until the
// loop finishes it. Loop goroutine.
func (n *Node) handOver(b *syncBatch) {
	ww := n.writer
	for _, w := range b.work {
		w.r.inflight = true
	}
	ww.mu.Lock()
	ww.queue = append(ww.queue, b)
	ww.mu.Unlock()
	ww.inflight++
	select {
	case ww.wake <- struct{}{}:
	default:
	}
}

// takeSynced takes back the batches the writer is done with. Loop goroutine.
func (n *Node) takeSynced() []*syncBatch {
	ww := n.writer
	ww.mu.Lock()
	done := ww.done
	ww.done = nil
	ww.mu.Unlock()
	ww.inflight -= len(done)
	return done
}

// finishSynced finishes the batches that are durable now (finish) and
// reports whether there were any. A failed one returns its error: it and
// every batch after it are dropped, their replicas stay in flight until
// the recovery replaces them. Loop goroutine.
func (n *Node) finishSynced() (bool, error) {
	done := n.takeSynced()
	for _, b := range done {
		if b.err != nil {
			return true, b.err
		}
		for _, w := range b.work {
			for _, p := range w.placed {
				p.durable = b.durable
			}
		}
		n.finish(b.work, true)
	}
	return len(done) > 0, nil
}

// drainWrites waits for every batch in flight and finishes it: for what
// needs the WAL to itself (a new segment, a new replica's records) or
// needs no replica in flight (a snapshot's restore, a conf change). Loop
// goroutine.
func (n *Node) drainWrites() error {
	for {
		if _, err := n.finishSynced(); err != nil {
			return err
		}
		if n.writer.inflight == 0 {
			return nil
		}
		<-n.writer.doneC
	}
}

// dropWrites waits until the writer holds no batch and drops them all,
// unfinished: after a storage failure, before the recovery touches the WAL
// or the replicas. Loop goroutine.
func (n *Node) dropWrites() {
	clear(n.outbox) // messages are lost, as on any network
	for {
		n.takeSynced()
		if n.writer.inflight == 0 {
			return
		}
		<-n.writer.doneC
	}
}
