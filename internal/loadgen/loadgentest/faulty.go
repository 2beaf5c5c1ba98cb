package loadgentest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
)

// Fault is what the hand-written server does wrong. Each *At names the
// n-th counter call over all sessions (1-based) from which the fault
// strikes once, on the first such call whose session counter is at least 3
// (so a step back cannot be mistaken for a restart); 0 disables it.
type Fault struct {
	// GoBackAt answers the counter's value minus one instead of plus by: two
	// acknowledged increments lost.
	GoBackAt int
	// SkipAt adds 2*by instead of by: one increment skipped.
	SkipAt int
	// ResetAt forgets the counter (restarts it from 0) before adding by.
	ResetAt int
	// Lose404At forgets the whole session: this and every later request of
	// it get 404.
	Lose404At int
	// SSE answers requests as text/event-stream, each message spread over
	// several data: lines, after a comment and a priming event.
	SSE bool
}

// Faulty is a minimal Streamable HTTP MCP server (sessions, initialize,
// tools/list, tools/call echo and counter, DELETE) with injected faults.
type Faulty struct {
	*httptest.Server
	fault Fault

	mu       sync.Mutex
	nextSess int
	sessions map[string]*int64 // counter per live session
	gone     map[string]bool
	calls    int
	struck   map[string]bool // which faults have struck
}

// NewFaulty starts a faulty server; it closes when the test ends.
func NewFaulty(tb interface {
	Helper()
	Cleanup(func())
}, f Fault) *Faulty {
	tb.Helper()
	s := &Faulty{fault: f, sessions: map[string]*int64{}, gone: map[string]bool{}, struck: map[string]bool{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	tb.Cleanup(s.Close)
	return s
}

// Struck reports whether the named fault ("goback", "skip", "reset",
// "404") has happened.
func (s *Faulty) Struck(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.struck[name]
}

type request struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params struct {
		ProtocolVersion string          `json:"protocolVersion"`
		Name            string          `json:"name"`
		Arguments       json.RawMessage `json:"arguments"`
	} `json:"params"`
}

func (s *Faulty) serve(w http.ResponseWriter, r *http.Request) {
	sid := r.Header.Get("Mcp-Session-Id")
	switch r.Method {
	case http.MethodDelete:
		s.mu.Lock()
		_, ok := s.sessions[sid]
		delete(s.sessions, sid)
		s.mu.Unlock()
		if !ok {
			http.Error(w, "no such session", http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusOK)
		return
	case http.MethodPost:
	default:
		w.Header().Set("Allow", "POST, DELETE")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(r.Body)
	var req request
	if err != nil || json.Unmarshal(body, &req) != nil {
		http.Error(w, "bad JSON", http.StatusBadRequest)
		return
	}
	if req.Method == "initialize" {
		s.mu.Lock()
		s.nextSess++
		sid = "s" + strconv.Itoa(s.nextSess)
		s.sessions[sid] = new(int64)
		s.mu.Unlock()
		w.Header().Set("Mcp-Session-Id", sid)
		s.answer(w, req.ID, map[string]any{
			"protocolVersion": req.Params.ProtocolVersion,
			"capabilities":    map[string]any{"tools": map[string]any{}},
			"serverInfo":      map[string]any{"name": "faulty", "version": "1"},
		})
		return
	}
	s.mu.Lock()
	counter, ok := s.sessions[sid]
	gone := s.gone[sid]
	s.mu.Unlock()
	if !ok || gone {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"error":{"code":-32001,"message":"Session not found"}}`, idOrNull(req.ID))
		return
	}
	if len(req.ID) == 0 {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	switch {
	case req.Method == "tools/list":
		s.answer(w, req.ID, map[string]any{"tools": []map[string]any{
			{"name": "echo", "inputSchema": map[string]any{"type": "object"}},
			{"name": "counter", "inputSchema": map[string]any{"type": "object"}},
		}})
	case req.Method == "tools/call" && req.Params.Name == "echo":
		var a struct {
			Text string `json:"text"`
		}
		_ = json.Unmarshal(req.Params.Arguments, &a)
		s.answer(w, req.ID, map[string]any{"content": []map[string]any{{"type": "text", "text": a.Text}}})
	case req.Method == "tools/call" && req.Params.Name == "counter":
		var a struct {
			By int64 `json:"by"`
		}
		_ = json.Unmarshal(req.Params.Arguments, &a)
		v, lost := s.count(sid, counter, a.By)
		if lost {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"error":{"code":-32001,"message":"Session not found"}}`, req.ID)
			return
		}
		s.answer(w, req.ID, map[string]any{
			"content":           []map[string]any{{"type": "text", "text": strconv.FormatInt(v, 10)}},
			"structuredContent": map[string]any{"value": v},
		})
	default:
		s.answerError(w, req.ID, -32601, "Method not found: "+req.Method)
	}
}

// count applies one counter call with the faults; lost means the session
// is now gone.
func (s *Faulty) count(sid string, counter *int64, by int64) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	strike := func(at int, name string) bool {
		if at == 0 || s.calls < at || s.struck[name] || *counter < 3 {
			return false
		}
		s.struck[name] = true
		return true
	}
	switch {
	case strike(s.fault.Lose404At, "404"):
		s.gone[sid] = true
		return 0, true
	case strike(s.fault.GoBackAt, "goback"):
		*counter--
	case strike(s.fault.SkipAt, "skip"):
		*counter += 2 * by
	case strike(s.fault.ResetAt, "reset"):
		*counter = by
	default:
		*counter += by
	}
	return *counter, false
}

func idOrNull(id json.RawMessage) string {
	if len(id) == 0 {
		return "null"
	}
	return string(id)
}

func (s *Faulty) answer(w http.ResponseWriter, id json.RawMessage, result any) {
	s.write(w, map[string]any{"jsonrpc": "2.0", "id": id, "result": result})
}

func (s *Faulty) answerError(w http.ResponseWriter, id json.RawMessage, code int, msg string) {
	s.write(w, map[string]any{"jsonrpc": "2.0", "id": id, "error": map[string]any{"code": code, "message": msg}})
}

func (s *Faulty) write(w http.ResponseWriter, msg any) {
	if !s.fault.SSE {
		b, _ := json.Marshal(msg)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
		return
	}
	b, _ := json.MarshalIndent(msg, "", " ")
	w.Header().Set("Content-Type", "text/event-stream")
	var sb strings.Builder
	sb.WriteString(": faulty server\r\nid: prime\r\ndata:\r\n\r\n")
	sb.WriteString("event: message\nid: 1\n")
	for _, line := range strings.Split(string(b), "\n") {
		sb.WriteString("data: " + line + "\n")
	}
	sb.WriteString("\n")
	_, _ = io.WriteString(w, sb.String())
}
