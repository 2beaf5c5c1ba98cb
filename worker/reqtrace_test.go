package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// stallingStore holds the handler's state calls (the counter's) while
// stall is set, as a shard without a leader would: until their context
// ends or, when budget is set, for budget and then with
// ErrStoreUnavailable, as the real client does once its retry budget is
// spent (storeClientConfig; TestRealStoreCallEndsWithinRequestTimeout).
type stallingStore struct {
	SessionStore
	budget time.Duration // set before the store is used
	stall  atomic.Bool
	// released ends every stall when the test ends, so a call nothing
	// bounds fails the test instead of hanging its server's Close.
	released chan struct{}
}

func newStallingStore() *stallingStore {
	return &stallingStore{SessionStore: newMemStore(), released: make(chan struct{})}
}

// releaseAtEnd ends the stalls when the test ends; called after the
// server is started, so it runs before the server's Close.
func (s *stallingStore) releaseAtEnd(t *testing.T) { t.Cleanup(func() { close(s.released) }) }

func (s *stallingStore) wait(ctx context.Context) error {
	if !s.stall.Load() {
		return nil
	}
	var spent <-chan time.Time
	if s.budget > 0 {
		t := time.NewTimer(s.budget)
		defer t.Stop()
		spent = t.C
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-spent:
		return fmt.Errorf("%w: no answer within the %s retry budget", ErrStoreUnavailable, s.budget)
	case <-s.released:
		return errors.New("released at the end of the test")
	}
}

func (s *stallingStore) GetState(ctx context.Context, sid, key string) (StateEntry, error) {
	if err := s.wait(ctx); err != nil {
		return StateEntry{}, err
	}
	return s.SessionStore.GetState(ctx, sid, key)
}

func (s *stallingStore) PutState(ctx context.Context, sid, key string, v []byte, expected *uint64) (StateEntry, error) {
	if err := s.wait(ctx); err != nil {
		return StateEntry{}, err
	}
	return s.SessionStore.PutState(ctx, sid, key, v, expected)
}

const counterCall = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"counter","arguments":{}}}`

// debugEntries returns the "mcp request" debug lines logged so far.
func debugEntries(hook *logtest.Hook) []*logrus.Entry {
	var out []*logrus.Entry
	for _, e := range hook.AllEntries() {
		if e.Message == "mcp request" {
			out = append(out, e)
		}
	}
	return out
}

// TestRequestTraceAtDebugOnly: at debug level each request's line says
// where its time went (store calls, the slowest one, a settle wait,
// queueing before the worker saw it, the JSON-RPC error); at info level
// the store is not wrapped and nothing is traced.
func TestRequestTraceAtDebugOnly(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	store := newStallingStore()
	store.budget = 200 * time.Millisecond
	srv := testWorker(t, store, "w1", WithLogger(logrus.NewEntry(log)))
	store.releaseAtEnd(t)
	sid := initSession(t, srv.URL)
	hdr := sessionHeaders(sid)
	if r := post(t, srv.URL, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, hdr); r.status != http.StatusAccepted {
		t.Fatalf("initialized: %d", r.status)
	}
	hook.Reset()

	// Sent "150ms ago": the worker counts that as queued before it.
	hdr[HeaderSentAt] = strconv.FormatInt(time.Now().Add(-150*time.Millisecond).UnixMicro(), 10)
	if r := post(t, srv.URL, counterCall, hdr); r.status != 200 || r.rpc.Error != nil {
		t.Fatalf("counter: %d %s", r.status, r.body)
	}
	es := debugEntries(hook)
	if len(es) != 1 {
		t.Fatalf("want one request line, got %d", len(es))
	}
	f := es[0].Data
	if f["method"] != "tools/call" || f["status"] != 200 || f["session"] != sid {
		t.Errorf("request fields: %v", f)
	}
	// The counter reads and writes its state and looks for subscribers.
	if n, _ := f["store_calls"].(int64); n < 2 {
		t.Errorf("store_calls %v, want the counter's reads and write", f["store_calls"])
	}
	if d, _ := f["store"].(time.Duration); d <= 0 {
		t.Errorf("store time %v", f["store"])
	}
	if s, _ := f["store_slowest"].(string); !strings.Contains(s, "State") {
		t.Errorf("store_slowest %q, want a state call", s)
	}
	if q, _ := f["queued"].(time.Duration); q < 150*time.Millisecond || q > time.Minute {
		t.Errorf("queued %v, want at least the 150ms since the sent-at stamp", f["queued"])
	}
	if _, err := time.Parse("15:04:05.000", f["started"].(string)); err != nil {
		t.Errorf("started %v: %v", f["started"], err)
	}

	// A change to a cached record waits out the cache before it is
	// acknowledged: the line shows that wait.
	hook.Reset()
	delete(hdr, HeaderSentAt)
	if r := post(t, srv.URL, `{"jsonrpc":"2.0","id":8,"method":"logging/setLevel","params":{"level":"debug"}}`, hdr); r.status != 200 {
		t.Fatalf("setLevel: %d %s", r.status, r.body)
	}
	if es := debugEntries(hook); len(es) != 1 || es[0].Data["settle"] == nil || es[0].Data["settle"].(time.Duration) < DefaultSessionCacheTTL {
		t.Errorf("setLevel's line has no settle wait of at least the cache TTL: %v", es)
	}

	// A stalled store call: the line names it, failed, and the answer's
	// JSON-RPC error.
	hook.Reset()
	store.stall.Store(true)
	if r := post(t, srv.URL, counterCall, hdr); r.status != http.StatusServiceUnavailable {
		t.Fatalf("stalled counter: %d %s", r.status, r.body)
	}
	es = debugEntries(hook)
	if len(es) != 1 {
		t.Fatalf("want one request line, got %d", len(es))
	}
	f = es[0].Data
	if f["rpc_error"] != CodeStoreUnavailable || f["store_failed"] != 1 || f["status"] != http.StatusServiceUnavailable {
		t.Errorf("stalled request's fields: %v", f)
	}

	// At info level: no trace, no wrapped store.
	info, ihook := logtest.NewNullLogger()
	info.SetLevel(logrus.InfoLevel)
	h := NewHandler(newMemStore(), WithLogger(logrus.NewEntry(info)))
	if _, wrapped := h.store.(tracedStore); wrapped || h.tracing {
		t.Fatal("the store is traced at info level")
	}
	isrv := httptest.NewServer(h)
	defer isrv.Close()
	initSession(t, isrv.URL)
	if es := debugEntries(ihook); len(es) != 0 {
		t.Errorf("request lines at info level: %v", es)
	}
}
