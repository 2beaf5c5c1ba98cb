package worker

import (
	"context"
	"encoding/json"
)

// call is one client request being served on a session.
type call struct {
	h       *Handler
	session *session
	msg     *Message
	// storeErr, when set by a method, fails the HTTP request with the
	// store's status (404/503/500) instead of a JSON-RPC answer.
	storeErr error
}

// methodFunc serves one MCP request method. It returns the result, or a
// JSON-RPC error; a store failure goes to c.storeErr.
type methodFunc func(ctx context.Context, c *call) (any, *Error)

// notificationFunc handles one MCP notification method; a non-nil error is
// a store failure.
type notificationFunc func(ctx context.Context, h *Handler, s *session, params json.RawMessage) error

// dispatcher maps MCP methods to their handlers. initialize is not here:
// it runs without a session (transport.go).
type dispatcher struct {
	h             *Handler
	methods       map[string]methodFunc
	notifications map[string]notificationFunc
	tools         *toolset
}

func newDispatcher(h *Handler) *dispatcher {
	d := &dispatcher{
		h:             h,
		methods:       map[string]methodFunc{},
		notifications: map[string]notificationFunc{},
		tools:         builtinTools(),
	}
	d.methods["ping"] = methodPing
	d.methods["tools/list"] = d.tools.list
	d.methods["tools/call"] = d.tools.call
	d.notifications["notifications/initialized"] = notifyInitialized
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

// call serves a request on a session. rerr is the JSON-RPC error to answer
// with; serr a store failure that decides the HTTP status instead.
func (d *dispatcher) call(ctx context.Context, s *session, m *Message) (result any, rerr *Error, serr error) {
	fn, ok := d.methods[m.Method]
	if !ok {
		return nil, errorf(CodeMethodNotFound, "Method not found: %s", m.Method), nil
	}
	c := &call{h: d.h, session: s, msg: m}
	result, rerr = fn(ctx, c)
	if c.storeErr != nil {
		return nil, nil, c.storeErr
	}
	return result, rerr, nil
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
