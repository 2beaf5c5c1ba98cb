package worker

import (
	"bytes"
	"context"
	"encoding/json"
)

// call is one client request being served on a session.
type call struct {
	h       *Handler
	session *session
	msg     *Message
	req     *Request
	// storeErr, when set by a method, fails the HTTP request with the
	// store's status (404/503/500) instead of a JSON-RPC answer.
	storeErr error
}

// sessionless reports whether the call is a sessionless (2026-07-28) one.
func (c *call) sessionless() bool { return c.req != nil && c.req.mrtr != nil }

// methodFunc serves one MCP request method. It returns the result, or a
// JSON-RPC error; a store failure goes to c.storeErr.
type methodFunc func(ctx context.Context, c *call) (any, *Error)

// method is one request method and how it is served.
type method struct {
	fn methodFunc
	// streams: the answer is an SSE stream when the client accepts one,
	// since the method may send notifications or requests first.
	streams bool
	// tracked: the request is recorded in flight (inflight/<id>) so a
	// notifications/cancelled on any worker cancels it and a worker that
	// resumes its stream can tell when its worker died.
	tracked bool
}

// notificationFunc handles one MCP notification method; a non-nil error is
// a store failure.
type notificationFunc func(ctx context.Context, h *Handler, s *session, params json.RawMessage) error

// dispatcher maps MCP methods to their handlers. initialize is not here:
// it runs without a session (transport.go).
type dispatcher struct {
	h             *Handler
	methods       map[string]method
	notifications map[string]notificationFunc
}

func newDispatcher(h *Handler) *dispatcher {
	d := &dispatcher{
		h:             h,
		methods:       map[string]method{},
		notifications: map[string]notificationFunc{},
	}
	srv := h.server
	d.methods["ping"] = method{fn: methodPing}
	d.methods["logging/setLevel"] = method{fn: methodSetLevel}
	d.methods["tools/list"] = method{fn: srv.listTools}
	d.methods["tools/call"] = method{fn: srv.callTool, streams: true, tracked: true}
	d.methods["resources/list"] = method{fn: srv.listResources}
	d.methods["resources/templates/list"] = method{fn: srv.listTemplates}
	d.methods["resources/read"] = method{fn: srv.readResource, tracked: true}
	d.methods["resources/subscribe"] = method{fn: methodSubscribe}
	d.methods["resources/unsubscribe"] = method{fn: methodUnsubscribe}
	d.methods["prompts/list"] = method{fn: srv.listPrompts}
	d.methods["prompts/get"] = method{fn: srv.getPrompt, tracked: true}
	d.methods["completion/complete"] = method{fn: srv.completion}
	d.methods["tasks/get"] = method{fn: methodTaskGet}
	d.methods["tasks/result"] = method{fn: methodTaskResult, tracked: true}
	d.methods["tasks/list"] = method{fn: methodTaskList}
	d.methods["tasks/cancel"] = method{fn: methodTaskCancel}
	d.notifications["notifications/initialized"] = notifyInitialized
	d.notifications["notifications/cancelled"] = notifyCancelled
	return d
}

// label is the metrics label for msg: its method when the worker knows it.
func (d *dispatcher) label(m *Message) string {
	switch m.Kind {
	case KindResponse:
		return labelResponse
	case KindRequest:
		if _, ok := d.methods[m.Method]; ok || m.Method == "initialize" {
			return m.Method
		}
	case KindNotification:
		if _, ok := d.notifications[m.Method]; ok {
			return m.Method
		}
	}
	return labelOther
}

// notify handles a notification; unknown notifications are accepted and
// ignored, as JSON-RPC requires.
func (d *dispatcher) notify(ctx context.Context, s *session, m *Message) error {
	fn, ok := d.notifications[m.Method]
	if !ok {
		return nil
	}
	return fn(ctx, d.h, s, m.Params)
}

// decodeParams unmarshals request params into v; absent params decode as
// an empty object.
func decodeParams(raw json.RawMessage, v any) *Error {
	if len(raw) == 0 {
		raw = json.RawMessage("{}")
	}
	if raw[0] != '{' {
		return errorf(CodeInvalidParams, "Invalid params: params must be an object")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return errorf(CodeInvalidParams, "Invalid params: %v", err)
	}
	return nil
}

// requestMeta reads params._meta.progressToken (nil when absent or
// null). It decodes into a struct, not requestMetaObject's map: one
// allocation fewer on the path of every call that has a _meta.
func requestMeta(params json.RawMessage) (progressToken json.RawMessage) {
	if len(params) == 0 || params[0] != '{' || !mayHaveMeta(params) {
		return nil
	}
	var p struct {
		Meta struct {
			ProgressToken json.RawMessage `json:"progressToken"`
		} `json:"_meta"`
	}
	if json.Unmarshal(params, &p) == nil && !isNull(p.Meta.ProgressToken) {
		return p.Meta.ProgressToken
	}
	return nil
}

// mayHaveMeta reports whether params may hold a "_meta" member, as
// encoding/json matches it (case-insensitively, escapes decoded): false
// only when no "_meta" in any case is spelled out and nothing is escaped.
// Most requests carry no _meta, and decoding their params only to find
// none was, twice per request, a sixth of the worker's JSON decoding.
func mayHaveMeta(params []byte) bool {
	if bytes.IndexByte(params, '\\') >= 0 {
		return true
	}
	for i := bytes.IndexByte(params, '_'); i >= 0 && i+5 <= len(params); {
		if bytes.EqualFold(params[i+1:i+5], []byte("meta")) {
			return true
		}
		j := bytes.IndexByte(params[i+1:], '_')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return false
}
