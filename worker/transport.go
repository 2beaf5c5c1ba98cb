package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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

// format is how a request's answer is written.
type format int

const (
	formatJSON format = iota
	formatSSE
)

// statusWriter remembers the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
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
	w := &statusWriter{ResponseWriter: rw}
	w.Header().Set(HeaderWorker, h.cfg.Common.ID)
	label := labelInvalid
	defer func() {
		if w.status == 0 {
			w.status = http.StatusOK
		}
		d := time.Since(start)
		h.metrics.observe(label, w.status, d)
		if h.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
			h.log.WithFields(logrus.Fields{"http_method": r.Method, "method": label, "status": w.status,
				"duration": d, "session": r.Header.Get(HeaderSessionID)}).Debug("mcp request")
		}
	}()
	if origin := r.Header.Get("Origin"); origin != "" && !h.originAllowed(origin) {
		h.fail(w, http.StatusForbidden, nil, errorf(CodeTransport, "Forbidden: Origin %q is not allowed", origin))
		return
	}
	switch r.Method {
	case http.MethodPost:
		label = h.post(w, r)
	case http.MethodDelete:
		label = labelDelete
		h.delete(w, r)
	default:
		if r.Method == http.MethodGet {
			label = labelGet
		}
		// The standalone SSE stream (GET) is not served yet; the spec
		// allows 405 for it.
		w.Header().Set("Allow", "POST, DELETE")
		h.fail(w, http.StatusMethodNotAllowed, nil, errorf(CodeTransport, "Method Not Allowed: %s /mcp is not served; use POST (messages) or DELETE (end session)", r.Method))
	}
}

// post handles one JSON-RPC message and returns the method label.
func (h *Handler) post(w http.ResponseWriter, r *http.Request) string {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		h.fail(w, http.StatusUnsupportedMediaType, nil, errorf(CodeTransport, "Unsupported Media Type: Content-Type must be application/json"))
		return labelInvalid
	}
	fmtOut, ok := negotiate(r.Header.Values("Accept"))
	if !ok {
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

	// A client disconnect is not a cancellation (MCP): finish store writes
	// even when the client went away, bounded by the request timeout.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.cfg.RequestTimeout)
	defer cancel()

	sid := r.Header.Get(HeaderSessionID)
	if msg.Kind == KindRequest && msg.Method == "initialize" {
		if sid != "" {
			h.fail(w, http.StatusBadRequest, msg.ID, errorf(CodeInvalidRequest, "Bad Request: initialize must not carry %s; it starts a new session", HeaderSessionID))
			return label
		}
		h.initialize(ctx, w, msg, fmtOut)
		return label
	}
	if sid == "" {
		h.fail(w, http.StatusBadRequest, msg.ID, errorf(CodeInvalidRequest, "Bad Request: %s header is required (send initialize first)", HeaderSessionID))
		return label
	}
	if !validSessionID(sid) {
		h.fail(w, http.StatusBadRequest, msg.ID, errorf(CodeInvalidRequest, "Bad Request: %s must be 1 to %d visible ASCII characters", HeaderSessionID, maxSessionIDLen))
		return label
	}
	if pv := r.Header.Get(HeaderProtocolVersion); pv != "" && !versionSupported(pv) {
		h.fail(w, http.StatusBadRequest, msg.ID, errorf(CodeInvalidRequest, "Bad Request: unsupported %s %q (supported: %s)", HeaderProtocolVersion, pv, strings.Join(supportedVersions, ", ")))
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
		// Answers to server→client requests; none are sent yet.
		w.WriteHeader(http.StatusAccepted)
	case KindRequest:
		result, rerr, serr := h.disp.call(ctx, sess, msg)
		if serr != nil {
			h.storeFail(w, msg.ID, "update", serr)
			return label
		}
		h.answer(w, msg.ID, result, rerr, fmtOut)
	}
	return label
}

// initialize creates a session, stores it, and only then answers.
func (h *Handler) initialize(ctx context.Context, w http.ResponseWriter, msg *Message, f format) {
	var p struct {
		ProtocolVersion string          `json:"protocolVersion"`
		Capabilities    json.RawMessage `json:"capabilities"`
		ClientInfo      json.RawMessage `json:"clientInfo"`
	}
	if len(msg.Params) == 0 || msg.Params[0] != '{' || json.Unmarshal(msg.Params, &p) != nil || p.ProtocolVersion == "" {
		h.answer(w, msg.ID, nil, errorf(CodeInvalidParams, "Invalid params: initialize needs an object with a string protocolVersion"), f)
		return
	}
	version := p.ProtocolVersion
	if !versionSupported(version) {
		version = LatestProtocolVersion
	}
	caps := serverCapabilities()
	rec := sessionRecord{
		V:                  sessionRecordVersion,
		ProtocolVersion:    version,
		ClientCapabilities: compactOrNil(p.Capabilities),
		ClientInfo:         compactOrNil(p.ClientInfo),
		ServerCapabilities: caps,
		CreatedBy:          h.cfg.Common.ID,
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
	h.answer(w, msg.ID, map[string]any{
		"protocolVersion": version,
		"capabilities":    caps,
		"serverInfo":      map[string]string{"name": ServerName, "version": h.cfg.Version},
	}, nil, f)
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
	if err := h.store.Delete(ctx, sid); err != nil {
		h.storeFail(w, nil, "delete", err)
		return
	}
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

// loadSession reads the session from the store (no cache: any worker may
// have changed it) and resets its idle timer.
func (h *Handler) loadSession(ctx context.Context, id string) (*session, error) {
	s, err := h.store.Get(ctx, id, true)
	if err != nil {
		return nil, err
	}
	rec, err := decodeRecord(s.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errCorruptRecord, err)
	}
	return &session{id: id, version: s.Version, rec: rec}, nil
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
		stored, err := h.store.CompareAndSet(ctx, s.id, s.version, next.encode())
		if err == nil {
			s.version, s.rec = stored.Version, next
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
	s, err := h.store.Get(ctx, id, false)
	if err != nil {
		return nil, err
	}
	rec, err := decodeRecord(s.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errCorruptRecord, err)
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

// fail writes an HTTP error status with a JSON-RPC error body.
func (h *Handler) fail(w http.ResponseWriter, status int, id json.RawMessage, e *Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(encodeError(id, e))
}

func (h *Handler) tooLarge(w http.ResponseWriter) {
	h.fail(w, http.StatusRequestEntityTooLarge, nil, errorf(CodeTransport, "Request Entity Too Large: the body exceeds %d bytes", h.cfg.MaxBodyBytes))
}

// answer writes the response to a request as JSON or as one SSE event.
func (h *Handler) answer(w http.ResponseWriter, id json.RawMessage, result any, rerr *Error, f format) {
	var body []byte
	if rerr != nil {
		body = encodeError(id, rerr)
	} else {
		var err error
		if body, err = encodeResult(id, result); err != nil {
			h.log.WithError(err).Error("encode result")
			body = encodeError(id, errorf(CodeInternalError, "Internal error: the result does not encode"))
		}
	}
	if f == formatSSE {
		writeSSE(w, body)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// writeSSE answers with an SSE stream of one event that carries the
// response, then ends the stream. The event id names a fresh stream
// (resumption arrives with the GET stream).
func writeSSE(w http.ResponseWriter, data []byte) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// data is compact JSON: encoding/json escapes newlines in strings.
	_, _ = fmt.Fprintf(w, "event: message\nid: %s-1\ndata: %s\n\n", newStreamID(), data)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

func newStreamID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// negotiate picks the answer format from Accept headers: JSON when the
// client accepts it (our default), SSE when it accepts only
// text/event-stream; ok is false when it accepts neither. No Accept header
// accepts anything.
func negotiate(accept []string) (f format, ok bool) {
	if len(accept) == 0 {
		return formatJSON, true
	}
	var wantJSON, wantSSE bool
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
				wantJSON, wantSSE = true, true
			case "application/*", "application/json":
				wantJSON = true
			case "text/*", "text/event-stream":
				wantSSE = true
			}
		}
	}
	switch {
	case wantJSON:
		return formatJSON, true
	case wantSSE:
		return formatSSE, true
	}
	return formatJSON, false
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
