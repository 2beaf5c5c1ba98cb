package worker

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestTwoGetStreams: a client holds a GET stream on A and one on B; server
// messages not tied to a request are spread over both, each message on
// exactly one stream (MCP: never broadcast), over the in-memory store.
func TestTwoGetStreams(t *testing.T) {
	m := newMemStore()
	testTwoGetStreams(t, clusterOver(t, []string{"a", "b"}, nil, func() SessionStore { return m }), m)
}

// TestRealStoreTwoGetStreams: the same over a real store node, each
// worker with its own store client.
func TestRealStoreTwoGetStreams(t *testing.T) {
	e, cli := realStore(t)
	c := clusterOver(t, []string{"a", "b"}, nil, func() SessionStore { return StoreFromClient(storeClient(t, e, cli)) })
	testTwoGetStreams(t, c, StoreFromClient(storeClient(t, e, cli)))
}

func testTwoGetStreams(t *testing.T, c *cluster, st SessionStore) {
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	if r := post(t, c.urls["b"], `{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"debug"}}`, hdr(sid, v)); r.rpc.Error != nil {
		t.Fatalf("setLevel: %s", r.body)
	}
	// One GET on each worker; the priming events name two streams.
	gets := map[string]*sseStream{}
	streamOf := map[string]string{}
	for _, w := range []string{"a", "b"} {
		g := openSSE(t, getReq(t, c.urls[w], sid, v, ""))
		prime, _ := g.next()
		stream, _, ok := parseEventID(prime.id)
		if !ok || prime.data != "" || !strings.HasPrefix(stream, streamGet+"/") {
			t.Fatalf("priming on %s: %+v", w, prime)
		}
		gets[w], streamOf[w] = g, stream
	}
	if streamOf["a"] == streamOf["b"] {
		t.Fatalf("both GETs on stream %s", streamOf["a"])
	}
	// Two JSON-answered calls, on A and on B, each log at all 8 levels:
	// their messages go to the standalone streams.
	for i, w := range []string{"a", "b"} {
		h := hdr(sid, v)
		h["Accept"] = "application/json"
		body := `{"jsonrpc":"2.0","id":` + string(rune('3'+i)) + `,"method":"tools/call","params":{"name":"levels"}}`
		if r := post(t, c.urls[w], body, h); r.status != 200 || r.rpc.Error != nil {
			t.Fatalf("levels on %s: %d %s", w, r.status, r.body)
		}
	}
	want := 2 * len(logLevels)
	got := map[string][]string{} // worker of the GET → levels received
	perLevel := map[string]int{}
	for total := 0; total < want; {
		var ev sseEvent
		var on string
		select {
		case e, ok := <-gets["a"].evs:
			ev, on = e, "a"
			if !ok {
				t.Fatal("stream on A ended early")
			}
		case e, ok := <-gets["b"].evs:
			ev, on = e, "b"
			if !ok {
				t.Fatal("stream on B ended early")
			}
		case <-time.After(testDeadline):
			t.Fatalf("after %d of %d messages, nothing more in time: %v", total, want, got)
		}
		if ev.data == "" {
			continue
		}
		stream, _, _ := parseEventID(ev.id)
		if stream != streamOf[on] {
			t.Fatalf("event %s on the GET of %s (stream %s)", ev.id, on, streamOf[on])
		}
		var msg struct {
			Method string `json:"method"`
			Params struct {
				Level string `json:"level"`
			} `json:"params"`
		}
		mustUnmarshal(t, []byte(ev.data), &msg)
		if msg.Method != "notifications/message" {
			t.Fatalf("unexpected message on %s: %s", on, ev.data)
		}
		got[on] = append(got[on], msg.Params.Level)
		perLevel[msg.Params.Level]++
		total++
	}
	// Each GET stream receives server messages.
	if len(got["a"]) == 0 || len(got["b"]) == 0 {
		t.Fatalf("a stream got nothing: %v", got)
	}
	for _, l := range logLevels {
		if perLevel[l] != 2 {
			t.Fatalf("level %s delivered %d times, want 2 (once per call): %v", l, perLevel[l], got)
		}
	}
	// Not broadcast: the store holds each message once, over both streams.
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	stored := 0
	for _, stream := range streamOf {
		ev, err := st.ReadEvents(ctx, sid, stream, 0, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ev.Events {
			if len(e.Data) > 0 {
				stored++
			}
		}
	}
	if stored != want {
		t.Fatalf("%d messages stored over the two GET streams, want %d", stored, want)
	}
	// The client closes B's stream: it is unregistered, and later
	// messages all go to A's.
	gets["b"].close()
	waitCond(t, func() bool {
		_, err := st.GetState(ctx, sid, getStreamPrefix+streamOf["b"])
		return err != nil
	}, "B's closed GET stream unregistered")
	entries, err := st.ListState(ctx, sid, getStreamPrefix)
	if err != nil || len(entries) != 1 || entries[0].Key != getStreamPrefix+streamOf["a"] {
		t.Fatalf("registered streams %+v %v, want only A's", entries, err)
	}
	var reg getStream
	if json.Unmarshal(entries[0].Value, &reg) != nil || reg.Worker != "a" {
		t.Fatalf("registration %s", entries[0].Value)
	}
}

// waitCond polls cond until it holds or testDeadline passes.
func waitCond(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, testDeadline)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGetStreamServerClosed: a GET stream the server closed (SSE polling)
// stays registered, not connected: while another stream is connected,
// messages go there; resumed, it is connected again.
func TestGetStreamServerClosed(t *testing.T) {
	m := newMemStore()
	c := clusterOver(t, []string{"a", "b"}, func(cfg *Config) {
		cfg.SSEStreamLifetime = 300 * time.Millisecond
		cfg.SSEKeepAlive = 50 * time.Millisecond
	}, func() SessionStore { return m })
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{}`)
	ctx := context.Background()
	reg := func(stream string) getStream {
		t.Helper()
		e, err := m.GetState(ctx, sid, getStreamPrefix+stream)
		if err != nil {
			t.Fatalf("registration of %s: %v", stream, err)
		}
		var g getStream
		mustUnmarshal(t, e.Value, &g)
		return g
	}
	old := openSSE(t, getReq(t, c.urls["a"], sid, v, ""))
	prime, _ := old.next()
	oldStream, _, _ := parseEventID(prime.id)
	if g := reg(oldStream); !g.Connected || g.Worker != "a" {
		t.Fatalf("open stream registered as %+v", g)
	}
	old.rest() // the server ends it after its lifetime
	waitCond(t, func() bool { return !reg(oldStream).Connected }, "the server-closed stream marked not connected")

	// A stream is connected on B: every message goes there, none to the
	// closed one, though it stays registered for its client's return.
	cur := openSSE(t, getReq(t, c.urls["b"], sid, v, ""))
	p2, _ := cur.next()
	curStream, _, _ := parseEventID(p2.id)
	h := hdr(sid, v)
	h["Accept"] = "application/json"
	if r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"levels"}}`, h); r.rpc.Error != nil {
		t.Fatalf("levels: %s", r.body)
	}
	count := func(stream string) int {
		n := 0
		for _, e := range m.events(sid, stream) {
			if len(e.Data) > 0 {
				n++
			}
		}
		return n
	}
	if got, stale := count(curStream), count(oldStream); got == 0 || stale != 0 {
		t.Fatalf("messages: %d on the connected stream, %d on the server-closed one", got, stale)
	}
	// Its client resumes it on B: connected again, served by B.
	resumed := openSSE(t, getReq(t, c.urls["b"], sid, v, prime.id))
	waitCond(t, func() bool { g := reg(oldStream); return g.Connected && g.Worker == "b" }, "the resumed stream connected again on B")
	resumed.close()
	cur.close()
}
