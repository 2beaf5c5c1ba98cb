package sessionstore

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
)

// smEnv applies commands straight to the state machine, with chosen times
// and limits.
type smEnv struct {
	t  *testing.T
	bs *boltStorage
	lm limits
}

func newSM(t *testing.T, lm limits) *smEnv {
	bs, err := openBolt(t.TempDir(), "s1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bs.close() })
	return &smEnv{t: t, bs: bs, lm: lm}
}

var reqN int

func (e *smEnv) do(cmd command) outcome {
	e.t.Helper()
	reqN++
	if cmd.RequestID == "" && cmd.Op != opExpire {
		cmd.RequestID = fmt.Sprintf("r%d", reqN)
	}
	cmd.Limits = e.lm
	out, err := e.bs.apply(context.Background(), cmd)
	if err != nil {
		e.t.Fatalf("%s: %v", cmd.Op, err)
	}
	return out
}

// keysUnder counts the keys of id in every per-session bucket.
func (e *smEnv) keysUnder(id string) map[string]int {
	counts := map[string]int{}
	_ = e.bs.db.View(func(tx *bolt.Tx) error {
		st := shardTx{root: tx.Bucket(shardRoot(0))}
		for _, name := range childBuckets {
			if b := st.existing(name); b != nil {
				c := b.Cursor()
				for k, _ := c.Seek(childPrefix(id)); k != nil && bytes.HasPrefix(k, childPrefix(id)); k, _ = c.Next() {
					counts[name]++
				}
			}
		}
		if b := st.existing(bkSessMeta); b != nil && b.Get([]byte(id)) != nil {
			counts[bkSessMeta]++
		}
		return nil
	})
	return counts
}

func TestLimitsPerSession(t *testing.T) {
	e := newSM(t, limits{EventRetention: 10, MaxStreams: 2, MaxStateKeys: 3, MaxTasks: 2})
	e.do(command{Op: opCreate, ID: "s", NowMs: 1})
	for i := 0; i < 3; i++ {
		if out := e.do(command{Op: opPutState, ID: "s", Key: fmt.Sprint("k", i), NowMs: 2}); out.Status != nil {
			t.Fatal(out.Status.Err())
		}
	}
	out := e.do(command{Op: opPutState, ID: "s", Key: "k3", NowMs: 2})
	if out.Status.Code() != codes.ResourceExhausted || !strings.Contains(out.Status.Message(), "state_keys_per_session = 3") {
		t.Fatalf("4th key: %v", out.err())
	}
	// Rewriting an existing key is fine; deleting one makes room.
	if out := e.do(command{Op: opPutState, ID: "s", Key: "k0", Data: []byte("x"), NowMs: 2}); out.Status != nil || out.Entry.Version != 2 {
		t.Fatalf("rewrite at the limit: %v", out.err())
	}
	e.do(command{Op: opDeleteState, ID: "s", Key: "k1", NowMs: 2})
	if out := e.do(command{Op: opPutState, ID: "s", Key: "k3", NowMs: 2}); out.Status != nil {
		t.Fatalf("after a delete: %v", out.err())
	}

	for i := 0; i < 2; i++ {
		if out := e.do(command{Op: opPutTask, ID: "s", Task: &pb.Task{TaskId: fmt.Sprint("t", i)}, NowMs: 3}); out.Status != nil {
			t.Fatal(out.err())
		}
	}
	out = e.do(command{Op: opPutTask, ID: "s", Task: &pb.Task{TaskId: "t2"}, NowMs: 3})
	if out.Status.Code() != codes.ResourceExhausted || !strings.Contains(out.Status.Message(), "tasks_per_session = 2") {
		t.Fatalf("3rd task: %v", out.err())
	}

	// Streams: at most two, events at most ten each, whatever was appended.
	for i := 0; i < 5; i++ {
		for j := 0; j < 3; j++ {
			e.do(command{Op: opAppendEvents, ID: "s", Stream: fmt.Sprint("st", i), Events: [][]byte{{1}, {2}, {3}, {4}, {5}}, NowMs: 4})
		}
	}
	got := e.keysUnder("s")
	if got[bkStreams] != 2 || got[bkStreamAge] != 2 || got[bkEvents] != 20 || got[bkState] != 3 || got[bkTasks] != 2 {
		t.Fatalf("kept %v; want 2 streams of 10 events, 3 keys, 2 tasks", got)
	}
}

// TestCascadeLeavesNothing: delete and expiry remove every key of the
// session in the same transaction, and only that session's.
func TestCascadeLeavesNothing(t *testing.T) {
	e := newSM(t, limits{EventRetention: 100, MaxStreams: 10, MaxStateKeys: 10, MaxTasks: 10})
	fillSM := func(id string, ttl int64) {
		e.do(command{Op: opCreate, ID: id, IdleTTLMs: ttl, NowMs: 1000})
		e.do(command{Op: opAppendEvents, ID: id, Stream: "a", Events: [][]byte{{1}, {2}}, NowMs: 1000})
		e.do(command{Op: opAppendEvents, ID: id, Stream: "b", Events: [][]byte{{1}}, NowMs: 1000})
		e.do(command{Op: opPutState, ID: id, Key: "k", NowMs: 1000})
		e.do(command{Op: opPutTask, ID: id, Task: &pb.Task{TaskId: "t"}, NowMs: 1000})
	}
	// "s" and "s2": one id a prefix of the other must not matter.
	fillSM("s", 0)
	fillSM("s2", 100)
	fillSM("s-x", 0)
	if out := e.do(command{Op: opDelete, ID: "s", NowMs: 1001}); out.Status != nil {
		t.Fatal(out.err())
	}
	if got := e.keysUnder("s"); len(got) != 0 {
		t.Fatalf("left after delete: %v", got)
	}
	// Expiry, found by a later command at a time past the TTL.
	if out := e.do(command{Op: opExpire, ID: "s2", NowMs: 1050}); out.expired {
		t.Fatal("expired before its TTL")
	}
	if out := e.do(command{Op: opExpire, ID: "s2", NowMs: 1200}); !out.expired {
		t.Fatal("not expired after its TTL")
	}
	if got := e.keysUnder("s2"); len(got) != 0 {
		t.Fatalf("left after expiry: %v", got)
	}
	if got := e.keysUnder("s-x"); got[bkEvents] != 3 || got[bkStreams] != 2 || got[bkState] != 1 || got[bkTasks] != 1 || got[bkSessMeta] != 1 {
		t.Fatalf("the other session lost data: %v", got)
	}
}

// TestNewOpsReplayFirstOutcome: a retried put of state or a task, or an
// append, is answered with the first outcome even after later writes.
func TestNewOpsReplayFirstOutcome(t *testing.T) {
	e := newSM(t, limits{EventRetention: 100, MaxStreams: 10, MaxStateKeys: 10, MaxTasks: 10})
	e.do(command{Op: opCreate, ID: "s", NowMs: 1})
	put := command{Op: opPutState, ID: "s", Key: "k", Data: []byte("v"), RequestID: "p", NowMs: 2}
	task := command{Op: opPutTask, ID: "s", Task: &pb.Task{TaskId: "t", Result: []byte("res")}, HasExpected: true, RequestID: "t", NowMs: 2}
	app := command{Op: opAppendEvents, ID: "s", Stream: "a", Events: [][]byte{{1}}, RequestID: "a", NowMs: 2}
	first := []outcome{e.do(put), e.do(task), e.do(app)}
	e.do(command{Op: opPutState, ID: "s", Key: "k", NowMs: 3})
	e.do(command{Op: opPutTask, ID: "s", Task: &pb.Task{TaskId: "t"}, NowMs: 3})
	e.do(command{Op: opAppendEvents, ID: "s", Stream: "a", Events: [][]byte{{2}}, NowMs: 3})
	put.NowMs, task.NowMs, app.NowMs = 4, 4, 4
	again := []outcome{e.do(put), e.do(task), e.do(app)}
	if again[0].Entry.GetVersion() != 1 || string(again[0].Entry.GetValue()) != "v" || first[0].Entry.GetVersion() != 1 {
		t.Fatalf("state replay %v, first %v", again[0].Entry, first[0].Entry)
	}
	if again[1].Task.GetVersion() != 1 || string(again[1].Task.GetResult()) != "res" || again[1].Task.GetUpdatedAtUnixMs() != 2 {
		t.Fatalf("task replay %v", again[1].Task)
	}
	if fmt.Sprint(again[2].Seqs) != "[1]" {
		t.Fatalf("append replay %v", again[2].Seqs)
	}
	// A conditional put differs from an unconditional one with the same id.
	put.HasExpected = true
	if out := e.do(put); out.Status.Code() != codes.InvalidArgument {
		t.Fatalf("reused id for another request: %v", out.err())
	}
}
