package worker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestAwaitQuiet: a draining worker's wait before shutdown lasts while
// requests keep arriving (a front not yet aware it left) and ends a quiet
// period after the last one; it gives up when its context ends.
// Requests go straight to ServeHTTP, not over a socket, so the sender's
// pace depends on no network stack or HTTP client on a busy machine.
func TestAwaitQuiet(t *testing.T) {
	h := NewHandler(newMemStore())
	defer h.Close()
	send := func() {
		r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Accept", "application/json, text/event-stream")
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	// sendFor sends a request every 5 ms until stop is closed or for, and
	// closes the returned channel when it has stopped.
	sendFor := func(d time.Duration, stop <-chan struct{}) <-chan struct{} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			end := time.Now().Add(d)
			for time.Now().Before(end) {
				select {
				case <-stop:
					return
				default:
				}
				send()
				time.Sleep(5 * time.Millisecond)
			}
		}()
		return done
	}
	h.SetDraining(true)

	// Requests arrive for 2 s, each well within the 1 s quiet period of
	// the one before: the wait lasts at least as long.
	const quiet, sending = time.Second, 2 * time.Second
	start := time.Now()
	done := sendFor(sending, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if !h.AwaitQuiet(ctx, quiet) {
		t.Fatal("no quiet period within 60s")
	}
	if took := time.Since(start); took < sending {
		t.Fatalf("quiet after %s while requests arrived for %s", took, sending)
	}
	<-done

	// Requests that do not stop within the wait: it ends with its
	// context, not quiet; once they stop, it is quiet. The last arrival
	// is a second old by now: SetDraining again counts the wait from now,
	// whenever the sender gets its first request in.
	h.SetDraining(true)
	stop := make(chan struct{})
	done = sendFor(time.Hour, stop)
	short, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if h.AwaitQuiet(short, 200*time.Millisecond) {
		close(stop)
		t.Fatal("quiet reported while requests kept arriving")
	}
	close(stop)
	<-done
	if !h.AwaitQuiet(ctx, 200*time.Millisecond) {
		t.Fatal("not quiet after the requests stopped")
	}
}

// TestAwaitQuietWaitsForRunningRequests: a request still running (its
// store call stalled) keeps the drain from shutting the server down, which
// would close the listener and make a front fail it.
func TestAwaitQuietWaitsForRunningRequests(t *testing.T) {
	store := newStallingStore()
	var h *Handler
	const runs = 800 * time.Millisecond
	store.budget = runs // the stalled call's store error ends it
	srv := testWorker(t, store, "w1", func(hh *Handler) { h = hh })
	store.releaseAtEnd(t)
	sid := initSession(t, srv.URL)
	store.stall.Store(true)
	h.SetDraining(true)
	start := time.Now()
	answered := make(chan reply, 1)
	go func() { answered <- post(t, srv.URL, counterCall, sessionHeaders(sid)) }()
	// Wait until the call is being served.
	for h.active.Load() == 0 {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the counter call never arrived")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !h.AwaitQuiet(ctx, 50*time.Millisecond) {
		t.Fatal("never quiet")
	}
	if took := time.Since(start); took < runs {
		t.Fatalf("quiet after %s while a request ran for %s", took, runs)
	}
	if r := <-answered; r.status != 503 {
		t.Fatalf("stalled call: %d %s", r.status, r.body)
	}
}
