package worker

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"
)

// Cancellation across workers. The worker running a tracked request, once
// it runs past InflightDelay or shows an SSE stream (tracker), writes state
// key inflight/<id> (its worker id and stream) and long-polls the session's
// "ctl" stream; notifications/cancelled, on whichever worker it lands,
// appends {"cancel": id} to "ctl" (and cancels at once a request that
// worker runs itself), and the running worker cancels the request's
// context.

// errCancelled is the cause of a request context the client cancelled.
var errCancelled = errors.New("the client cancelled the request")

type ctlEvent struct {
	Cancel json.RawMessage `json:"cancel"`
	Reason string          `json:"reason,omitempty"`
}

// cancelLookBack is how far before a request's arrival a delayed
// registration still looks for a cancellation of it in the control stream:
// the cancellation may have reached another worker first, and the store
// stamps events with its own clock, which may be behind this worker's.
// Looking back further is safe: a session never reuses a request id (MCP
// requires ids to be unique in a session), so an older cancellation of the
// same id is one the client sent before this request reached us.
const cancelLookBack = 5 * time.Second

// tracker records one request in flight lazily: only when register is
// called (the request runs long, or its stream is about to become visible
// to the client), so a quick request makes no store call for it. A
// cancellation that another worker took before registration is in the
// control stream; register finds it there by time (since arrival −
// cancelLookBack) and cancels the request then. A request that ends
// before registering cannot be cancelled: it already finished, which MCP
// allows ("the request may have already completed").
type tracker struct {
	h       *Handler
	sid     string
	id      json.RawMessage
	stream  string
	key     string // runningKey(sid, id); "" when it has none
	arrived time.Time
	ctx     context.Context // cancelled with cause errCancelled
	cancel  context.CancelCauseFunc

	mu       sync.Mutex
	finished bool
	untrack  func() // set once registered
}

// newTracker starts tracking a request on stream ("": it answers as JSON).
func (h *Handler) newTracker(ctx context.Context, sid string, id json.RawMessage, stream string) *tracker {
	rctx, cancel := context.WithCancelCause(ctx)
	t := &tracker{h: h, sid: sid, id: id, stream: stream, arrived: time.Now(), ctx: rctx, cancel: cancel}
	if k, ok := runningKey(sid, id); ok {
		t.key = k
		h.running.Store(k, t)
	}
	return t
}

// runningKey names a request of a session in Handler.running: the id in
// one JSON spelling, so 1 and 1.0 or "a" and "\u0061" meet.
func runningKey(sid string, id json.RawMessage) (string, bool) {
	if plainID(id) {
		// Already in the spelling the round trip below gives: every
		// request pays for this key (twice before), and a decode and an
		// encode of the id were a tenth of the worker's JSON time.
		return sid + "\x00" + string(id), true
	}
	return canonicalIDKey(sid, id)
}

// canonicalIDKey is runningKey's general case: the id decoded and encoded
// again.
func canonicalIDKey(sid string, id json.RawMessage) (string, bool) {
	var v any
	if json.Unmarshal(id, &v) != nil {
		return "", false
	}
	switch v.(type) {
	case string, float64:
	default:
		return "", false
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", false
	}
	return sid + "\x00" + string(b), true
}

// maxPlainIDDigits bounds plainID's integers: every integer of up to 15
// digits is exactly a float64 and encodes back unchanged.
const maxPlainIDDigits = 15

// plainID reports whether id is spelled as runningKey's decode and
// encode would spell it: an integer of up to maxPlainIDDigits digits
// without a leading zero (or 0 itself), or a string of printable ASCII
// with nothing encoding/json escapes ('"', '\\', '<', '>', '&').
func plainID(id json.RawMessage) bool {
	n := len(id)
	if n >= 2 && id[0] == '"' && id[n-1] == '"' {
		for _, c := range id[1 : n-1] {
			if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				return false
			}
		}
		return true
	}
	digits := id
	if n > 0 && id[0] == '-' {
		digits = id[1:]
	}
	if len(digits) == 0 || len(digits) > maxPlainIDDigits || digits[0] == '0' && (len(digits) > 1 || len(id) > 1) {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// register records the request in flight and starts watching for its
// cancellation; later calls, and calls after done, do nothing.
func (t *tracker) register() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.finished || t.untrack != nil {
		return nil
	}
	d, err := t.h.track(t.ctx, t.cancel, t.sid, t.id, t.stream, t.arrived)
	if err != nil {
		return err
	}
	t.untrack = d
	return nil
}

// registered reports whether the request is recorded in flight.
func (t *tracker) registered() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.untrack != nil
}

// done ends the tracking: it waits for a registration under way, removes
// the record and cancels the context.
func (t *tracker) done() {
	if t.key != "" {
		t.h.running.CompareAndDelete(t.key, t)
	}
	t.mu.Lock()
	t.finished = true
	d := t.untrack
	t.mu.Unlock()
	if d != nil {
		d()
	}
	t.cancel(nil)
}

// trackNow records the request in flight at once (track); done also
// cancels the returned context.
func (h *Handler) trackNow(ctx context.Context, sid string, id json.RawMessage, stream string) (context.Context, func(), error) {
	rctx, cancel := context.WithCancelCause(ctx)
	untrack, err := h.track(rctx, cancel, sid, id, stream, time.Time{})
	if err != nil {
		cancel(nil)
		return nil, nil, err
	}
	return rctx, func() { untrack(); cancel(nil) }, nil
}

// track records the request in flight and watches for its cancellation:
// cancel(errCancelled) when the client cancels, including a cancellation
// appended since arrived (zero: only later ones); the returned func
// removes the record and stops the watch.
func (h *Handler) track(rctx context.Context, cancel context.CancelCauseFunc, sid string, id json.RawMessage, stream string, arrived time.Time) (func(), error) {
	ctx, cctx := context.WithTimeout(context.WithoutCancel(rctx), h.cfg.RequestTimeout)
	defer cctx()
	start, err := h.store.ReadEvents(ctx, sid, streamCtl, 0, 1, 0)
	if err != nil {
		return nil, err
	}
	val, _ := json.Marshal(inflight{Worker: h.cfg.Common.ID, Stream: stream, ID: id})
	key := inflightKey(id)
	// Indexed first, so no record of this worker is unfindable when it
	// dies (sweep.go).
	h.indexAdd(ctx, sid, key)
	if _, err := h.store.PutState(ctx, sid, key, val, nil); err != nil {
		h.indexDel(ctx, sid, key)
		return nil, err
	}
	if !arrived.IsZero() {
		hit, err := h.cancelledSince(ctx, sid, id, start, arrived.Add(-cancelLookBack))
		if err != nil {
			h.log.WithError(err).Warn("reading earlier cancellations")
		}
		if hit {
			cancel(errCancelled)
		}
	}
	wctx, stop := context.WithCancel(rctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		after := start.LastSeq
		for wctx.Err() == nil {
			ev, err := h.store.ReadEvents(wctx, sid, streamCtl, after, 32, h.cfg.PollWait)
			if err != nil {
				if errors.Is(err, ErrSessionNotFound) {
					cancel(err)
					return
				}
				select { // the store hiccuped: try again shortly
				case <-wctx.Done():
				case <-time.After(h.cfg.PollWait / 4):
				}
				continue
			}
			for _, e := range ev.Events {
				after = e.Seq
				var c ctlEvent
				if json.Unmarshal(e.Data, &c) == nil && sameID(c.Cancel, id) {
					cancel(errCancelled)
					return
				}
			}
		}
	})
	done := func() {
		stop()
		wg.Wait()
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.RequestTimeout)
		defer dcancel()
		if err := h.store.DeleteState(dctx, sid, key); err != nil && !errors.Is(err, ErrNotFound) {
			h.log.WithError(err).Warn("removing an in-flight record")
			return // still indexed: a sweep removes it if this worker dies
		}
		h.indexDel(dctx, sid, key)
	}
	return done, nil
}

// cancelledSince reports whether the control stream (bounds from start)
// holds a cancellation of id created at or after since, reading back from
// its newest event.
func (h *Handler) cancelledSince(ctx context.Context, sid string, id json.RawMessage, start Events, since time.Time) (bool, error) {
	const page = 32
	if start.FirstRetainedSeq == 0 {
		return false, nil
	}
	for hi := start.LastSeq; hi >= start.FirstRetainedSeq && hi > 0; {
		lo := start.FirstRetainedSeq
		if hi >= page && hi-page+1 > lo {
			lo = hi - page + 1
		}
		ev, err := h.store.ReadEvents(ctx, sid, streamCtl, lo-1, int(hi-lo+1), 0)
		if err != nil {
			return false, err
		}
		old := false
		for _, e := range ev.Events {
			if e.Seq > hi {
				break
			}
			if e.CreatedAt.Before(since) {
				old = true
				continue
			}
			var c ctlEvent
			if json.Unmarshal(e.Data, &c) == nil && sameID(c.Cancel, id) {
				return true, nil
			}
		}
		if old || lo <= start.FirstRetainedSeq {
			return false, nil
		}
		hi = lo - 1
	}
	return false, nil
}

// sameID compares two JSON-RPC ids as JSON values.
func sameID(a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	switch x.(type) {
	case string, float64:
		return x == y
	}
	return false
}

// notifyCancelled passes a cancellation to the worker running the request,
// through the session's control stream.
func notifyCancelled(ctx context.Context, h *Handler, s *session, params json.RawMessage) error {
	var p struct {
		RequestID json.RawMessage `json:"requestId"`
		Reason    string          `json:"reason"`
	}
	if len(params) == 0 || json.Unmarshal(params, &p) != nil || len(p.RequestID) == 0 || isNull(p.RequestID) {
		return nil // nothing to cancel
	}
	// A request this worker runs stops at once; the control stream
	// still carries the cancellation to the others (and to a task).
	if k, ok := runningKey(s.id, p.RequestID); ok {
		if t, ok := h.running.Load(k); ok {
			t.(*tracker).cancel(errCancelled)
		}
	}
	b, _ := json.Marshal(ctlEvent{Cancel: p.RequestID, Reason: p.Reason})
	_, err := h.store.AppendEvents(ctx, s.id, streamCtl, b)
	return err
}
