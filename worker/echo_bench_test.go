package worker

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkEchoCall measures the worker's own cost of one tools/call echo
// on an initialized session (the in-memory store, no network): time,
// bytes and allocations per call. allocs/op does not depend on the load
// others put on the machine, so it is the number to compare before and
// after a change to the hot path:
//
//	go test -run '^$' -bench EchoCall -benchmem -count 5 ./worker/
func BenchmarkEchoCall(b *testing.B) {
	h := NewHandler(newMemStore())
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, newPost(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}`, ""))
	sid := rec.Header().Get(HeaderSessionID)
	if rec.Code != http.StatusOK || sid == "" {
		b.Fatalf("initialize: %d %s", rec.Code, rec.Body)
	}
	// Initialized, as every real client's session is: only then is its
	// record served from the session cache, as under the loadtest.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, newPost(`{"jsonrpc":"2.0","method":"notifications/initialized"}`, sid))
	if rec.Code != http.StatusAccepted {
		b.Fatalf("notifications/initialized: %d %s", rec.Code, rec.Body)
	}
	const call = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}`
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, newPost(call, sid))
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"hello"`) {
			b.Fatalf("tools/call: %d %s", rec.Code, rec.Body)
		}
	}
}

// newPost is a POST /mcp as an MCP client sends it (sid "" for none).
func newPost(body, sid string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Accept", "application/json, text/event-stream")
	r.Header.Set(HeaderProtocolVersion, "2025-11-25")
	if sid != "" {
		r.Header.Set(HeaderSessionID, sid)
	}
	return r
}
