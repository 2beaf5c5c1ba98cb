package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestTasksAcrossWorkers: a task-augmented tools/call on A answers with a
// task at once; tasks/get, tasks/list, tasks/result and tasks/cancel work
// on the other workers; a task whose worker died is failed.
func TestTasksAcrossWorkers(t *testing.T) {
	c := newCluster(t, []string{"a", "b", "c"}, nil)
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	h := hdr(sid, v)
	h["Accept"] = "application/json"
	rpc := func(url, body string) reply {
		t.Helper()
		return post(t, url, body, h)
	}
	start := func(tool string) string {
		t.Helper()
		r := rpc(c.urls["a"], `{"jsonrpc":"2.0","id":"t-`+tool+`","method":"tools/call","params":{"name":"`+tool+`","task":{"ttl":60000}}}`)
		var res struct {
			Task struct {
				TaskID, Status string
				TTL            int64
			}
		}
		mustUnmarshal(t, r.rpc.Result, &res)
		if res.Task.TaskID == "" || res.Task.Status != taskWorking || res.Task.TTL != 60000 {
			t.Fatalf("task-augmented call: %s", r.body)
		}
		waitStarted(t, c.hk, tool)
		return res.Task.TaskID
	}
	status := func(url, id string) string {
		t.Helper()
		r := rpc(url, `{"jsonrpc":"2.0","id":2,"method":"tasks/get","params":{"taskId":"`+id+`"}}`)
		var task struct{ Status string }
		mustUnmarshal(t, r.rpc.Result, &task)
		return task.Status
	}

	// Completes: result on another worker.
	id := start("gate")
	if s := status(c.urls["b"], id); s != taskWorking {
		t.Fatalf("status %s", s)
	}
	if r := rpc(c.urls["c"], `{"jsonrpc":"2.0","id":3,"method":"tasks/list"}`); !strings.Contains(string(r.rpc.Result), id) {
		t.Fatalf("tasks/list: %s", r.body)
	}
	c.hk.release <- struct{}{}
	r := rpc(c.urls["b"], `{"jsonrpc":"2.0","id":4,"method":"tasks/result","params":{"taskId":"`+id+`"}}`)
	if !strings.Contains(string(r.rpc.Result), `"text":"done"`) || !strings.Contains(string(r.rpc.Result), `"io.modelcontextprotocol/related-task":{"taskId":"`+id+`"}`) {
		t.Fatalf("tasks/result: %s", r.body)
	}
	if s := status(c.urls["c"], id); s != taskCompleted {
		t.Fatalf("status %s", s)
	}

	// Cancelled on B: the tool on A is cancelled.
	id = start("block")
	r = rpc(c.urls["b"], `{"jsonrpc":"2.0","id":5,"method":"tasks/cancel","params":{"taskId":"`+id+`"}}`)
	if !strings.Contains(string(r.rpc.Result), `"status":"cancelled"`) {
		t.Fatalf("tasks/cancel: %s", r.body)
	}
	select {
	case cause := <-c.hk.finished:
		if !errors.Is(cause, errCancelled) {
			t.Fatalf("cause %v", cause)
		}
	case <-time.After(testDeadline):
		t.Fatal("the task's tool was not cancelled")
	}
	if s := status(c.urls["c"], id); s != taskCancelled {
		t.Fatalf("status %s", s)
	}
	if r := rpc(c.urls["c"], `{"jsonrpc":"2.0","id":6,"method":"tasks/cancel","params":{"taskId":"`+id+`"}}`); r.rpc.Error == nil || r.rpc.Error.Code != CodeInvalidParams {
		t.Fatalf("cancel twice: %s", r.body)
	}

	// Its worker died: failed, with a definite error as its result.
	id = start("gate")
	c.dead.Store("a", true)
	if s := status(c.urls["b"], id); s != taskFailed {
		t.Fatalf("status %s", s)
	}
	r = rpc(c.urls["c"], `{"jsonrpc":"2.0","id":7,"method":"tasks/result","params":{"taskId":"`+id+`"}}`)
	if r.rpc.Error == nil || r.rpc.Error.Code != CodeWorkerLost {
		t.Fatalf("result of a lost task: %s", r.body)
	}
	c.dead.Delete("a")
	c.hk.release <- struct{}{}

	for _, tc := range []struct{ body string }{
		{`{"jsonrpc":"2.0","id":8,"method":"tasks/get","params":{"taskId":"nope"}}`},
		{`{"jsonrpc":"2.0","id":8,"method":"tasks/get","params":{}}`},
	} {
		if r := rpc(c.urls["a"], tc.body); r.rpc.Error == nil || r.rpc.Error.Code != CodeInvalidParams {
			t.Errorf("%s: %s", tc.body, r.body)
		}
	}
	r = rpc(c.urls["a"], `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},"task":{}}}`)
	if r.rpc.Error == nil || r.rpc.Error.Code != CodeMethodNotFound {
		t.Fatalf("task for a tool without task support: %s", r.body)
	}
	var caps json.RawMessage = post(t, c.urls["a"], initBodyFor(v, "{}"), nil).rpc.Result
	if !strings.Contains(string(caps), `"tasks":{"cancel":{},"list":{},"requests":{"tools":{"call":{}}}}`) {
		t.Fatalf("capabilities %s", caps)
	}
}

// refusingTaskWrites is a store whose PutTask fails (as on a full disk)
// once refuse is set; reads still work.
type refusingTaskWrites struct {
	SessionStore
	refuse atomic.Bool
	puts   atomic.Int32
}

func (s *refusingTaskWrites) PutTask(ctx context.Context, sid string, task Task, expected *uint64) (Task, error) {
	if s.refuse.Load() {
		s.puts.Add(1)
		return Task{}, fmt.Errorf("%w: no space left on device", ErrStoreUnavailable)
	}
	return s.SessionStore.PutTask(ctx, sid, task, expected)
}

// TestLostTaskOnStoreRefusingWrites: tasks/get of a task whose worker died,
// on a store that refuses the write failing it, answers the store error
// once; it does not loop over reads and failed writes until the request's
// context ends.
func TestLostTaskOnStoreRefusingWrites(t *testing.T) {
	s := &refusingTaskWrites{SessionStore: newMemStore()}
	c := clusterOver(t, []string{"a", "b"}, nil, func() SessionStore { return s })
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	h := hdr(sid, v)
	h["Accept"] = "application/json"
	r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":"t","method":"tools/call","params":{"name":"gate","task":{"ttl":60000}}}`, h)
	var res struct{ Task struct{ TaskID string } }
	mustUnmarshal(t, r.rpc.Result, &res)
	waitStarted(t, c.hk, "gate")
	t.Cleanup(func() { c.hk.release <- struct{}{} })

	c.dead.Store("a", true)
	s.refuse.Store(true)
	start := time.Now()
	r = post(t, c.urls["b"], `{"jsonrpc":"2.0","id":2,"method":"tasks/get","params":{"taskId":"`+res.Task.TaskID+`"}}`, h)
	if r.status != 503 {
		t.Fatalf("tasks/get with task writes refused: %d %s, want 503", r.status, r.body)
	}
	if n := s.puts.Load(); n != 1 || time.Since(start) > testDeadline {
		t.Fatalf("%d refused writes in %v, want 1", n, time.Since(start))
	}
	s.refuse.Store(false)
}
