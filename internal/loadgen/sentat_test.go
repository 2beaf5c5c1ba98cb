package loadgen

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestStampSentAt: X-Erlmcp-Sent-At goes out only when asked for, and then
// says when the request was sent, in Unix microseconds.
func TestStampSentAt(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get(headerSentAt))
		mu.Unlock()
		w.Header().Set("Mcp-Session-Id", "abc")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25"}}`)
	}))
	defer srv.Close()
	for _, stamp := range []bool{false, true} {
		mu.Lock()
		got = nil
		mu.Unlock()
		c := &Client{URL: srv.URL, HTTP: NewHTTPClient(2, 0), Protocol: Protocol20251125, StampSentAt: stamp}
		before := time.Now()
		if _, err := c.Initialize(context.Background()); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		sent := got
		mu.Unlock()
		if len(sent) == 0 {
			t.Fatal("no request reached the server")
		}
		for _, v := range sent {
			if !stamp {
				if v != "" {
					t.Errorf("%s %q sent without StampSentAt", headerSentAt, v)
				}
				continue
			}
			us, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("%s %q: %v", headerSentAt, v, err)
			}
			if at := time.UnixMicro(us); at.Before(before.Truncate(time.Microsecond)) || at.After(time.Now()) {
				t.Errorf("%s %s, want between %s and now", headerSentAt, at, before)
			}
		}
	}
}
