package multiraft

import (
	"errors"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// recordingTransport records every message the node hands its transport
// and forwards those for real stores.
type recordingTransport struct {
	Transport
	// ghost is a store that does not exist: its messages are only
	// recorded.
	ghost StoreID
	mu    sync.Mutex
	sent  []ShardMessage
}

func (t *recordingTransport) Send(to StoreID, msgs []ShardMessage) {
	t.mu.Lock()
	t.sent = append(t.sent, msgs...)
	t.mu.Unlock()
	if to != t.ghost {
		t.Transport.Send(to, msgs)
	}
}

func (t *recordingTransport) sentTo(store StoreID) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := 0
	for _, m := range t.sent {
		if ReplicaID(m.Message.GetTo()).Store() == store {
			k++
		}
	}
	return k
}

// recordingLeader starts a one-node cluster whose transport records what
// the node sends (a ghost store's messages only recorded), puts one key
// in shard 1 and returns its leader and replica.
func recordingLeader(t *testing.T, ghost StoreID) (*Node, *replica, *recordingTransport) {
	t.Helper()
	rec := &recordingTransport{ghost: ghost}
	c := newTestCluster(t, 1, func(cfg *Config) {
		rec.Transport = cfg.Transport
		cfg.Transport = rec
	})
	c.bootstrap(1)
	n := c.node(c.leader(1, 30*time.Second))
	c.mustPut(1, "k", "1")
	r, err := n.replica(1)
	if err != nil {
		t.Fatal(err)
	}
	return n, r, rec
}

// setStorageErr sets the node's storage error as a failure would, and
// returns what clears it (before the loop looks again: these tests check
// the writer alone, not the recovery).
func setStorageErr(n *Node, err error) (clear func()) {
	n.failMu.Lock()
	n.storErr = err
	n.failMu.Unlock()
	return func() {
		n.failMu.Lock()
		n.storErr = nil
		n.failMu.Unlock()
	}
}

// takeBackAll waits (30s at most) until the writer has handed back every
// batch in flight, and returns them unfinished. Loop goroutine.
func takeBackAll(t *testing.T, n *Node) []*syncBatch {
	t.Helper()
	deadline := time.After(30 * time.Second)
	var back []*syncBatch
	for n.writer.inflight > 0 {
		select {
		case <-n.writer.doneC:
		case <-deadline:
			t.Errorf("the writer did not hand %d batches back within 30s", n.writer.inflight)
			return back
		}
		back = append(back, n.takeSynced()...)
	}
	return back
}

// A batch the WAL writer failed to make durable is not finished: its
// messages (here a follower's acknowledgement of an entry) are not sent
// and its Ready is not published to raft.Storage nor advanced, whichever
// loop path takes it back (finishSynced: a failed batch returns its
// error). Each case hands a failed batch back to the loop as the writer
// would and calls the loop's code directly on the loop goroutine.
func TestFailedBatchIsNotFinished(t *testing.T) {
	for _, tc := range []struct {
		name string
		take func(*Node) error
	}{
		{"drainWrites", (*Node).drainWrites},
		{"processReady", (*Node).processReady},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const ghost = StoreID(7)
			n, r, rec := recordingLeader(t, ghost)
			st, err := n.Status(1)
			if err != nil {
				t.Fatal(err)
			}
			injected := errors.New("injected fsync failure")
			err = n.onLoop(func() error {
				_, last, _ := r.st.bounds()
				idx, from, to := last+1, uint64(r.id), uint64(NewReplicaID(ghost, 0))
				w := &readyWork{r: r, rd: raft.Ready{
					Entries: []*pb.Entry{{Index: &idx, Term: &st.Term, Type: pb.EntryType_EntryNormal.Enum()}},
					Messages: []*pb.Message{{
						Type: pb.MessageType_MsgAppResp.Enum(), From: &from, To: &to, Term: &st.Term, Index: &idx,
					}},
				}}
				// As handOver leaves it; put back below, the batch being
				// fictitious.
				r.inflight = true
				defer func() { r.inflight = false }()
				n.writer.mu.Lock()
				n.writer.done = append(n.writer.done, &syncBatch{work: []*readyWork{w}, err: injected})
				n.writer.mu.Unlock()
				n.writer.inflight++

				if err := tc.take(n); !errors.Is(err, injected) {
					t.Errorf("%s returned %v, want the batch's error %v", tc.name, err, injected)
				}
				n.flushSends()
				if k := rec.sentTo(ghost); k != 0 {
					t.Errorf("%d messages of the failed batch were sent", k)
				}
				if !r.inflight {
					t.Errorf("the failed batch's replica was finished (no longer in flight)")
				}
				if _, l, _ := r.st.bounds(); l != last {
					t.Errorf("raft.Storage's last index moved from %d to %d: the failed batch's entries were published", last, l)
				}
				if k := n.writer.inflight; k != 0 {
					t.Errorf("%d batches still counted in flight after the failed one was taken back", k)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// After a storage failure the WAL writer syncs nothing more (a later
// fsync that succeeds proves nothing about the pages whose fsync failed):
// a batch handed over while the node's storage error is set comes back
// failed with that error, and no fsync is counted.
func TestWriterDoesNotSyncAfterFailure(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.bootstrap(1)
	n := c.node(c.leader(1, 30*time.Second))
	c.mustPut(1, "k", "1")
	injected := errors.New("injected storage failure")
	err := n.onLoop(func() error {
		defer setStorageErr(n, injected)()
		syncs0 := n.Stats().Syncs
		b := &syncBatch{}
		n.handOver(b)
		back := takeBackAll(t, n)
		if len(back) != 1 || back[0] != b {
			t.Errorf("the writer handed back %d batches, want the one handed over", len(back))
		}
		if !errors.Is(b.err, injected) {
			t.Errorf("batch came back with error %v, want the storage error %v", b.err, injected)
		}
		if !b.durable.IsZero() {
			t.Errorf("batch came back marked durable at %v", b.durable)
		}
		if s := n.Stats().Syncs; s != syncs0 {
			t.Errorf("the writer ran %d fsyncs while the node's storage had failed", s-syncs0)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The WAL writer sends a synced batch's messages itself as soon as its
// fsync ends (a follower's acknowledgement does not wait for the loop's
// next turn), but not a leader's early ones, which left before the fsync,
// and nothing of a batch whose fsync failed or was refused. The test holds
// the loop (onLoop) while the writer works, so whatever reaches the
// transport was sent by the writer.
func TestWriterSendsDurableBatchMessages(t *testing.T) {
	const ghost = StoreID(7)
	for _, tc := range []struct {
		name     string
		early    bool
		failed   bool
		wantSent int
	}{
		{"durable", false, false, 1},
		{"early", true, false, 0},
		{"failed", false, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, r, rec := recordingLeader(t, ghost)
			err := n.onLoop(func() error {
				if tc.failed {
					defer setStorageErr(n, errors.New("injected storage failure"))()
				}
				from, to := uint64(r.id), uint64(NewReplicaID(ghost, 0))
				w := &readyWork{r: r, early: tc.early, appRecv: time.Now(), rd: raft.Ready{
					Messages: []*pb.Message{{Type: pb.MessageType_MsgAppResp.Enum(), From: &from, To: &to}},
				}}
				fc := n.Stats().FollowerAppends.Count
				b := &syncBatch{work: []*readyWork{w}}
				n.handOver(b)
				// Put back: the batch is fictitious and is not finished.
				defer func() { r.inflight = false }()
				takeBackAll(t, n)
				if k := rec.sentTo(ghost); k != tc.wantSent {
					t.Errorf("the writer sent %d messages of the batch, want %d", k, tc.wantSent)
				}
				if tc.failed != (b.err != nil) {
					t.Errorf("batch error %v, failed=%v", b.err, tc.failed)
				}
				// A follower's append is timed up to its acknowledgement.
				if got, want := n.Stats().FollowerAppends.Count-fc, uint64(1-btoi(tc.failed)); got != want {
					t.Errorf("%d follower acknowledgements timed, want %d", got, want)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
