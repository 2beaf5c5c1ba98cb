package worker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

// sweepWorker is one worker of the sweep test: a handler over its own
// store client, registered in etcd membership like Run does.
type sweepWorker struct {
	h      *Handler
	url    string
	member membership.Member
	reg    *membership.Registration
}

func startSweepWorker(t *testing.T, e *testcluster.Etcd, cli *clientv3.Client, srv *Server, id string) *sweepWorker {
	t.Helper()
	m := membership.Member{Role: membership.RoleWorker, ID: id, PID: 4242, StartedAt: time.Now()}
	cfg := DefaultConfig()
	cfg.Common.ID = id
	cfg.PollWait = 50 * time.Millisecond
	cfg.InflightDelay = 0 // record and stream at once
	h := NewHandler(StoreFromClient(storeClient(t, e, cli)), WithConfig(cfg), WithServer(srv), WithIncarnation(incarnationOf(m)),
		WithAlive(func(w string) bool { return workerAlive(cli, e.Prefix, w) }))
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	t.Cleanup(h.Close)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	reg, err := membership.Register(ctx, cli, e.Prefix, m, 2*time.Second, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	return &sweepWorker{h: h, url: ts.URL, member: m, reg: reg}
}

// die takes the worker out of membership (as its lease expiring would).
func (w *sweepWorker) die(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	if err := w.reg.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// responsesIn returns the JSON-RPC responses stored in a stream.
func responsesIn(t *testing.T, st SessionStore, sid, stream string) []rpcMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	ev, err := st.ReadEvents(ctx, sid, stream, 0, 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []rpcMsg
	for _, e := range ev.Events {
		if len(e.Data) > 0 && isResponse(e.Data) {
			out = append(out, decodeMsg(t, string(e.Data)))
		}
	}
	return out
}

// TestRealStoreDeathSweep: over real etcd and a real store node, a worker
// dies with a streamed request and a task running. The sweep, by the
// lowest live worker, answers the request with an error in its stream's
// event log (so a client resuming later gets it), fails the task with a
// status message, and removes the records, the index and its etcd key;
// the lazy path on a resumed stream and the sweep resolve a record once
// between them, in either order.
func TestRealStoreDeathSweep(t *testing.T) {
	e, cli := realStore(t)
	hk := newHooks()
	srv := testServer(hk)
	a := startSweepWorker(t, e, cli, srv, "a")
	b := startSweepWorker(t, e, cli, srv, "b")
	c := startSweepWorker(t, e, cli, srv, "c")
	st := StoreFromClient(storeClient(t, e, cli))
	// Runs before the servers close: let the blocked (zombie) tools end.
	t.Cleanup(func() {
		for {
			select {
			case hk.release <- struct{}{}:
			default:
				return
			}
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v := "2025-11-25"
	sid := initOn(t, a.url, v, `{}`)

	// On A: a streamed call and a task, both blocked in the tool.
	s := openSSE(t, postReq(t, a.url, `{"jsonrpc":"2.0","id":"r1","method":"tools/call","params":{"name":"gate"}}`, hdr(sid, v)))
	priming, _ := s.next()
	waitStarted(t, hk, "gate")
	r := post(t, a.url, `{"jsonrpc":"2.0","id":"t1","method":"tools/call","params":{"name":"gate","task":{"ttl":60000}}}`, hdr(sid, v))
	var tres struct {
		Task struct{ TaskID string } `json:"task"`
	}
	mustUnmarshal(t, r.rpc.Result, &tres)
	if tres.Task.TaskID == "" {
		t.Fatalf("task call: %s", r.body)
	}
	waitStarted(t, hk, "gate")
	idxA := indexSessionID(a.h.incarnation)
	if es, err := st.ListState(ctx, idxA, ""); err != nil || len(es) != 2 {
		t.Fatalf("A's index: %+v %v, want the request and the task", es, err)
	}
	s.close() // the client goes away and does not come back for now

	// Every worker names its index in etcd and sweeps while alive.
	sweep := SweeperConfig{Delay: 300 * time.Millisecond, Interval: 50 * time.Millisecond}
	actx, stopA := context.WithCancel(ctx)
	for _, w := range []*sweepWorker{a, b} {
		wctx := ctx
		if w == a {
			wctx = actx
		}
		go func() { _ = w.h.RunSweeper(wctx, cli, e.Prefix, w.member, sweep) }()
	}
	waitCond(t, func() bool {
		resp, err := cli.Get(ctx, workerIndexKey(e.Prefix, a.h.incarnation))
		return err == nil && len(resp.Kvs) == 1
	}, "A's index named in etcd")

	// A dies. B sweeps after the delay.
	stopA()
	died := time.Now()
	a.die(t)
	stream, _, _ := parseEventID(priming.id)
	waitCond(t, func() bool { return len(responsesIn(t, st, sid, stream)) > 0 }, "the request answered in its stream")
	t.Logf("swept %s after A left membership (sweep delay %s, poll %s)", time.Since(died).Round(time.Millisecond), sweep.Delay, sweep.Interval)
	waitCond(t, func() bool {
		_, err := st.ListState(ctx, idxA, "")
		resp, gerr := cli.Get(ctx, workerIndexKey(e.Prefix, a.h.incarnation))
		return errors.Is(err, ErrSessionNotFound) && gerr == nil && len(resp.Kvs) == 0
	}, "A's index and its etcd key removed")
	resps := responsesIn(t, st, sid, stream)
	if len(resps) != 1 || resps[0].Error == nil || resps[0].Error.Code != CodeWorkerLost || string(resps[0].ID) != `"r1"` {
		t.Fatalf("responses in the stream: %+v", resps)
	}
	task, err := st.GetTask(ctx, sid, tres.Task.TaskID)
	if err != nil || task.Status != taskFailed || !strings.Contains(task.StatusMessage, "stopped") {
		t.Fatalf("task %+v %v, want failed by the sweep", task, err)
	}
	if es, err := st.ListState(ctx, sid, inflightPrefix); err != nil || len(es) != 0 {
		t.Fatalf("in-flight records left: %+v %v", es, err)
	}
	// The client resumes on B: the error, once, and the stream ends.
	var got []rpcMsg
	for _, ev := range openSSE(t, getReq(t, b.url, sid, v, priming.id)).rest() {
		if ev.data != "" {
			got = append(got, decodeMsg(t, ev.data))
		}
	}
	if n := len(got); n == 0 || got[n-1].Error == nil || got[n-1].Error.Code != CodeWorkerLost {
		t.Fatalf("resumed stream %+v", got)
	}
	// tasks/result on B answers the failure.
	if r := post(t, b.url, `{"jsonrpc":"2.0","id":9,"method":"tasks/result","params":{"taskId":"`+tres.Task.TaskID+`"}}`, hdr(sid, v)); r.rpc.Error == nil || r.rpc.Error.Code != CodeWorkerLost {
		t.Fatalf("tasks/result: %s", r.body)
	}
	// Sweeping again changes nothing.
	if res, err := b.h.SweepIncarnation(ctx, a.h.incarnation, "a"); err != nil || !res.Complete || res.Resolved != 0 {
		t.Fatalf("second sweep %+v %v", res, err)
	}

	// Lazy first: C dies with a streamed call; the client resumes on B at
	// once (before any sweep), gets the error; the sweep then finds
	// nothing to resolve and adds no second error.
	s2 := openSSE(t, postReq(t, c.url, `{"jsonrpc":"2.0","id":"r2","method":"tools/call","params":{"name":"gate"}}`, hdr(sid, v)))
	p2, _ := s2.next()
	waitStarted(t, hk, "gate")
	s2.close()
	c.die(t)
	var last rpcMsg
	for _, ev := range openSSE(t, getReq(t, b.url, sid, v, p2.id)).rest() {
		if ev.data != "" {
			last = decodeMsg(t, ev.data)
		}
	}
	if last.Error == nil || last.Error.Code != CodeWorkerLost || string(last.ID) != `"r2"` {
		t.Fatalf("lazy path: last event %+v", last)
	}
	res, err := b.h.SweepIncarnation(ctx, c.h.incarnation, "c")
	if err != nil || !res.Complete || res.Resolved != 0 || res.Stale != 1 {
		t.Fatalf("sweep after the lazy path: %+v %v", res, err)
	}
	stream2, _, _ := parseEventID(p2.id)
	if resps := responsesIn(t, st, sid, stream2); len(resps) != 1 {
		t.Fatalf("responses after lazy path and sweep: %+v", resps)
	}
	// A client cannot open a worker's index as an MCP session.
	if r := post(t, b.url, `{"jsonrpc":"2.0","id":10,"method":"ping"}`, hdr(indexSessionID(b.h.incarnation), v)); r.status != 404 {
		t.Fatalf("index as a session: %d %s", r.status, r.body)
	}
	raw, _ := json.Marshal(res)
	t.Logf("lazy-first sweep: %s", raw)
}

func TestSweepDelayValidate(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	cfg.SweepDelay = ShutdownTimeout
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--sweep-delay") {
		t.Fatalf("sweep delay within the drain: %v", err)
	}
	if err := (SweeperConfig{Delay: time.Second}).Validate(); err == nil {
		t.Fatal("a zero sweep interval validated")
	}
}
