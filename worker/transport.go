package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/peerconn"
	"github.com/sirupsen/logrus"
)

// HTTP header names of Streamable HTTP (Go canonicalizes on lookup, so the
// spelling a client uses does not matter).
const (
	HeaderSessionID       = "Mcp-Session-Id"
	HeaderProtocolVersion = "Mcp-Protocol-Version"
	// HeaderWorker names the worker that served a /mcp request.
	HeaderWorker = "X-Erlmcp-Worker"
)

// Protocol versions served with sessions, newest first.
var supportedVersions = []string{"2025-11-25", "2025-06-18", "2025-03-26"}

// LatestProtocolVersion is offered when the client asks for a version the
// worker does not serve.
const LatestProtocolVersion = "2025-11-25"

func versionSupported(v string) bool {
	for _, s := range supportedVersions {
		if s == v {
			return true
		}
	}
	return false
}

// statusWriter remembers the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
	// rpcCode is the JSON-RPC error code of the answer, 0 for none or not
	// known (an error inside an SSE stream).
	rpcCode int
}

// noteError remembers the JSON-RPC error code of an answer w carries,
// for the debug log (reqtrace.go).
func noteError(w http.ResponseWriter, e *Error) {
	if sw, ok := w.(*statusWriter); ok && e != nil {
		sw.rpcCode = e.Code
	}
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// serveMCP is the Streamable HTTP endpoint.
func (h *Handler) serveMCP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if h.draining.Load() {
		h.lastArrival.Store(start.UnixNano())
	}
	h.active.Add(1)
	defer h.active.Add(-1)
	w := &statusWriter{ResponseWriter: rw}
	w.Header().Set(HeaderWorker, h.cfg.Common.ID)
	label := labelInvalid
	var trace *reqTrace
	if h.tracing {
		var ctx context.Context
		ctx, trace = h.withTrace(r.Context())
		r = r.WithContext(ctx)
	}
	defer func() {
		if w.status == 0 {
			w.status = http.StatusOK
		}
		d := time.Since(start)
		h.metrics.observe(label, w.status, d)
		if trace != nil {
			h.logRequest(r, label, w, start, d, trace)
		}
	}()
	if origin := r.Header.Get("Origin"); origin != "" && !h.originAllowed(origin) {
		h.fail(w, http.StatusForbidden, nil, errorf(CodeTransport, "Forbidden: Origin %q is not allowed", origin))
		return
	}
	if h.auth != nil {
		p, err := h.auth.principal(r)
		if err != nil {
			h.unauthorized(w, err)
			return
		}
		r = r.WithContext(withPrincipal(r.Context(), p))
	}
	switch r.Method {
	case http.MethodPost:
		label = h.post(w, r)
	case http.MethodDelete:
		label = labelDelete
		if h.modernRequest(r) {
			h.modernNotAllowed(w)
			return
		}
		h.delete(w, r)
	case http.MethodGet:
		label = labelGet
		if h.modernRequest(r) {
			h.modernNotAllowed(w)
			return
		}
		h.get(w, r)
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		h.fail(w, http.StatusMethodNotAllowed, nil, errorf(CodeTransport, "Method Not Allowed: %s /mcp is not served; use POST (messages), GET (server stream) or DELETE (end session)", r.Method))
	}
}

// post handles one JSON-RPC message and returns the method label.
func (h *Handler) post(w http.ResponseWriter, r *http.Request) string {
	if ct := r.Header.Get("Content-Type"); ct != "application/json" && !isJSONMediaType(ct) {
		h.fail(w, http.StatusUnsupportedMediaType, nil, errorf(CodeTransport, "Unsupported Media Type: Content-Type must be application/json"))
		return labelInvalid
	}
	acc := accepted(r.Header.Values("Accept"))
	if !acc.json && !acc.sse {
		h.fail(w, http.StatusNotAcceptable, nil, errorf(CodeTransport, "Not Acceptable: Accept must include application/json or text/event-stream (clients should list both)"))
		return labelInvalid
	}
	if r.ContentLength > h.cfg.MaxBodyBytes {
		h.tooLarge(w)
		return labelInvalid
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.tooLarge(w)
		} else {
			h.fail(w, http.StatusBadRequest, nil, errorf(CodeParseError, "Parse error: reading the body: %v", err))
		}
		return labelInvalid
	}
	msg, jerr := Decode(body)
	if jerr != nil {
		var id json.RawMessage
		if msg != nil {
			id = msg.ID
		}
		h.fail(w, http.StatusBadRequest, id, jerr)
		return labelInvalid
	}
	label := h.disp.label(msg)
	// The request's start, for the counter's overtaken-call check
	// (Request.started, from Message.received), is taken before the check below: while its sender
	// was still connected, no later call of the session can have been sent
	// because this one failed. Taken after it (when the Request is built,
	// past the session read), a pause in between let a stale call start
	// "after" the call that overtook it, and apply (a skipped increment in
	// CI's pause scenario).
	msg.received = time.Now()
	if h.tracing {
		if t := traceOf(r.Context()); t != nil {
			t.received = msg.received
		}
	}
	if msg.Kind == KindRequest && peerconn.Gone(r) {
		// Its sender (the front, a client) gave up before this worker
		// started it: the request sat here while the worker was frozen
		// or starved. Run now, it would run after whatever was sent since
		// (for a counter: an increment applied after a later one). Once
		// started, a disconnect no longer stops it (below).
		h.log.WithFields(logrus.Fields{"method": msg.Method, "remote": r.RemoteAddr}).Warn("sender gone before the request started; not run")
		return label
	}

	// A client disconnect is not a cancellation (MCP): finish store writes
	// even when the client went away, bounded by the request timeout.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.cfg.RequestTimeout)
	defer cancel()

	if e := h.headerMismatch(r, msg); e != nil {
		h.fail(w, http.StatusBadRequest, msg.ID, e)
		return label
	}
	if pv := requestedVersion(r, msg); pv != "" && !versionSupported(pv) && !(msg.Method == "initialize" && r.Header.Get(HeaderProtocolVersion) == "") {
		if h.serveModern(w, r, msg, pv) {
			return label
		}
		h.fail(w, http.StatusBadRequest, msg.ID, h.errUnsupported(pv))
		return label
	}
	sid := r.Header.Get(HeaderSessionID)
	if msg.Kind == KindRequest && msg.Method == "initialize" {
		if sid != "" {
			h.fail(w, http.StatusBadRequest, msg.ID, errorf(CodeInvalidRequest, "Bad Request: initialize must not carry %s; it starts a new session", HeaderSessionID))
			return label
		}
		h.initialize(ctx, w, msg, acc)
		return label
	}
	sid, ok := h.sessionHeader(w, r, msg.ID)
	if !ok {
		return label
	}
	sess, err := h.loadSession(ctx, sid)
	if err != nil {
		h.storeFail(w, msg.ID, "get", err)
		return label
	}
	switch msg.Kind {
	case KindNotification:
		if err := h.disp.notify(ctx, sess, msg); err != nil {
			h.storeFail(w, nil, "update", err)
			return label
		}
		w.WriteHeader(http.StatusAccepted)
	case KindResponse:
		// The client's answer to a server→client request: the handler
		// waiting for it may run on any worker, and reads it from here.
		if _, err := h.store.AppendEvents(ctx, sess.id, streamReplies, body); err != nil {
			h.storeFail(w, nil, "append", err)
			return label
		}
		w.WriteHeader(http.StatusAccepted)
	case KindRequest:
		cancel() // serveRequest sets its own budget
		h.serveRequest(w, r, sess, msg, acc)
	}
	return label
}

// sessionHeader reads and checks Mcp-Session-Id; on failure it has
// answered 400.
func (h *Handler) sessionHeader(w http.ResponseWriter, r *http.Request, id json.RawMessage) (string, bool) {
	sid := r.Header.Get(HeaderSessionID)
	if sid == "" {
		h.fail(w, http.StatusBadRequest, id, errorf(CodeInvalidRequest, "Bad Request: %s header is required (send initialize first)", HeaderSessionID))
		return "", false
	}
	if !validSessionID(sid) {
		h.fail(w, http.StatusBadRequest, id, errorf(CodeInvalidRequest, "Bad Request: %s must be 1 to %d visible ASCII characters", HeaderSessionID, maxSessionIDLen))
		return "", false
	}
	return sid, true
}

// CodeCancelled answers, in JSON mode, a request the client cancelled.
const CodeCancelled = -32800

// serveRequest runs a request on a session and answers it.
//
// A request that may stream (the client accepts SSE and the method sends
// notifications or requests, or the client accepts only SSE) is answered
// as plain JSON, with no store write for it, unless it sends a message to
// the client before it ends or runs longer than InflightDelay; then, and
// only then, its response turns into an SSE stream: the request is first
// recorded in flight (so a client resuming the stream on another worker
// can tell whether its worker still runs it), then the priming event and
// the first message are stored in one append, and every later event is
// stored before it is written. A tracked request that cannot stream is
// recorded in flight after InflightDelay, so a notifications/cancelled on
// any worker reaches it. InflightDelay 0 streams and records at once.
func (h *Handler) serveRequest(w http.ResponseWriter, r *http.Request, sess *session, msg *Message, acc acceptance) {
	m, ok := h.disp.methods[msg.Method]
	if !ok {
		m = method{fn: func(context.Context, *call) (any, *Error) {
			return nil, errorf(CodeMethodNotFound, "Method not found: %s", msg.Method)
		}}
	}
	token := requestMeta(msg.Params)
	mayStream := (acc.sse && (m.streams || token != nil)) || !acc.json
	budget := h.cfg.RequestTimeout
	if m.tracked {
		budget = h.cfg.CallTimeout
	}
	// A client disconnect is not a cancellation (MCP).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), budget)
	defer cancel()
	stream := streamGet // a JSON answer: other messages go to the GET stream
	if mayStream {
		stream = requestStream(msg.ID)
	}
	ob := &outbox{h: h, sid: sess.id, stream: stream}
	defer ob.close()
	runCtx := ctx
	var tr *tracker
	if m.tracked {
		onStream := ""
		if mayStream {
			onStream = stream
		}
		tr = h.newTracker(ctx, sess.id, msg.ID, onStream)
		defer tr.done()
		runCtx = tr.ctx
	}
	if mayStream {
		ob.upgradeTo, ob.primes, ob.tr = w, primes(sess.rec.ProtocolVersion), tr
	}
	switch {
	case h.cfg.InflightDelay <= 0 && mayStream:
		if err := ob.upgrade(ctx); err != nil {
			h.storeFail(w, msg.ID, "append", err)
			return
		}
	case h.cfg.InflightDelay <= 0 && tr != nil:
		if err := tr.register(); err != nil {
			h.storeFail(w, msg.ID, "update", err)
			return
		}
	case tr != nil:
		timer := time.AfterFunc(h.cfg.InflightDelay, func() {
			var err error
			if mayStream {
				err = ob.upgrade(ctx)
			} else {
				err = tr.register()
			}
			if err != nil {
				h.log.WithError(err).Warn("recording a running request in flight failed; until a later try it cannot be cancelled or resumed")
			}
		})
		defer timer.Stop()
	}
	c := &call{h: h, session: sess, msg: msg}
	c.req = &Request{h: h, sess: sess, id: msg.ID, method: msg.Method, progressToken: token, out: ob, started: msg.started()}
	result, rerr := m.fn(runCtx, c)
	streaming := ob.seal()
	if errors.Is(context.Cause(runCtx), errCancelled) {
		// Cancelled by the client: MCP sends no response. A JSON answer
		// must still say something.
		switch {
		case streaming:
		case acc.json:
			h.answer(w, msg.ID, nil, errorf(CodeCancelled, "Request cancelled"))
		default:
			sseHeaders(w)
		}
		return
	}
	if c.storeErr != nil {
		if !streaming && acc.json {
			h.storeFail(w, msg.ID, "update", c.storeErr)
			return
		}
		if errors.Is(c.storeErr, ErrSessionNotFound) {
			rerr = errorf(CodeSessionNotFound, "Session not found: it was deleted or has expired")
		} else {
			h.log.WithError(c.storeErr).Warn("session store call failed during a request")
			rerr = errorf(CodeStoreUnavailable, "Service Unavailable: the session store is unreachable; retry in a moment")
		}
		result = nil
	}
	if !streaming {
		if acc.json {
			h.answer(w, msg.ID, result, rerr)
		} else {
			// The client takes only SSE: one event, not stored (it
			// needs no resumption: it is the whole stream).
			sseHeaders(w)
			writeEvent(w, "", h.encodeAnswer(msg.ID, result, rerr))
		}
		if tr != nil && tr.registered() {
			flush(w) // before tr.done removes the in-flight record
		}
		return
	}
	body := h.encodeAnswer(msg.ID, result, rerr)
	sctx, scancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.cfg.RequestTimeout)
	defer scancel()
	if _, err := ob.send(sctx, body); err != nil {
		h.log.WithError(err).Warn("could not store a response; sending it without an event id")
		ob.writeRaw(body)
	}
}

// initialize creates a session, stores it, and only then answers.
func (h *Handler) initialize(ctx context.Context, w http.ResponseWriter, msg *Message, acc acceptance) {
	var p struct {
		ProtocolVersion string          `json:"protocolVersion"`
		Capabilities    json.RawMessage `json:"capabilities"`
		ClientInfo      json.RawMessage `json:"clientInfo"`
	}
	if len(msg.Params) == 0 || msg.Params[0] != '{' || json.Unmarshal(msg.Params, &p) != nil || p.ProtocolVersion == "" {
		if !acc.json {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			writeEvent(w, "", encodeError(msg.ID, errorf(CodeInvalidParams, "Invalid params: initialize needs an object with a string protocolVersion")))
			return
		}
		h.answer(w, msg.ID, nil, errorf(CodeInvalidParams, "Invalid params: initialize needs an object with a string protocolVersion"))
		return
	}
	version := p.ProtocolVersion
	if !versionSupported(version) {
		version = LatestProtocolVersion
	}
	caps := h.server.capabilities()
	rec := sessionRecord{
		V:                  sessionRecordVersion,
		ProtocolVersion:    version,
		ClientCapabilities: compactOrNil(p.Capabilities),
		ClientInfo:         compactOrNil(p.ClientInfo),
		ServerCapabilities: caps,
		CreatedBy:          h.cfg.Common.ID,
		Principal:          principalOf(ctx),
	}
	var sid string
	for attempt := 0; ; attempt++ {
		sid = newSessionID()
		_, err := h.store.Create(ctx, sid, rec.encode(), h.cfg.SessionIdleTTL)
		if err == nil {
			break
		}
		if errors.Is(err, ErrSessionExists) && attempt < 3 {
			continue // 128 random bits collided; take another
		}
		h.storeFail(w, msg.ID, "create", err)
		return
	}
	h.metrics.sessions.Inc()
	h.log.WithField("protocol_version", version).Debug("session created")
	w.Header().Set(HeaderSessionID, sid)
	res := map[string]any{
		"protocolVersion": version,
		"capabilities":    caps,
		"serverInfo":      map[string]string{"name": ServerName, "version": h.cfg.Version},
	}
	if h.server.Instructions != "" {
		res["instructions"] = h.server.Instructions
	}
	if acc.json {
		h.answer(w, msg.ID, res, nil)
		return
	}
	// SSE only: the answer is an event of the request's stream, stored
	// like every other.
	body := h.encodeAnswer(msg.ID, res, nil)
	stream := requestStream(msg.ID)
	seqs, err := h.store.AppendEvents(ctx, sid, stream, body)
	if err != nil {
		h.storeFail(w, msg.ID, "append", err)
		return
	}
	sseHeaders(w)
	writeEvent(w, eventID(stream, seqs[0]), body)
}

// delete ends a session.
func (h *Handler) delete(w http.ResponseWriter, r *http.Request) {
	sid := r.Header.Get(HeaderSessionID)
	if sid == "" {
		h.fail(w, http.StatusBadRequest, nil, errorf(CodeInvalidRequest, "Bad Request: %s header is required", HeaderSessionID))
		return
	}
	if !validSessionID(sid) {
		h.fail(w, http.StatusBadRequest, nil, errorf(CodeInvalidRequest, "Bad Request: %s must be 1 to %d visible ASCII characters", HeaderSessionID, maxSessionIDLen))
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.cfg.RequestTimeout)
	defer cancel()
	// Only the session's principal may end it.
	sess, err := h.loadSessionNoTouch(ctx, sid)
	if err != nil {
		h.storeFail(w, nil, "get", err)
		return
	}
	h.cache.forget(sid)
	if err := h.store.Delete(ctx, sid); err != nil {
		h.storeFail(w, nil, "delete", err)
		return
	}
	// 204 only once no worker can serve the session from its cache.
	h.settle(ctx, sess.rec)
	w.WriteHeader(http.StatusNoContent)
}

// session is a session as loaded from the store for one request.
type session struct {
	id      string
	version uint64
	rec     sessionRecord
}

// errCorruptRecord marks a session record that does not decode.
var errCorruptRecord = errors.New("session record does not decode")

// loadSession reads the session, from this worker's session cache when it
// holds a fresh record of it (sessioncache.go says why that is safe),
// else from the store, and keeps its idle timer running.
//
// It reads without touching, and writes a touch only when the record's
// updated_at is older than touchInterval (min(idle TTL/10, 60 s)); every
// write to the session's record, events, state or tasks refreshes
// updated_at in the store too. So a session expires at the earliest
// idle TTL − touchInterval after its last request (up to a tenth of the
// TTL early, never late), plus any skew between this worker's clock and
// the store's. A cached record whose touch is due is read again.
func (h *Handler) loadSession(ctx context.Context, id string) (*session, error) {
	if strings.HasPrefix(id, indexSessionPrefix) {
		return nil, ErrSessionNotFound // a worker's index, not an MCP session
	}
	now := time.Now()
	if e, ok := h.cache.fresh(id, now); ok && !h.touchDue(e.sess, now) {
		// Another principal is refused from the cache as from the store.
		if err := h.checkPrincipal(ctx, e.rec); err != nil {
			return nil, err
		}
		return &session{id: id, version: e.sess.Version, rec: e.rec}, nil
	}
	s, err := h.store.Get(ctx, id, false)
	if err != nil {
		h.cache.forget(id)
		return nil, err
	}
	rec, err := h.cache.decode(id, s, now)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errCorruptRecord, err)
	}
	// Before the touch: another principal must not keep the session alive.
	if err := h.checkPrincipal(ctx, rec); err != nil {
		return nil, err
	}
	if h.touchDue(s, now) {
		sent := time.Now()
		if s, err = h.store.Get(ctx, id, true); err != nil {
			h.cache.forget(id)
			return nil, err
		}
		// Another worker may have changed the record in between.
		if rec, err = h.cache.decode(id, s, sent); err != nil {
			return nil, fmt.Errorf("%w: %v", errCorruptRecord, err)
		}
	}
	return &session{id: id, version: s.Version, rec: rec}, nil
}

// checkPrincipal refuses a session bound to a principal other than the
// request's, as not found (auth.go).
func (h *Handler) checkPrincipal(ctx context.Context, rec sessionRecord) error {
	if rec.Principal == principalOf(ctx) {
		return nil
	}
	h.metrics.principalMismatches.Inc()
	h.log.WithField("principal", principalOf(ctx)).Warn("a request named a session of another principal; answered as not found")
	return errWrongPrincipal
}

// maxTouchInterval bounds touchInterval for long idle TTLs.
const maxTouchInterval = 60 * time.Second

// touchInterval is how stale a record's updated_at may get before a
// request touches it: a tenth of its idle TTL, at most maxTouchInterval.
func touchInterval(ttl time.Duration) time.Duration { return min(ttl/10, maxTouchInterval) }

// touchDue reports whether a request at now must reset s's idle timer. A
// store that does not report updated_at gets a touch every time.
func (h *Handler) touchDue(s Session, now time.Time) bool {
	if s.UpdatedAt.IsZero() {
		return true
	}
	ttl := s.IdleTTL
	if ttl <= 0 {
		ttl = h.cfg.SessionIdleTTL // not reported: assume ours
	}
	return now.Sub(s.UpdatedAt) >= touchInterval(ttl)
}

// maxUpdateAttempts bounds the read-modify-write loop on version conflicts.
const maxUpdateAttempts = 8

// updateSession applies change to the session record with compare-and-set,
// re-reading and retrying on a version conflict. change returns false when
// there is nothing to write.
func (h *Handler) updateSession(ctx context.Context, s *session, change func(*sessionRecord) bool) error {
	for range maxUpdateAttempts {
		next := s.rec
		if !change(&next) {
			return nil
		}
		h.cache.forget(s.id)
		stored, err := h.store.CompareAndSet(ctx, s.id, s.version, next.encode())
		if err == nil {
			old := s.rec
			s.version, s.rec = stored.Version, next
			// Acknowledged only once no worker can serve the old record.
			h.settle(ctx, old)
			return nil
		}
		if !errors.Is(err, ErrVersionConflict) {
			return err
		}
		fresh, err := h.loadSessionNoTouch(ctx, s.id)
		if err != nil {
			return err
		}
		*s = *fresh
	}
	return fmt.Errorf("%w: %d conflicting writes to one session in a row", ErrStoreUnavailable, maxUpdateAttempts)
}

func (h *Handler) loadSessionNoTouch(ctx context.Context, id string) (*session, error) {
	if strings.HasPrefix(id, indexSessionPrefix) {
		return nil, ErrSessionNotFound // a worker's index, not an MCP session
	}
	sent := time.Now()
	s, err := h.store.Get(ctx, id, false)
	if err != nil {
		h.cache.forget(id)
		return nil, err
	}
	rec, err := h.cache.decode(id, s, sent)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errCorruptRecord, err)
	}
	if err := h.checkPrincipal(ctx, rec); err != nil {
		return nil, err
	}
	return &session{id: id, version: s.Version, rec: rec}, nil
}

// storeFail answers a failed store call: 404 for a session that is gone,
// 503 (Retry-After: 1) when the store cannot be reached, 500 otherwise.
func (h *Handler) storeFail(w http.ResponseWriter, id json.RawMessage, op string, err error) {
	switch {
	case errors.Is(err, ErrSessionNotFound):
		h.fail(w, http.StatusNotFound, id, errorf(CodeSessionNotFound, "Session not found: it was deleted or has expired; send initialize without %s to start a new one", HeaderSessionID))
	case errors.Is(err, ErrStoreUnavailable), errors.Is(err, context.DeadlineExceeded):
		h.metrics.storeFailures.WithLabelValues(op).Inc()
		h.log.WithError(err).WithField("op", op).Warn("session store unreachable")
		w.Header().Set("Retry-After", "1")
		h.fail(w, http.StatusServiceUnavailable, id, errorf(CodeStoreUnavailable, "Service Unavailable: the session store is unreachable; retry in a moment"))
	default:
		h.metrics.storeFailures.WithLabelValues(op).Inc()
		h.log.WithError(err).WithField("op", op).Error("session store call failed")
		h.fail(w, http.StatusInternalServerError, id, errorf(CodeInternalError, "Internal error: session store %s failed", op))
	}
}

// started is when this worker took on the request msg (see post), or now
// when that is not known.
func (msg *Message) started() time.Time {
	if msg.received.IsZero() {
		return time.Now()
	}
	return msg.received
}

// fail writes an HTTP error status with a JSON-RPC error body.
func (h *Handler) fail(w http.ResponseWriter, status int, id json.RawMessage, e *Error) {
	noteError(w, e)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(encodeError(id, e))
}

func (h *Handler) tooLarge(w http.ResponseWriter) {
	h.fail(w, http.StatusRequestEntityTooLarge, nil, errorf(CodeTransport, "Request Entity Too Large: the body exceeds %d bytes", h.cfg.MaxBodyBytes))
}

// encodeAnswer encodes the response to a request.
func (h *Handler) encodeAnswer(id json.RawMessage, result any, rerr *Error) []byte {
	if rerr != nil {
		return encodeError(id, rerr)
	}
	body, err := encodeResult(id, result)
	if err != nil {
		h.log.WithError(err).Error("encode result")
		body = encodeError(id, errorf(CodeInternalError, "Internal error: the result does not encode"))
	}
	return body
}

// answer writes the response to a request as JSON.
func (h *Handler) answer(w http.ResponseWriter, id json.RawMessage, result any, rerr *Error) {
	body := h.encodeAnswer(id, result, rerr)
	noteError(w, rerr)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// acceptance is what a request's Accept headers allow.
type acceptance struct{ json, sse bool }

// isJSONMediaType reports whether a Content-Type is application/json
// (parameters allowed).
func isJSONMediaType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}

// accepted reads Accept headers. No Accept header accepts JSON.
func accepted(accept []string) acceptance {
	if len(accept) == 0 {
		return acceptance{json: true}
	}
	// What MCP clients send, without parsing it on every request.
	if len(accept) == 1 {
		switch accept[0] {
		case "application/json, text/event-stream", "text/event-stream, application/json":
			return acceptance{json: true, sse: true}
		case "application/json":
			return acceptance{json: true}
		}
	}
	var a acceptance
	for _, line := range accept {
		for _, part := range strings.Split(line, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			mt, params, err := mime.ParseMediaType(part)
			if err != nil {
				continue
			}
			if q, ok := params["q"]; ok {
				if v, err := strconv.ParseFloat(q, 64); err == nil && v <= 0 {
					continue
				}
			}
			switch mt {
			case "*/*":
				a.json, a.sse = true, true
			case "application/*", "application/json":
				a.json = true
			case "text/*", "text/event-stream":
				a.sse = true
			}
		}
	}
	return a
}

// accepts reports whether Accept headers allow JSON and SSE.
func accepts(accept []string) (json, sse bool) {
	a := accepted(accept)
	return a.json, a.sse
}

// originAllowed accepts configured origins and http(s) loopback origins.
func (h *Handler) originAllowed(origin string) bool {
	if h.anyOrig {
		return true
	}
	n, err := normalizeOrigin(origin)
	if err != nil {
		return false
	}
	if h.origins[n] {
		return true
	}
	u, _ := url.Parse(n)
	if u.Scheme != "http" && u.Scheme != "https" {
		return false
	}
	switch host := u.Hostname(); host {
	case "localhost":
		return true
	default:
		ip := net.ParseIP(host)
		return ip != nil && ip.IsLoopback() && (host == "127.0.0.1" || host == "::1")
	}
}

func compactOrNil(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || isNull(raw) {
		return nil
	}
	return raw
}
