package loadgen

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/loadgen/loadgentest"
)

// TestEndpointPick drives the endpoint health rules with a made-up clock.
func TestEndpointPick(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := &Client{URL: "http://a/mcp", Fallbacks: []string{"http://b/mcp", "http://c/mcp"}, EndpointCooldown: 10 * time.Second}

	// Timeouts below the threshold move nobody; an answer in between
	// starts the count again.
	for i := 0; i < DefaultEndpointTimeouts-1; i++ {
		if c.failed(0, "timeout", t0) {
			t.Fatalf("timeout %d marked the endpoint down", i+1)
		}
	}
	c.answered(0, t0)
	for i := 0; i < DefaultEndpointTimeouts-1; i++ {
		c.failed(0, "timeout", t0)
	}
	if got := c.pick(0, "", t0); got != 0 {
		t.Fatalf("after %d timeouts and an answer, pick = %d, want 0 (stay)", 2*(DefaultEndpointTimeouts-1), got)
	}
	// The session whose own request timed out moves, alone.
	if got := c.pick(0, "timeout", t0); got != 1 {
		t.Fatalf("pick after the session's own timeout = %d, want 1", got)
	}
	// The threshold's timeout in a row marks it down: sessions on it move
	// to the next endpoint, sessions elsewhere stay.
	if !c.failed(0, "timeout", t0) {
		t.Fatal("timeouts in a row did not mark the endpoint down")
	}
	if got := c.pick(0, "", t0); got != 1 {
		t.Fatalf("pick from a down endpoint = %d, want 1", got)
	}
	if got := c.pick(2, "", t0); got != 2 {
		t.Fatalf("pick from a live endpoint = %d, want 2 (stay)", got)
	}
	// A refused connection marks at once; the next live one is taken.
	if !c.failed(1, "conn_refused", t0.Add(time.Second)) {
		t.Fatal("conn_refused did not mark the endpoint down")
	}
	if got := c.pick(1, "conn_refused", t0.Add(time.Second)); got != 2 {
		t.Fatalf("pick after refused = %d, want 2", got)
	}
	// Every endpoint down: a session without a failure stays; one whose
	// request timed out or was refused goes to the endpoint whose
	// cool-down ends first (0).
	for i := 0; i < DefaultEndpointTimeouts; i++ {
		c.failed(2, "timeout", t0.Add(2*time.Second))
	}
	if got := c.pick(2, "", t0.Add(2*time.Second)); got != 2 {
		t.Fatalf("pick with every endpoint down and no failure = %d, want 2 (stay)", got)
	}
	for _, k := range []string{"timeout", "conn_refused"} {
		if got := c.pick(2, k, t0.Add(2*time.Second)); got != 0 {
			t.Fatalf("pick with every endpoint down after %s = %d, want 0 (earliest cool-down end)", k, got)
		}
	}
	// After its cool-down an endpoint is usable again.
	if got := c.pick(2, "", t0.Add(10*time.Second)); got != 0 {
		t.Fatalf("pick after 0's cool-down = %d, want 0", got)
	}
	// A late answer to a request sent before the mark leaves it marked;
	// one sent after clears it.
	c.answered(2, t0.Add(time.Second))
	if got := c.pick(1, "", t0.Add(3*time.Second)); got != 1 {
		t.Fatalf("a late answer from 2 cleared its mark: pick = %d, want 1", got)
	}
	c.answered(2, t0.Add(3*time.Second))
	if got := c.pick(2, "", t0.Add(3*time.Second)); got != 2 {
		t.Fatalf("an answer from 2 after its mark did not clear it: pick = %d, want 2", got)
	}
	// Other failures (an HTTP status, a cancelled request) say nothing of
	// the endpoint.
	for _, k := range []string{"http_502", "cancelled", "decode"} {
		if c.failed(0, k, t0.Add(20*time.Second)) {
			t.Errorf("%s marked the endpoint down", k)
		}
	}
	// A single endpoint is never marked.
	one := &Client{URL: "http://a/mcp"}
	if one.failed(0, "conn_refused", t0) || one.pick(0, "conn_refused", t0) != 0 {
		t.Error("a client without fallbacks moved")
	}
}

// hang holds r unanswered until the client gives up on it. The body is
// read first: the server notices a closed connection (and cancels r's
// context) only once the body is consumed. The bound keeps a client that
// never gives up from hanging the test.
func hang(r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-r.Context().Done():
	case <-t.C:
	}
}

// hangOnce wraps h so that the n-th tools/call POST (1-based) is held
// until the client gives up, as a request stuck behind a stopped store is.
func hangOnce(h http.Handler, n int64) (http.Handler, *atomic.Int64) {
	var calls atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.Header.Get("Mcp-Method") == "" && r.Header.Get("Mcp-Session-Id") != "" {
			if calls.Add(1) == n {
				hang(r)
				return
			}
		}
		h.ServeHTTP(w, r)
	}), &calls
}

// TestOneTimeoutMovesOneSession: one request that times out through the
// first endpoint (a slow answer, not a dead endpoint) moves only its own
// session to the fallback; every other session stays on the first.
func TestOneTimeoutMovesOneSession(t *testing.T) {
	backend := loadgentest.NewFaulty(t, loadgentest.Fault{})
	h, _ := hangOnce(backend.Config.Handler, 30)
	first := httptest.NewServer(h)
	defer first.Close()
	var mu sync.Mutex
	onSecond := map[string]bool{}
	second := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		onSecond[r.Header.Get("Mcp-Session-Id")] = true
		mu.Unlock()
		backend.Config.Handler.ServeHTTP(w, r)
	}))
	defer second.Close()
	cfg := testConfig(first.URL)
	cfg.Fallbacks = []string{second.URL + "/mcp"}
	cfg.Duration = 2500 * time.Millisecond
	cfg.Timeout = time.Second
	cfg.Sessions, cfg.Concurrency = 4, 4
	cfg.Budgets.MaxErrorsPct = 100
	r, _ := mustRun(t, cfg)
	// On a loaded machine more requests than the injected one may time
	// out; each may move its own session, no more.
	timeouts := r.Errors.ByKind["timeout"]
	if timeouts == 0 {
		t.Fatalf("no timeout (errors %v): the injection did not happen", r.Errors.ByKind)
	}
	mu.Lock()
	defer mu.Unlock()
	if int64(len(onSecond)) > min(timeouts, int64(cfg.Sessions-1)) {
		t.Errorf("%d sessions went to the fallback after %d slow answers on a live endpoint, want at most one per timeout", len(onSecond), timeouts)
	}
}

// TestStoppedEndpointLeftOnce: an endpoint that accepts connections and
// never answers (a SIGSTOPped front) costs each session at most one
// timeout: after the timeouts in a row mark it down, every session moves
// to the fallback and stays there for the cool-down, even when the
// fallback is slow once.
func TestStoppedEndpointLeftOnce(t *testing.T) {
	backend := loadgentest.NewFaulty(t, loadgentest.Fault{})
	var stopped atomic.Bool
	var mu sync.Mutex
	var hung int
	first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if stopped.Load() {
			if r.Header.Get("Mcp-Session-Id") != "" { // not a probe
				mu.Lock()
				hung++
				mu.Unlock()
			}
			hang(r)
			return
		}
		backend.Config.Handler.ServeHTTP(w, r)
	}))
	defer first.Close()
	h, _ := hangOnce(backend.Config.Handler, 5)
	second := httptest.NewServer(h)
	defer second.Close()
	cfg := testConfig(first.URL)
	cfg.Fallbacks = []string{second.URL + "/mcp"}
	cfg.Duration = 4 * time.Second
	cfg.Timeout = time.Second
	cfg.Sessions, cfg.Concurrency = 6, 6
	cfg.Budgets.MaxErrorsPct = 100
	timer := time.AfterFunc(500*time.Millisecond, func() { stopped.Store(true) })
	defer timer.Stop()
	r, _ := mustRun(t, cfg)
	mu.Lock()
	defer mu.Unlock()
	if hung == 0 {
		t.Fatal("no request reached the stopped endpoint: the fault did not happen")
	}
	// One per session (the request in flight at the stop, or the first one
	// after it), none after the slow answer on the fallback; on a loaded
	// machine a few more, from sessions whose request also timed out on
	// the fallback before the stopped endpoint was marked down.
	if max := cfg.Sessions + DefaultEndpointTimeouts - 1; hung > max {
		t.Errorf("%d requests hung on the stopped endpoint, want at most one per session and %d more (%d)", hung, DefaultEndpointTimeouts-1, max)
	}
	if r.Continuity.SessionsLost != 0 || r.Continuity.WritesLost != 0 {
		t.Errorf("continuity %+v", r.Continuity)
	}
}

// TestStalledBodyMovesSession: an endpoint that sends an answer's headers
// and then nothing (a front stopped in the middle of an answer) costs each
// session one timeout, as one that never answers does: the stalled body
// counts against the endpoint and moves the session.
func TestStalledBodyMovesSession(t *testing.T) {
	backend := loadgentest.NewFaulty(t, loadgentest.Fault{})
	var stopped atomic.Bool
	var hung atomic.Int64
	first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if stopped.Load() && r.Header.Get("Mcp-Session-Id") == "" {
			hang(r) // a stopped front answers nothing, the probe neither
			return
		}
		if stopped.Load() {
			hung.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			hang(r)
			return
		}
		backend.Config.Handler.ServeHTTP(w, r)
	}))
	defer first.Close()
	var served atomic.Int64
	second := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		backend.Config.Handler.ServeHTTP(w, r)
	}))
	defer second.Close()
	cfg := testConfig(first.URL)
	cfg.Fallbacks = []string{second.URL + "/mcp"}
	cfg.Duration = 4 * time.Second
	cfg.Timeout = time.Second
	cfg.Sessions, cfg.Concurrency = 4, 4
	cfg.Budgets.MaxErrorsPct = 100
	timer := time.AfterFunc(500*time.Millisecond, func() { stopped.Store(true) })
	defer timer.Stop()
	r, _ := mustRun(t, cfg)
	if hung.Load() == 0 || served.Load() == 0 {
		t.Fatalf("%d requests stalled on the first endpoint, %d served by the second: the fault did not happen or nobody moved", hung.Load(), served.Load())
	}
	if max := int64(cfg.Sessions + DefaultEndpointTimeouts - 1); hung.Load() > max {
		t.Errorf("%d requests stalled on the first endpoint, want at most %d (one per session, a few more on a loaded machine)", hung.Load(), max)
	}
	if r.Continuity.SessionsLost != 0 || r.Continuity.WritesLost != 0 {
		t.Errorf("continuity %+v", r.Continuity)
	}
}

// TestTimeoutProbe: after a session's own timeout the endpoint is probed.
// One that does not answer (here: refuses) is marked down for everyone
// and the session moves, even to an endpoint marked down before it (whose
// cool-down ends first), and sends its next request there.
func TestTimeoutProbe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String() + "/mcp"
	l.Close()
	c := &Client{URL: dead, Fallbacks: []string{"http://b/mcp"}, HTTP: http.DefaultClient}
	c.failed(1, "conn_refused", time.Now())
	s := &Session{c: c}
	s.transportFailed(0, nil, &Failure{Kind: "timeout"})
	if !c.isDown(0, time.Now()) {
		t.Fatal("an endpoint that did not answer the probe is not marked down")
	}
	req, err := s.newRequest(context.Background(), http.MethodPost, []byte("{}"), "tools/list", "")
	if err != nil {
		t.Fatal(err)
	}
	if req.URL.Host != "b" {
		t.Fatalf("next request to %s, want b", req.URL.Host)
	}

	// A live endpoint answers the probe (any status): the session stays.
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no session", http.StatusBadRequest)
	}))
	defer live.Close()
	c = &Client{URL: live.URL, Fallbacks: []string{"http://b/mcp"}, HTTP: http.DefaultClient}
	s = &Session{c: c}
	s.transportFailed(0, nil, &Failure{Kind: "timeout"})
	if s.ep != 0 || c.isDown(0, time.Now()) {
		t.Fatalf("after a timeout on a live endpoint the session is on %d (down %v), want 0 and not down", s.ep, c.isDown(0, time.Now()))
	}
}
