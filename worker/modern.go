package worker

import (
	"encoding/json"
	"net/http"
)

// MCP 2026-07-28 (sessionless) is chosen per request by
// MCP-Protocol-Version (or the request's _meta protocol version).

// CodeUnsupportedProtocolVersion answers a request for a protocol version
// the worker does not serve (HTTP 400); its data lists the supported
// versions, so a 2026-07-28 client (the go-sdk probes server/discover
// first) falls back to initialize.
const CodeUnsupportedProtocolVersion = -32022

// metaProtocolVersion is the _meta key of a 2026-07-28 request's version.
const metaProtocolVersion = "io.modelcontextprotocol/protocolVersion"

// requestedVersion is the protocol version a POST asks for: its
// MCP-Protocol-Version header, else params._meta's protocol version.
func requestedVersion(r *http.Request, msg *Message) string {
	if pv := r.Header.Get(HeaderProtocolVersion); pv != "" {
		return pv
	}
	var p struct {
		Meta map[string]json.RawMessage `json:"_meta"`
	}
	if len(msg.Params) == 0 || msg.Params[0] != '{' || json.Unmarshal(msg.Params, &p) != nil {
		return ""
	}
	var v string
	if raw, ok := p.Meta[metaProtocolVersion]; ok && json.Unmarshal(raw, &v) == nil {
		return v
	}
	return ""
}

// modernRequest reports whether a GET or DELETE is a 2026-07-28 one.
func (h *Handler) modernRequest(*http.Request) bool { return false }

// modernNotAllowed answers GET and DELETE of 2026-07-28 with 405.
func (h *Handler) modernNotAllowed(w http.ResponseWriter) {
	w.Header().Set("Allow", "POST")
	h.fail(w, http.StatusMethodNotAllowed, nil, errorf(CodeTransport, "Method Not Allowed: MCP 2026-07-28 uses POST only"))
}

// serveModern serves a 2026-07-28 request; false when it does not (the
// caller then answers -32022).
func (h *Handler) serveModern(http.ResponseWriter, *http.Request, *Message, string) bool {
	return false
}
