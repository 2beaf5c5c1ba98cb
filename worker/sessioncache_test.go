package worker

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// testCacheTTL is long enough that a test's few requests fall inside it even
// on a loaded machine, short enough to wait out.
const testCacheTTL = 2 * time.Second

// TestSessionCacheSkipsReads: with the cache on, a session's record is
// read from the store once and then served from the cache until the TTL
// runs out; then it is read again. An uninitialized session is never
// served from the cache.
func TestSessionCacheSkipsReads(t *testing.T) {
	cs := &countingStore{SessionStore: newMemStore()}
	c := clusterOver(t, []string{"a"}, func(cfg *Config) { cfg.SessionCacheTTL = testCacheTTL }, func() SessionStore { return cs })
	v := "2025-11-25"
	echo := `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`

	// Not initialized yet: every request reads.
	r := post(t, c.urls["a"], initBodyFor(v, `{}`), nil)
	sid := r.header.Get(HeaderSessionID)
	for range 2 {
		cs.take()
		if r := post(t, c.urls["a"], echo, hdr(sid, v)); r.rpc.Result == nil {
			t.Fatalf("echo: %d %s", r.status, r.body)
		}
		if calls := cs.take(); !slices.Equal(calls, []string{"Get"}) {
			t.Fatalf("uninitialized session: store calls %v, want one Get", calls)
		}
	}
	if n := post(t, c.urls["a"], `{"jsonrpc":"2.0","method":"notifications/initialized"}`, hdr(sid, v)); n.status != 202 {
		t.Fatalf("initialized: %d %s", n.status, n.body)
	}

	start := time.Now()
	cs.take()
	var reads int
	for i := range 5 {
		if r := post(t, c.urls["a"], echo, hdr(sid, v)); r.rpc.Result == nil {
			t.Fatalf("echo %d: %d %s", i, r.status, r.body)
		}
		for _, call := range cs.take() {
			if call != "Get" {
				t.Fatalf("echo %d: store call %s", i, call)
			}
			reads++
		}
	}
	if time.Since(start) < testCacheTTL && reads != 1 {
		t.Fatalf("5 echos within the cache TTL read the store %d times, want 1", reads)
	}

	// Past the TTL the record is read again.
	time.Sleep(testCacheTTL)
	if r := post(t, c.urls["a"], echo, hdr(sid, v)); r.rpc.Result == nil {
		t.Fatalf("echo: %d %s", r.status, r.body)
	}
	if calls := cs.take(); !slices.Equal(calls, []string{"Get"}) {
		t.Fatalf("after the TTL: store calls %v, want one Get", calls)
	}
}

// TestSessionCacheSeesChangesElsewhere: workers a and b both hold the
// session in their caches; a logging/setLevel and then a DELETE on b are
// each seen by the very next request on a (design.md §2), because b
// answers them only once a's copy has expired.
func TestSessionCacheSeesChangesElsewhere(t *testing.T) {
	c := newCluster(t, []string{"a", "b"}, func(cfg *Config) { cfg.SessionCacheTTL = testCacheTTL })
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	levels := `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"levels"}}`
	countMessages := func() int {
		n := 0
		for _, ev := range openSSE(t, postReq(t, c.urls["a"], levels, hdr(sid, v))).rest() {
			if strings.Contains(ev.data, `"notifications/message"`) {
				n++
			}
		}
		return n
	}
	if n := countMessages(); n != 7 { // info and above, a's cache filled
		t.Fatalf("default level: %d messages, want 7", n)
	}
	post(t, c.urls["b"], `{"jsonrpc":"2.0","id":2,"method":"ping"}`, hdr(sid, v)) // b's cache filled

	start := time.Now()
	if r := post(t, c.urls["b"], `{"jsonrpc":"2.0","id":4,"method":"logging/setLevel","params":{"level":"error"}}`, hdr(sid, v)); r.rpc.Error != nil || r.status != 200 {
		t.Fatalf("setLevel: %d %s", r.status, r.body)
	}
	if d := time.Since(start); d < testCacheTTL {
		t.Fatalf("setLevel answered after %s, before the cache TTL %s", d, testCacheTTL)
	}
	if n := countMessages(); n != 4 {
		t.Fatalf("after setLevel error on b: %d messages on a, want 4 (error and above)", n)
	}

	if r := del(t, c.urls["b"], sid); r.status != 204 {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	if r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":5,"method":"ping"}`, hdr(sid, v)); r.status != 404 {
		t.Fatalf("ping on a after DELETE on b: %d %s, want 404", r.status, r.body)
	}
}

// TestSessionCacheNeedsWaitingWriters shows what the writers' wait is
// for: a worker with the cache off (it does not wait) deletes a session
// that a caching worker still serves from its cache. Every worker of a
// store must use the same TTL (Config.SessionCacheTTL).
func TestSessionCacheNeedsWaitingWriters(t *testing.T) {
	c := newCluster(t, []string{"a", "b"}, func(cfg *Config) {
		if cfg.Common.ID == "a" {
			cfg.SessionCacheTTL = time.Minute
		} else {
			cfg.SessionCacheTTL = 0
		}
	})
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	post(t, c.urls["a"], `{"jsonrpc":"2.0","id":2,"method":"ping"}`, hdr(sid, v)) // a's cache filled
	if r := del(t, c.urls["b"], sid); r.status != 204 {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	if r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":3,"method":"ping"}`, hdr(sid, v)); r.status != 200 {
		t.Fatalf("ping on a: %d, want 200 from a's cache (the test shows the cache at work)", r.status)
	}
}

// TestSessionCacheRefusesOtherPrincipal: a cached session is refused to
// another principal as a stored one is.
func TestSessionCacheRefusesOtherPrincipal(t *testing.T) {
	c := newCluster(t, []string{"a"}, func(cfg *Config) {
		cfg.SessionCacheTTL = time.Minute
		cfg.AuthPrincipalHeader = "X-Principal"
	})
	v := "2025-11-25"
	alice := map[string]string{"X-Principal": "alice"}
	r := post(t, c.urls["a"], initBodyFor(v, `{}`), alice)
	sid := r.header.Get(HeaderSessionID)
	h := hdr(sid, v)
	h["X-Principal"] = "alice"
	post(t, c.urls["a"], `{"jsonrpc":"2.0","method":"notifications/initialized"}`, h)
	if r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":2,"method":"ping"}`, h); r.status != 200 {
		t.Fatalf("alice: %d %s", r.status, r.body)
	}
	h["X-Principal"] = "mallory"
	if r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":3,"method":"ping"}`, h); r.status != 404 {
		t.Fatalf("mallory on alice's cached session: %d %s, want 404", r.status, r.body)
	}
}

func TestConfigSessionCacheTTL(t *testing.T) {
	cfg := DefaultConfig()
	for _, d := range []time.Duration{-time.Millisecond, maxSessionCacheTTL + time.Millisecond} {
		cfg.SessionCacheTTL = d
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--session-cache-ttl") {
			t.Fatalf("SessionCacheTTL %s: %v", d, err)
		}
	}
	cfg.SessionCacheTTL = 0
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}
