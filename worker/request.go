package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Request is one client request as its handler sees it: the session (its
// negotiated state and its state keys in the store) and the way back to
// the client (the request's SSE stream, or the session's standalone
// stream). It is valid until the handler returns.
type Request struct {
	h             *Handler
	sess          *session
	id            json.RawMessage
	method        string
	progressToken json.RawMessage
	out           *outbox
	// mrtr is set on a sessionless (2026-07-28) request: server→client
	// requests become inputRequests (mrtr.go).
	mrtr *mrtr
	// started is when this worker began the request.
	started time.Time
}

// ErrNoSession is returned by the state calls of a sessionless
// (2026-07-28) request: it has no session to keep state in.
var ErrNoSession = errors.New("the request has no session (MCP 2026-07-28 is sessionless)")

// SessionID is the session's id.
func (r *Request) SessionID() string { return r.sess.id }

// ID is the JSON-RPC id of the request, as the client sent it.
func (r *Request) ID() json.RawMessage { return r.id }

// ProtocolVersion is the session's negotiated MCP version.
func (r *Request) ProtocolVersion() string { return r.sess.rec.ProtocolVersion }

// WorkerID is the id of the worker running the request.
func (r *Request) WorkerID() string { return r.h.cfg.Common.ID }

// stateKeyPrefix keeps handlers' keys apart from the worker's own keys
// (inflight/, sub/, ...).
const stateKeyPrefix = "app/"

// GetState reads a session-scoped key: its value and version; ErrNotFound
// when absent.
func (r *Request) GetState(ctx context.Context, key string) ([]byte, uint64, error) {
	if r.mrtr != nil {
		return nil, 0, ErrNoSession
	}
	e, err := r.h.store.GetState(ctx, r.sess.id, stateKeyPrefix+key)
	return e.Value, e.Version, err
}

// PutState writes a session-scoped key and returns its new version.
// expectedVersion nil writes unconditionally, &0 only when the key is
// absent, &n only when it is at version n; ErrVersionConflict otherwise.
func (r *Request) PutState(ctx context.Context, key string, value []byte, expectedVersion *uint64) (uint64, error) {
	if r.mrtr != nil {
		return 0, ErrNoSession
	}
	e, err := r.h.store.PutState(ctx, r.sess.id, stateKeyPrefix+key, value, expectedVersion)
	return e.Version, err
}

// DeleteState removes a session-scoped key.
func (r *Request) DeleteState(ctx context.Context, key string) error {
	if r.mrtr != nil {
		return ErrNoSession
	}
	return r.h.store.DeleteState(ctx, r.sess.id, stateKeyPrefix+key)
}

// Log levels of notifications/message (RFC 5424 severities), lowest first.
var logLevels = []string{"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"}

// defaultLogLevel filters messages of a session that never set a level.
const defaultLogLevel = "info"

func logRank(level string) int {
	for i, l := range logLevels {
		if l == level {
			return i
		}
	}
	return -1
}

// Log sends notifications/message when level is at or above the level the
// session set with logging/setLevel (on whichever worker).
func (r *Request) Log(ctx context.Context, level, logger string, data any) error {
	rank := logRank(level)
	if rank < 0 {
		return fmt.Errorf("unknown log level %q", level)
	}
	min := r.sess.rec.LogLevel
	if min == "" && r.mrtr != nil {
		return nil // sessionless: no logLevel in _meta, no log messages
	}
	if min == "" {
		min = defaultLogLevel
	}
	if rank < logRank(min) {
		return nil
	}
	p := map[string]any{"level": level, "data": data}
	if logger != "" {
		p["logger"] = logger
	}
	return r.notify(ctx, "notifications/message", p)
}

// Progress sends notifications/progress when the request carried
// _meta.progressToken; total 0 means unknown.
func (r *Request) Progress(ctx context.Context, progress, total float64, message string) error {
	if len(r.progressToken) == 0 {
		return nil
	}
	p := map[string]any{"progressToken": r.progressToken, "progress": progress}
	if total > 0 {
		p["total"] = total
	}
	if message != "" {
		p["message"] = message
	}
	return r.notify(ctx, "notifications/progress", p)
}

// NotifyResourceUpdated sends notifications/resources/updated on the
// session's standalone stream when the client subscribed to uri.
func (r *Request) NotifyResourceUpdated(ctx context.Context, uri string) error {
	if r.mrtr != nil {
		return r.h.publish(ctx, ListenEvent{Kind: ListenResourceUpdated, URI: uri})
	}
	return r.h.notifyResourceUpdated(ctx, r.sess.id, uri)
}

func (r *Request) notify(ctx context.Context, method string, params any) error {
	b, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": method, "params": params})
	if err != nil {
		return err
	}
	_, err = r.out.send(ctx, b)
	return err
}

// CodeMissingClientCapability answers a server→client request the
// client did not declare the capability for.
const CodeMissingClientCapability = -32021

// missingCapability is the -32021 error for capability; its data names
// the capability as a ClientCapabilities object (2026-07-28).
func missingCapability(capability, message string) *Error {
	return &Error{Code: CodeMissingClientCapability, Message: message,
		Data: map[string]any{"requiredCapabilities": map[string]any{capability: map[string]any{}}}}
}

// CodeClientTimeout is the error of a server→client request the client
// did not answer in time.
const CodeClientTimeout = -32004

// clientHas reports whether the session's client declared capability
// path (e.g. "sampling", "elicitation.url").
func (r *Request) clientHas(path ...string) bool {
	var caps any
	if json.Unmarshal(r.sess.rec.ClientCapabilities, &caps) != nil {
		return false
	}
	for _, p := range path {
		m, ok := caps.(map[string]any)
		if !ok {
			return false
		}
		if caps, ok = m[p]; !ok {
			return false
		}
	}
	return true
}

// ServerRequest sends a request to the client (on this request's stream,
// through the store) and waits for its answer, which the client may POST
// to any worker. The error is a *Error for a JSON-RPC error answer or a
// timeout (CodeClientTimeout).
func (r *Request) ServerRequest(ctx context.Context, method string, params any) (json.RawMessage, error) {
	if r.mrtr != nil {
		r.mrtr.auto++
		return r.Input(ctx, fmt.Sprintf("%s#%d", method, r.mrtr.auto), method, params)
	}
	st := r.h.store
	sid := r.sess.id
	start, err := st.ReadEvents(ctx, sid, streamReplies, 0, 1, 0)
	if err != nil {
		return nil, err
	}
	id := `"erlmcp-` + randomHex(8) + `"`
	msg, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": json.RawMessage(id), "method": method, "params": params})
	if err != nil {
		return nil, err
	}
	if _, err := r.out.send(ctx, msg); err != nil {
		return nil, err
	}
	timeout := r.h.cfg.ServerRequestTimeout
	deadline := time.Now().Add(timeout)
	after := start.LastSeq
	for {
		left := time.Until(deadline)
		if left <= 0 {
			r.cancelServerRequest(id, "timeout")
			return nil, &Error{Code: CodeClientTimeout, Message: fmt.Sprintf("the client did not answer %s within %s", method, timeout)}
		}
		ev, err := st.ReadEvents(ctx, sid, streamReplies, after, 32, min(left, r.h.cfg.PollWait))
		if err != nil {
			if ctx.Err() != nil {
				r.cancelServerRequest(id, "the request was cancelled")
				return nil, ctx.Err()
			}
			return nil, err
		}
		for _, e := range ev.Events {
			after = e.Seq
			m, derr := Decode(e.Data)
			if derr != nil || m.Kind != KindResponse || !bytes.Equal(m.ID, []byte(id)) {
				continue
			}
			if m.Error != nil {
				var je Error
				_ = json.Unmarshal(m.Error, &je)
				return nil, &je
			}
			return m.Result, nil
		}
	}
}

// cancelServerRequest tells the client, best effort, that the server no
// longer waits for its answer.
func (r *Request) cancelServerRequest(id, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), r.h.cfg.RequestTimeout)
	defer cancel()
	_ = r.notify(ctx, "notifications/cancelled", map[string]any{"requestId": json.RawMessage(id), "reason": reason})
}

// SamplingMessage is one message of sampling/createMessage.
type SamplingMessage struct {
	Role    string  `json:"role"`
	Content Content `json:"content"`
}

// CreateMessageParams are the params of sampling/createMessage.
type CreateMessageParams struct {
	Messages         []SamplingMessage `json:"messages"`
	MaxTokens        int               `json:"maxTokens"`
	SystemPrompt     string            `json:"systemPrompt,omitempty"`
	Temperature      *float64          `json:"temperature,omitempty"`
	StopSequences    []string          `json:"stopSequences,omitempty"`
	ModelPreferences map[string]any    `json:"modelPreferences,omitempty"`
	IncludeContext   string            `json:"includeContext,omitempty"`
}

// CreateMessageResult is the client's sampling answer.
type CreateMessageResult struct {
	Role       string  `json:"role"`
	Content    Content `json:"content"`
	Model      string  `json:"model"`
	StopReason string  `json:"stopReason,omitempty"`
}

// CreateMessage asks the client to sample an LLM (sampling/createMessage).
func (r *Request) CreateMessage(ctx context.Context, p *CreateMessageParams) (*CreateMessageResult, error) {
	if !r.clientHas("sampling") {
		return nil, missingCapability("sampling", "the client did not declare the sampling capability")
	}
	raw, err := r.ServerRequest(ctx, "sampling/createMessage", p)
	if err != nil {
		return nil, err
	}
	var res CreateMessageResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, &Error{Code: CodeInternalError, Message: "the client's sampling answer does not decode: " + err.Error()}
	}
	return &res, nil
}

// ElicitParams are the params of elicitation/create. Mode "" or "form"
// asks for RequestedSchema-shaped content; mode "url" sends the user to
// URL (ElicitationID names the interaction).
type ElicitParams struct {
	Mode            string         `json:"mode,omitempty"`
	Message         string         `json:"message"`
	RequestedSchema map[string]any `json:"requestedSchema,omitempty"`
	URL             string         `json:"url,omitempty"`
	ElicitationID   string         `json:"elicitationId,omitempty"`
}

// ElicitResult is the client's elicitation answer: Action is accept,
// decline or cancel.
type ElicitResult struct {
	Action  string         `json:"action"`
	Content map[string]any `json:"content,omitempty"`
}

// Elicit asks the user for input through the client (elicitation/create).
func (r *Request) Elicit(ctx context.Context, p *ElicitParams) (*ElicitResult, error) {
	if !r.clientHas("elicitation") {
		return nil, missingCapability("elicitation", "the client did not declare the elicitation capability")
	}
	if p.Mode == "url" {
		if !r.clientHas("elicitation", "url") {
			return nil, missingCapability("elicitation", "the client did not declare URL-mode elicitation")
		}
		if p.ElicitationID == "" {
			p.ElicitationID = randomHex(16)
		}
	} else if p.Mode == "form" && r.sess.rec.ProtocolVersion < "2025-11-25" {
		p.Mode = "" // older clients know only form mode, unnamed
	}
	raw, err := r.ServerRequest(ctx, "elicitation/create", p)
	if err != nil {
		return nil, err
	}
	var res ElicitResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, &Error{Code: CodeInternalError, Message: "the client's elicitation answer does not decode: " + err.Error()}
	}
	return &res, nil
}

// CompleteElicitation sends notifications/elicitation/complete for a
// URL-mode elicitation whose out-of-band interaction finished.
func (r *Request) CompleteElicitation(ctx context.Context, elicitationID string) error {
	return r.notify(ctx, "notifications/elicitation/complete", map[string]any{"elicitationId": elicitationID})
}

// Root is one of the client's roots.
type Root struct {
	URI  string `json:"uri"`
	Name string `json:"name,omitempty"`
}

// ListRoots asks the client for its roots (roots/list).
func (r *Request) ListRoots(ctx context.Context) ([]Root, error) {
	if !r.clientHas("roots") {
		return nil, missingCapability("roots", "the client did not declare the roots capability")
	}
	raw, err := r.ServerRequest(ctx, "roots/list", struct{}{})
	if err != nil {
		return nil, err
	}
	var res struct {
		Roots []Root `json:"roots"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, &Error{Code: CodeInternalError, Message: "the client's roots answer does not decode: " + err.Error()}
	}
	return res.Roots, nil
}

// Stream names in the store, per session.
const (
	streamGet     = "g"       // the standalone (GET) streams: "g/<hex>" (standalone.go)
	streamCtl     = "ctl"     // cancellations for in-flight requests
	streamReplies = "replies" // the client's answers to server requests
)

// errOutboxClosed: a handler sent after its request was answered.
var errOutboxClosed = errors.New("the request was already answered")

// outbox is where one request's messages to the client go: appended to a
// store stream, then written to the HTTP response when the request answers
// over SSE (w set). Every send is one event with id <stream>/<seq>.
type outbox struct {
	h      *Handler
	sid    string
	stream string

	mu      sync.Mutex
	w       http.ResponseWriter // nil: store only (another connection delivers)
	closed  bool
	written time.Time
	// direct: a sessionless request's outbox, written straight to the
	// wire without the store; lazy, when set, is the response the first
	// message turns into an SSE stream.
	direct bool
	lazy   http.ResponseWriter

	// upgradeTo, when set, is a session request's response that is still
	// undecided: the first message, or upgrade, turns it into an SSE
	// stream (after recording tr in flight, when set); seal decides JSON.
	upgradeTo http.ResponseWriter
	primes    bool // write the 2025-11-25 priming event on upgrade
	tr        *tracker
	sealed    bool
	stopKeep  chan struct{} // ends the keep-alive loop of an upgraded response
	keepWG    sync.WaitGroup
}

// send appends msg to the stream and then writes it to the wire.
func (o *outbox) send(ctx context.Context, msg []byte) (uint64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return 0, errOutboxClosed
	}
	if o.direct {
		if o.w == nil && o.lazy != nil {
			o.w, o.lazy = o.lazy, nil
			sseHeaders(o.w)
		}
		if o.w != nil {
			writeEvent(o.w, "", msg)
			o.written = time.Now()
		}
		return 0, nil
	}
	if o.w == nil && o.upgradeTo != nil && !o.sealed {
		return o.upgradeLocked(ctx, msg)
	}
	if o.stream == streamGet && o.w == nil {
		// The session's standalone stream: one of its GET streams.
		_, seq, err := o.h.appendStandalone(ctx, o.sid, msg)
		return seq, err
	}
	seqs, err := o.h.store.AppendEvents(ctx, o.sid, o.stream, msg)
	if err != nil {
		return 0, err
	}
	if o.w != nil {
		writeEvent(o.w, eventID(o.stream, seqs[0]), msg)
		o.written = time.Now()
	}
	return seqs[0], nil
}

// upgrade turns the undecided response into an SSE stream now (the
// request runs long); it does nothing when the response is decided.
func (o *outbox) upgrade(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || o.sealed || o.w != nil || o.upgradeTo == nil {
		return nil
	}
	_, err := o.upgradeLocked(ctx, nil)
	return err
}

// upgradeLocked records the request in flight, stores the priming event
// and msg (if any) in one append, and only then starts the SSE response
// with them: a client must not see an event id before a worker resuming
// the stream can find the request's owner. On failure nothing was written
// and a later message tries again. It returns msg's sequence number.
func (o *outbox) upgradeLocked(ctx context.Context, msg []byte) (uint64, error) {
	if o.tr != nil {
		if err := o.tr.register(); err != nil {
			return 0, err
		}
	}
	data := [][]byte{nil}
	if msg != nil {
		data = append(data, msg)
	}
	seqs, err := o.h.store.AppendEvents(ctx, o.sid, o.stream, data...)
	if err != nil {
		return 0, err
	}
	w := o.upgradeTo
	o.upgradeTo = nil
	sseHeaders(w)
	if o.primes {
		writePriming(w, eventID(o.stream, seqs[0]), o.h.cfg.SSERetry)
	}
	if msg != nil {
		writeEvent(w, eventID(o.stream, seqs[1]), msg)
	}
	o.w, o.written = w, time.Now()
	stop := make(chan struct{})
	o.stopKeep = stop
	every := o.h.cfg.SSEKeepAlive
	o.keepWG.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				o.keepAlive(every)
			}
		}
	})
	return seqs[len(seqs)-1], nil
}

// seal decides the response when the handler returns: true when it is an
// SSE stream (the answer goes through send), false when it stays plain
// (no later upgrade).
func (o *outbox) seal() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sealed = true
	return o.w != nil
}

// writeRaw writes a message to the wire without an event id (the store
// refused it; the client still gets its answer).
func (o *outbox) writeRaw(msg []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.w != nil && !o.closed {
		writeEvent(o.w, "", msg)
	}
}

// finish writes a direct outbox's answer as the last SSE event when the
// stream was started; false when it was not (answer as JSON then).
func (o *outbox) finish(msg []byte) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.w == nil || o.closed {
		return false
	}
	writeEvent(o.w, "", msg)
	return true
}

// keepAlive writes an SSE comment when nothing was written for d.
func (o *outbox) keepAlive(d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.w != nil && !o.closed && time.Since(o.written) >= d {
		writeComment(o.w)
		o.written = time.Now()
	}
}

// close ends the outbox: later sends fail and the writer is let go.
func (o *outbox) close() {
	o.mu.Lock()
	o.closed = true
	o.w = nil
	o.upgradeTo = nil
	stop := o.stopKeep
	o.stopKeep = nil
	o.mu.Unlock()
	if stop != nil {
		close(stop)
	}
	o.keepWG.Wait()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
