package worker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// JSON-RPC 2.0 and MCP error codes the worker answers with.
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternalError  = -32603
	// CodeTransport is the server-error code for a request the HTTP layer
	// refuses before reading it as JSON-RPC (403, 405, 406, 413, 415), as
	// the TypeScript SDK does.
	CodeTransport = -32000
	// CodeSessionNotFound answers a request naming a session that was
	// deleted or expired (HTTP 404).
	CodeSessionNotFound = -32001
	// CodeStoreUnavailable answers a request when the session store cannot
	// be reached (HTTP 503, Retry-After).
	CodeStoreUnavailable = -32003
)

// Kind says what a decoded JSON-RPC message is.
type Kind int

// Message kinds.
const (
	KindRequest Kind = iota + 1
	KindNotification
	KindResponse
)

func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindNotification:
		return "notification"
	case KindResponse:
		return "response"
	}
	return "invalid"
}

// Message is one decoded JSON-RPC 2.0 message. ID, Params, Result and Error
// keep the bytes the peer sent, so an id is echoed back exactly.
type Message struct {
	Kind   Kind
	ID     json.RawMessage // request and response; nil for a notification
	Method string          // request and notification
	Params json.RawMessage // request and notification; nil when absent
	Result json.RawMessage // response
	Error  json.RawMessage // response

	// received is when this worker took the message off the wire (set by
	// post; zero for messages read back from the store).
	received time.Time
}

// Error is a JSON-RPC error object.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    any    `json:"data,omitempty"`
}

func (e *Error) Error() string { return fmt.Sprintf("json-rpc error %d: %s", e.Code, e.Message) }

// errorf builds an *Error.
func errorf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Decode reads exactly one JSON-RPC 2.0 message from body. On failure the
// *Error says why: CodeParseError when body is not JSON, CodeInvalidRequest
// when it is JSON but not a valid message (a batch included: batches were
// removed from MCP in 2025-06-18). The returned Message is non-nil even on
// an invalid-request error when an id could be read, so the caller can echo
// it; its Kind is then 0.
func Decode(body []byte) (*Message, *Error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		if !json.Valid(body) {
			return nil, parseBodyError()
		}
		if len(trimmed) > 0 && trimmed[0] == '[' {
			return nil, errorf(CodeInvalidRequest, "Invalid Request: JSON-RPC batches are not supported; send one message per POST")
		}
		return nil, errorf(CodeInvalidRequest, "Invalid Request: a JSON-RPC message must be a JSON object")
	}
	// Member names match exactly (JSON-RPC is case sensitive;
	// encoding/json's struct matching is not). The values are slices of
	// body, which the caller must not change.
	fields, ok := splitMembers(body)
	if !ok {
		return nil, parseBodyError()
	}
	m := &Message{}
	rawID, hasID := fields.id, fields.id != nil
	if hasID {
		if !validID(rawID) {
			return nil, errorf(CodeInvalidRequest, "Invalid Request: id must be a string or a number")
		}
		m.ID = rawID
	}
	if string(fields.jsonrpc) != `"2.0"` {
		var version string
		if err := json.Unmarshal(fields.jsonrpc, &version); err != nil || version != "2.0" {
			return m, errorf(CodeInvalidRequest, `Invalid Request: "jsonrpc" must be "2.0"`)
		}
	}
	rawMethod, hasMethod := fields.method, fields.method != nil
	rawResult, hasResult := fields.result, fields.result != nil
	rawError, hasError := fields.error, fields.error != nil
	switch {
	case hasMethod:
		if hasResult || hasError {
			return m, errorf(CodeInvalidRequest, `Invalid Request: a request has no "result" or "error"`)
		}
		if isNull(rawMethod) || rawMethod[0] != '"' {
			return m, errorf(CodeInvalidRequest, `Invalid Request: "method" must be a string`)
		}
		if name, ok := plainString(rawMethod); ok {
			m.Method = name
		} else if err := json.Unmarshal(rawMethod, &m.Method); err != nil {
			return m, errorf(CodeInvalidRequest, `Invalid Request: "method" must be a non-empty string`)
		}
		if m.Method == "" {
			return m, errorf(CodeInvalidRequest, `Invalid Request: "method" must be a non-empty string`)
		}
		if p := fields.params; p != nil && !isNull(p) {
			if p[0] != '{' && p[0] != '[' {
				return m, errorf(CodeInvalidRequest, `Invalid Request: "params" must be an object or an array`)
			}
			m.Params = p
		}
		if hasID {
			if isNull(rawID) {
				// MCP: a request id must not be null.
				return m, errorf(CodeInvalidRequest, "Invalid Request: a request id must not be null")
			}
			m.Kind = KindRequest
		} else {
			m.Kind = KindNotification
		}
	case hasResult || hasError:
		if hasResult && hasError {
			return m, errorf(CodeInvalidRequest, `Invalid Request: a response has either "result" or "error", not both`)
		}
		if !hasID {
			return m, errorf(CodeInvalidRequest, "Invalid Request: a response needs an id")
		}
		if hasError {
			if rawError[0] != '{' {
				return m, errorf(CodeInvalidRequest, `Invalid Request: "error" must be an object`)
			}
			var e struct {
				Code    *json.Number `json:"code"`
				Message *string      `json:"message"`
			}
			if err := json.Unmarshal(rawError, &e); err != nil || e.Code == nil || e.Message == nil {
				return m, errorf(CodeInvalidRequest, `Invalid Request: "error" needs an integer "code" and a string "message"`)
			}
			if _, err := e.Code.Int64(); err != nil {
				return m, errorf(CodeInvalidRequest, `Invalid Request: "error.code" must be an integer`)
			}
			m.Error = rawError
		} else {
			m.Result = rawResult
		}
		m.Kind = KindResponse
	default:
		return m, errorf(CodeInvalidRequest, `Invalid Request: a message needs "method" (request, notification) or "result"/"error" (response)`)
	}
	return m, nil
}

// plainString is the JSON string raw holds when it is spelled in
// printable ASCII without escapes (then its bytes are the string).
func plainString(raw json.RawMessage) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	for _, c := range raw[1 : len(raw)-1] {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return "", false
		}
	}
	return string(raw[1 : len(raw)-1]), true
}

// parseBodyError answers a body that is not JSON; a fresh *Error each
// time, as callers own what they get.
func parseBodyError() *Error {
	return &Error{Code: CodeParseError, Message: "Parse error: body is not valid JSON"}
}

// validID reports whether raw is a string, a number or null.
func validID(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return false
	}
	switch c := raw[0]; {
	case c == '"', c == '-', c >= '0' && c <= '9':
		return true
	}
	return isNull(raw)
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// response is the wire form of a JSON-RPC response.
type response struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  any             `json:"result,omitempty"`
	Error   *Error          `json:"error,omitempty"`
}

// encodeResult marshals a success response to the request with id.
func encodeResult(id json.RawMessage, result any) ([]byte, error) {
	if result == nil {
		result = struct{}{}
	}
	return json.Marshal(response{JSONRPC: "2.0", ID: idOrNull(id), Result: result})
}

// encodeError marshals an error response; id may be nil (sent as null).
func encodeError(id json.RawMessage, e *Error) []byte {
	b, err := json.Marshal(response{JSONRPC: "2.0", ID: idOrNull(id), Error: e})
	if err != nil {
		// Data did not marshal; drop it.
		b, _ = json.Marshal(response{JSONRPC: "2.0", ID: idOrNull(id), Error: &Error{Code: e.Code, Message: e.Message}})
	}
	return b
}

func idOrNull(id json.RawMessage) json.RawMessage {
	if len(id) == 0 {
		return json.RawMessage("null")
	}
	return id
}
