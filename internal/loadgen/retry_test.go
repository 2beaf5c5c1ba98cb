package loadgen

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/loadgen/loadgentest"
)

// A slot whose request failed is retried at once, before the other slots
// get a turn: with one client and four sessions, the request after each
// failure is for the same session. Its unserved window then ends when the
// service is back, not when its turn in the queue comes round.
func TestFailedSlotRetriedFirst(t *testing.T) {
	srv := loadgentest.NewSDKServer(t, loadgentest.SDKOptions{JSONResponse: true})
	u, _ := url.Parse(srv.URL)
	rp := httputil.NewSingleHostReverseProxy(u)
	var (
		mu   sync.Mutex
		seq  []string // session id of each tools/call or tools/list POST, in order
		fail []bool
	)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sid := r.Header.Get("Mcp-Session-Id")
		if r.Method != http.MethodPost || sid == "" {
			rp.ServeHTTP(w, r)
			return
		}
		mu.Lock()
		n := len(seq)
		// every 7th request of a session-bearing POST fails, from the 20th on
		bad := n >= 20 && n%7 == 0
		seq = append(seq, sid)
		fail = append(fail, bad)
		mu.Unlock()
		if bad {
			http.Error(w, "injected", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)

	cfg := testConfig(front.URL)
	cfg.Sessions, cfg.Concurrency = 4, 1
	cfg.Mix = Mix{OpList: 1, OpEcho: 1}
	cfg.Duration = 2 * time.Second
	r, _ := mustRun(t, cfg)
	if r.Errors.Total == 0 {
		t.Fatal("no request failed: the injection did not happen")
	}
	mu.Lock()
	defer mu.Unlock()
	checked := 0
	for i := 0; i+1 < len(seq); i++ {
		if !fail[i] {
			continue
		}
		checked++
		if seq[i+1] != seq[i] {
			t.Fatalf("request %d failed for session %s, but the next request was for %s (the failed slot was queued behind the others)", i, seq[i], seq[i+1])
		}
	}
	if checked == 0 {
		t.Fatal("no failure was followed by another request")
	}
}
