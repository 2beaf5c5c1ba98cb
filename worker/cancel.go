package worker

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"
)

// Cancellation across workers. The worker running a tracked request writes
// state key inflight/<id> (its worker id and stream) and long-polls the
// session's "ctl" stream; notifications/cancelled, on whichever worker it
// lands, appends {"cancel": id} to "ctl", and the running worker cancels
// the request's context.

// errCancelled is the cause of a request context the client cancelled.
var errCancelled = errors.New("the client cancelled the request")

type ctlEvent struct {
	Cancel json.RawMessage `json:"cancel"`
	Reason string          `json:"reason,omitempty"`
}

// track records the request in flight and watches for its cancellation.
// The returned context is cancelled (cause errCancelled) when the client
// cancels; done removes the record and stops the watch.
func (h *Handler) track(ctx context.Context, sid string, id json.RawMessage, stream string) (context.Context, func(), error) {
	start, err := h.store.ReadEvents(ctx, sid, streamCtl, 0, 1, 0)
	if err != nil {
		return nil, nil, err
	}
	val, _ := json.Marshal(inflight{Worker: h.cfg.Common.ID, Stream: stream, ID: id})
	key := inflightKey(id)
	if _, err := h.store.PutState(ctx, sid, key, val, nil); err != nil {
		return nil, nil, err
	}
	rctx, cancel := context.WithCancelCause(ctx)
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
		cancel(nil)
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.RequestTimeout)
		defer dcancel()
		if err := h.store.DeleteState(dctx, sid, key); err != nil && !errors.Is(err, ErrNotFound) {
			h.log.WithError(err).Warn("removing an in-flight record")
		}
	}
	return rctx, done, nil
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
	b, _ := json.Marshal(ctlEvent{Cancel: p.RequestID, Reason: p.Reason})
	_, err := h.store.AppendEvents(ctx, s.id, streamCtl, b)
	return err
}
