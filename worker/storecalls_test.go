package worker

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// countingStore records the store calls a worker makes, in order.
type countingStore struct {
	SessionStore
	mu    sync.Mutex
	calls []string
}

func (c *countingStore) note(call string) {
	c.mu.Lock()
	c.calls = append(c.calls, call)
	c.mu.Unlock()
}

// take returns the calls so far and forgets them.
func (c *countingStore) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = nil
	return out
}

func (c *countingStore) Get(ctx context.Context, id string, touch bool) (Session, error) {
	if touch {
		c.note("Get(touch)")
	} else {
		c.note("Get")
	}
	return c.SessionStore.Get(ctx, id, touch)
}

func (c *countingStore) CompareAndSet(ctx context.Context, id string, v uint64, data []byte) (Session, error) {
	c.note("CompareAndSet")
	return c.SessionStore.CompareAndSet(ctx, id, v, data)
}

func (c *countingStore) AppendEvents(ctx context.Context, sid, stream string, data ...[]byte) ([]uint64, error) {
	c.note("AppendEvents(" + stream + "," + strings.Repeat("x", len(data)) + ")")
	return c.SessionStore.AppendEvents(ctx, sid, stream, data...)
}

func (c *countingStore) ReadEvents(ctx context.Context, sid, stream string, after uint64, limit int, wait time.Duration) (Events, error) {
	if wait == 0 { // the long polls of watchers are not counted
		c.note("ReadEvents(" + stream + ")")
	}
	return c.SessionStore.ReadEvents(ctx, sid, stream, after, limit, wait)
}

func (c *countingStore) PutState(ctx context.Context, sid, key string, value []byte, ev *uint64) (StateEntry, error) {
	c.note("PutState(" + key + ")")
	return c.SessionStore.PutState(ctx, sid, key, value, ev)
}

func (c *countingStore) DeleteState(ctx context.Context, sid, key string) error {
	c.note("DeleteState(" + key + ")")
	return c.SessionStore.DeleteState(ctx, sid, key)
}

func (c *countingStore) ListState(ctx context.Context, sid, prefix string) ([]StateEntry, error) {
	c.note("ListState(" + prefix + ")")
	return c.SessionStore.ListState(ctx, sid, prefix)
}

// TestQuickRequestsOneRead: a request that sends nothing to the client
// before it ends, tools/call included, is answered as plain JSON although
// the client accepts SSE, and costs the store one read: the session, not
// touched while its idle timer is fresh. No in-flight record, no events.
// (With the session cache off: with it, even that read is skipped, see
// TestSessionCacheSkipsReads.)
func TestQuickRequestsOneRead(t *testing.T) {
	mem := newMemStore()
	cs := &countingStore{SessionStore: mem}
	c := clusterOver(t, []string{"a"}, func(cfg *Config) { cfg.SessionCacheTTL = 0 }, func() SessionStore { return cs })
	for _, v := range supportedVersions {
		t.Run(v, func(t *testing.T) {
			sid := initOn(t, c.urls["a"], v, `{}`)
			for _, body := range []string{
				`{"jsonrpc":"2.0","id":2,"method":"ping"}`,
				`{"jsonrpc":"2.0","id":3,"method":"tools/list"}`,
				`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`,
				`{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"test://static-text"}}`,
			} {
				cs.take()
				r := post(t, c.urls["a"], body, hdr(sid, v))
				if r.status != 200 || r.header.Get("Content-Type") != "application/json" || r.rpc.Result == nil {
					t.Fatalf("%s: %d %s %s", body, r.status, r.header.Get("Content-Type"), r.body)
				}
				if calls := cs.take(); !slices.Equal(calls, []string{"Get"}) {
					t.Fatalf("%s: store calls %v, want one Get", body, calls)
				}
			}
		})
	}
}

// TestStreamUpgrade: a call's first notification turns its answer into an
// SSE stream: the call is recorded in flight first, then the priming event
// and the notification are stored in one append; the record is gone when
// the answer is out.
func TestStreamUpgrade(t *testing.T) {
	mem := newMemStore()
	cs := &countingStore{SessionStore: mem}
	c := clusterOver(t, []string{"a"}, nil, func() SessionStore { return cs })
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	cs.take()
	body := `{"jsonrpc":"2.0","id":"u","method":"tools/call","params":{"name":"test_tool_with_progress","_meta":{"progressToken":1}}}`
	evs := openSSE(t, postReq(t, c.urls["a"], body, hdr(sid, v))).rest()
	stream := requestStream(json.RawMessage(`"u"`))
	key := inflightKey(json.RawMessage(`"u"`))
	calls := cs.take()
	put := slices.Index(calls, "PutState("+key+")")
	first := slices.Index(calls, "AppendEvents("+stream+",xx)")
	del := slices.Index(calls, "DeleteState("+key+")")
	if put < 0 || first < 0 || put > first || del < first {
		t.Fatalf("store calls %v: want PutState(%s), then AppendEvents of priming and first message, then DeleteState", calls, key)
	}
	if len(evs) != 5 || evs[0].data != "" || evs[0].id != eventID(stream, 1) || !strings.Contains(evs[4].data, `"result"`) {
		t.Fatalf("events %+v: want priming, 3 progress, answer", evs)
	}
	if _, err := mem.GetState(context.Background(), sid, key); err == nil {
		t.Fatal("in-flight record left")
	}
}

// TestLongQuietCallStreams: a call that runs past InflightDelay without
// sending anything becomes an SSE stream anyway (priming event first), so
// its client can resume it elsewhere and learn of its worker's death; a
// client that accepts only JSON gets JSON, recorded in flight meanwhile.
func TestLongQuietCallStreams(t *testing.T) {
	c := newCluster(t, []string{"a"}, nil)
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	key := inflightKey(json.RawMessage(`"q"`))
	body := `{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":"quiet"}}`

	s := openSSE(t, postReq(t, c.urls["a"], body, hdr(sid, v)))
	waitStarted(t, c.hk, "quiet")
	if ev, _ := s.next(); ev.data != "" || ev.retry == "" || ev.id != eventID(requestStream(json.RawMessage(`"q"`)), 1) {
		t.Fatalf("first event %+v, want priming", ev)
	}
	e, err := c.store.GetState(context.Background(), sid, key)
	if err != nil || !strings.Contains(string(e.Value), `"stream":"p/`) {
		t.Fatalf("in-flight record %s, %v", e.Value, err)
	}
	c.hk.release <- struct{}{}
	if evs := s.rest(); len(evs) != 1 || !strings.Contains(evs[0].data, "quiet done") {
		t.Fatalf("rest %+v", evs)
	}

	h := hdr(sid, v)
	h["Accept"] = "application/json"
	done := make(chan reply, 1)
	req := postReq(t, c.urls["a"], strings.Replace(body, `"q"`, `"q2"`, 1), h)
	go func() { done <- do(t, req) }()
	waitStarted(t, c.hk, "quiet")
	waitInflight(t, c.store, sid, inflightKey(json.RawMessage(`"q2"`)))
	c.hk.release <- struct{}{}
	if r := <-done; r.header.Get("Content-Type") != "application/json" || !strings.Contains(string(r.body), "quiet done") {
		t.Fatalf("JSON answer %s", r.body)
	}
}
