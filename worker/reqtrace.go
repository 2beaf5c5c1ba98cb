package worker

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// Per-request timing for the debug log. A request that stalls for seconds
// during a failover (a store call waiting out a shard's election, a settle
// wait, time spent before the worker even saw it) is told apart only by
// where its time went, and the request duration histogram cannot say that
// for one request. The trace exists only while the logger is at debug
// level: at any other level the handler neither wraps the store nor
// allocates a trace, so the hot path pays nothing for it.

// HeaderSentAt carries when a client (erlmcp loadtest) sent the request,
// in Unix microseconds; at debug level the worker logs the time from then
// to its own arrival as queued (the front, the network, a paused
// process). Clocks of one machine only: across machines it includes their
// skew.
const HeaderSentAt = "X-Erlmcp-Sent-At"

// reqTrace is one request's timing. Store calls may run in goroutines of
// the request (the in-flight recording timer), hence the atomics.
type reqTrace struct {
	storeCalls atomic.Int64
	storeNanos atomic.Int64
	settleNano atomic.Int64

	// received is when the body was read and decoded (post), zero
	// before; written by the request's goroutine before any other runs.
	received time.Time

	mu          sync.Mutex
	slowestOp   string
	slowestNano int64
	failedOps   int
}

type traceKey struct{}

// withTrace returns ctx carrying a new trace, or ctx itself and nil when
// the handler does not trace (the log is not at debug level).
func (h *Handler) withTrace(ctx context.Context) (context.Context, *reqTrace) {
	if !h.tracing {
		return ctx, nil
	}
	t := &reqTrace{}
	return context.WithValue(ctx, traceKey{}, t), t
}

// traceOf returns ctx's trace, nil when there is none (a nil trace
// records nothing).
func traceOf(ctx context.Context) *reqTrace {
	t, _ := ctx.Value(traceKey{}).(*reqTrace)
	return t
}

// store records one store call of the request.
func (t *reqTrace) store(op string, d time.Duration, err error) {
	if t == nil {
		return
	}
	t.storeCalls.Add(1)
	t.storeNanos.Add(int64(d))
	t.mu.Lock()
	if int64(d) > t.slowestNano {
		t.slowestOp, t.slowestNano = op, int64(d)
	}
	if err != nil {
		t.failedOps++
	}
	t.mu.Unlock()
}

// settled records a session cache settle wait (sessioncache.go).
func (t *reqTrace) settled(d time.Duration) {
	if t != nil {
		t.settleNano.Add(int64(d))
	}
}

// fields are the trace's log fields.
func (t *reqTrace) fields(f logrus.Fields) {
	f["store_calls"] = t.storeCalls.Load()
	f["store"] = time.Duration(t.storeNanos.Load())
	t.mu.Lock()
	if t.slowestOp != "" {
		f["store_slowest"] = t.slowestOp + " " + time.Duration(t.slowestNano).String()
	}
	if t.failedOps > 0 {
		f["store_failed"] = t.failedOps
	}
	t.mu.Unlock()
	if s := t.settleNano.Load(); s > 0 {
		f["settle"] = time.Duration(s)
	}
}

// queuedSince is the time from a HeaderSentAt value to at; ok is false
// when the header is absent or does not parse.
func queuedSince(sentAt string, at time.Time) (time.Duration, bool) {
	if sentAt == "" {
		return 0, false
	}
	us, err := strconv.ParseInt(sentAt, 10, 64)
	if err != nil {
		return 0, false
	}
	return at.Sub(time.UnixMicro(us)), true
}

// tracedStore times every call into the trace of its ctx. The handler
// wraps its store in it only when tracing.
type tracedStore struct{ s SessionStore }

func (s tracedStore) Create(ctx context.Context, id string, data []byte, idleTTL time.Duration) (Session, error) {
	t0 := time.Now()
	r, err := s.s.Create(ctx, id, data, idleTTL)
	traceOf(ctx).store("Create", time.Since(t0), err)
	return r, err
}

func (s tracedStore) Get(ctx context.Context, id string, touch bool) (Session, error) {
	t0 := time.Now()
	r, err := s.s.Get(ctx, id, touch)
	op := "Get"
	if touch {
		op = "Get(touch)"
	}
	traceOf(ctx).store(op, time.Since(t0), err)
	return r, err
}

func (s tracedStore) CompareAndSet(ctx context.Context, id string, expectedVersion uint64, data []byte) (Session, error) {
	t0 := time.Now()
	r, err := s.s.CompareAndSet(ctx, id, expectedVersion, data)
	traceOf(ctx).store("CompareAndSet", time.Since(t0), err)
	return r, err
}

func (s tracedStore) Delete(ctx context.Context, id string) error {
	t0 := time.Now()
	err := s.s.Delete(ctx, id)
	traceOf(ctx).store("Delete", time.Since(t0), err)
	return err
}

func (s tracedStore) AppendEvents(ctx context.Context, sessionID, stream string, data ...[]byte) ([]uint64, error) {
	t0 := time.Now()
	r, err := s.s.AppendEvents(ctx, sessionID, stream, data...)
	traceOf(ctx).store("AppendEvents", time.Since(t0), err)
	return r, err
}

func (s tracedStore) ReadEvents(ctx context.Context, sessionID, stream string, afterSeq uint64, limit int, wait time.Duration) (Events, error) {
	t0 := time.Now()
	r, err := s.s.ReadEvents(ctx, sessionID, stream, afterSeq, limit, wait)
	op := "ReadEvents"
	if wait > 0 {
		op = "ReadEvents(poll)" // a long poll waits by design
	}
	traceOf(ctx).store(op, time.Since(t0), err)
	return r, err
}

func (s tracedStore) GetState(ctx context.Context, sessionID, key string) (StateEntry, error) {
	t0 := time.Now()
	r, err := s.s.GetState(ctx, sessionID, key)
	traceOf(ctx).store("GetState", time.Since(t0), notFoundIsNoFailure(err))
	return r, err
}

func (s tracedStore) PutState(ctx context.Context, sessionID, key string, value []byte, expectedVersion *uint64) (StateEntry, error) {
	t0 := time.Now()
	r, err := s.s.PutState(ctx, sessionID, key, value, expectedVersion)
	traceOf(ctx).store("PutState", time.Since(t0), err)
	return r, err
}

func (s tracedStore) DeleteState(ctx context.Context, sessionID, key string) error {
	t0 := time.Now()
	err := s.s.DeleteState(ctx, sessionID, key)
	traceOf(ctx).store("DeleteState", time.Since(t0), err)
	return err
}

func (s tracedStore) ListState(ctx context.Context, sessionID, prefix string) ([]StateEntry, error) {
	t0 := time.Now()
	r, err := s.s.ListState(ctx, sessionID, prefix)
	traceOf(ctx).store("ListState", time.Since(t0), err)
	return r, err
}

func (s tracedStore) PutTask(ctx context.Context, sessionID string, t Task, expectedVersion *uint64) (Task, error) {
	t0 := time.Now()
	r, err := s.s.PutTask(ctx, sessionID, t, expectedVersion)
	traceOf(ctx).store("PutTask", time.Since(t0), err)
	return r, err
}

func (s tracedStore) GetTask(ctx context.Context, sessionID, taskID string) (Task, error) {
	t0 := time.Now()
	r, err := s.s.GetTask(ctx, sessionID, taskID)
	traceOf(ctx).store("GetTask", time.Since(t0), notFoundIsNoFailure(err))
	return r, err
}

func (s tracedStore) ListTasks(ctx context.Context, sessionID, afterTaskID string, limit int) ([]Task, string, error) {
	t0 := time.Now()
	r, next, err := s.s.ListTasks(ctx, sessionID, afterTaskID, limit)
	traceOf(ctx).store("ListTasks", time.Since(t0), err)
	return r, next, err
}

// notFoundIsNoFailure drops an absent key or task: an answer, not a
// failed call.
func notFoundIsNoFailure(err error) error {
	if errors.Is(err, ErrNotFound) && !errors.Is(err, ErrSessionNotFound) {
		return nil
	}
	return err
}

// logRequest writes a request's debug line: what it was, how it was
// answered, and where its time went.
func (h *Handler) logRequest(r *http.Request, label string, w *statusWriter, start time.Time, d time.Duration, t *reqTrace) {
	// The log line's own time is its end, to the second in JSON logs;
	// a stall is matched with a client's report by when it began.
	f := logrus.Fields{"http_method": r.Method, "method": label, "status": w.status,
		"started": start.UTC().Format("15:04:05.000"), "duration": d, "session": r.Header.Get(HeaderSessionID)}
	if w.rpcCode != 0 {
		f["rpc_error"] = w.rpcCode
	}
	if !t.received.IsZero() {
		f["read"] = t.received.Sub(start)
	}
	if q, ok := queuedSince(r.Header.Get(HeaderSentAt), start); ok {
		f["queued"] = q
	}
	t.fields(f)
	h.log.WithFields(f).Debug("mcp request")
}

// settle is sessionCache.settle, its wait recorded in ctx's trace.
func (h *Handler) settle(ctx context.Context, old sessionRecord) {
	if d := h.cache.settle(old); d > 0 {
		traceOf(ctx).settled(d)
	}
}
