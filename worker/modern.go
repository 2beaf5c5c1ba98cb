package worker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// MCP 2026-07-28 (sessionless) is chosen per request by
// MCP-Protocol-Version (or the request's _meta protocol version). Every
// request carries what a session used to hold (client capabilities, client
// info, log level) in params._meta; there is no initialize, no session id,
// no GET stream: server→client requests become MRTR inputRequests
// (mrtr.go) and notifications outside a request go to subscriptions/listen
// streams (listen.go). Config.Sessionless turns it on.

// ModernProtocolVersion is the sessionless protocol version.
const ModernProtocolVersion = "2026-07-28"

// CodeUnsupportedProtocolVersion answers a request for a protocol version
// the worker does not serve (HTTP 400); its data lists the supported
// versions, so a 2026-07-28 client (the go-sdk probes server/discover
// first) falls back to initialize.
const CodeUnsupportedProtocolVersion = -32022

// CodeHeaderMismatch answers a 2026-07-28 request whose routing headers
// (MCP-Protocol-Version, Mcp-Method, Mcp-Name) disagree with its body.
const CodeHeaderMismatch = -32020

// Routing headers of 2026-07-28.
const (
	HeaderMethod = "Mcp-Method"
	HeaderName   = "Mcp-Name"
)

// _meta keys of 2026-07-28 requests and results.
const (
	metaProtocolVersion    = "io.modelcontextprotocol/protocolVersion"
	metaClientCapabilities = "io.modelcontextprotocol/clientCapabilities"
	metaClientInfo         = "io.modelcontextprotocol/clientInfo"
	metaLogLevel           = "io.modelcontextprotocol/logLevel"
	metaServerInfo         = "io.modelcontextprotocol/serverInfo"
	metaSubscriptionID     = "io.modelcontextprotocol/subscriptionId"
)

// cacheTTL is the ttlMs of cacheable 2026-07-28 results: the tool, prompt
// and resource lists are fixed for a worker's life, but workers of one
// cluster may run different versions during a rollout.
const cacheTTL = 60 * time.Second

// allVersions are the versions served, newest first: sessionless ones when
// enabled, then the session ones.
func (h *Handler) allVersions() []string {
	if h.cfg.Sessionless {
		return append([]string{ModernProtocolVersion}, supportedVersions...)
	}
	return supportedVersions
}

// requestedVersion is the protocol version a POST asks for: its
// MCP-Protocol-Version header, else params._meta's protocol version.
func requestedVersion(r *http.Request, msg *Message) string {
	if pv := r.Header.Get(HeaderProtocolVersion); pv != "" {
		return pv
	}
	return metaVersion(msg)
}

// metaVersion is params._meta's protocol version, if any.
func metaVersion(msg *Message) string {
	raw, ok := requestMetaObject(msg.Params)[metaProtocolVersion]
	if !ok {
		return ""
	}
	// Declared here, not above: a variable json.Unmarshal writes to is
	// on the heap, and most requests have no _meta.
	var v string
	if json.Unmarshal(raw, &v) == nil {
		return v
	}
	return ""
}

// requestMetaObject is params._meta, nil when absent or not an object.
func requestMetaObject(params json.RawMessage) map[string]json.RawMessage {
	if len(params) == 0 || params[0] != '{' || !mayHaveMeta(params) {
		return nil
	}
	var p struct {
		Meta map[string]json.RawMessage `json:"_meta"`
	}
	if json.Unmarshal(params, &p) != nil {
		return nil
	}
	return p.Meta
}

// modernRequest reports whether a GET or DELETE is a 2026-07-28 one.
func (h *Handler) modernRequest(r *http.Request) bool {
	return h.cfg.Sessionless && r.Header.Get(HeaderProtocolVersion) == ModernProtocolVersion
}

// modernNotAllowed answers GET and DELETE of 2026-07-28 with 405.
func (h *Handler) modernNotAllowed(w http.ResponseWriter) {
	w.Header().Set("Allow", "POST")
	h.fail(w, http.StatusMethodNotAllowed, nil, errorf(CodeTransport, "Method Not Allowed: MCP 2026-07-28 uses POST only"))
}

// headerMismatch reports a MCP-Protocol-Version header that disagrees with
// params._meta's protocol version when either is 2026-07-28.
func (h *Handler) headerMismatch(r *http.Request, msg *Message) *Error {
	hv, mv := r.Header.Get(HeaderProtocolVersion), metaVersion(msg)
	if !h.cfg.Sessionless || hv == "" || mv == "" || hv == mv || (hv != ModernProtocolVersion && mv != ModernProtocolVersion) {
		return nil
	}
	return &Error{Code: CodeHeaderMismatch, Message: fmt.Sprintf("Header mismatch: %s is %q but params._meta says %q", HeaderProtocolVersion, hv, mv)}
}

// modernMethod is one 2026-07-28 request method.
type modernMethod struct {
	fn methodFunc
	// cacheable results carry ttlMs and cacheScope.
	cacheable bool
	// streams: answered as SSE when the client accepts it.
	streams bool
	// input: MRTR applies (the method may need the client's input).
	input bool
}

func (h *Handler) modernMethods() map[string]modernMethod {
	srv := h.server
	return map[string]modernMethod{
		"server/discover":          {fn: h.discover, cacheable: true},
		"tools/list":               {fn: srv.listTools, cacheable: true},
		"tools/call":               {fn: srv.callTool, streams: true, input: true},
		"resources/list":           {fn: srv.listResources, cacheable: true},
		"resources/templates/list": {fn: srv.listTemplates, cacheable: true},
		"resources/read":           {fn: srv.readResource, cacheable: true, input: true},
		"prompts/list":             {fn: srv.listPrompts, cacheable: true},
		"prompts/get":              {fn: srv.getPrompt, input: true},
		"completion/complete":      {fn: srv.completion},
		// Tasks v2 (tasksv2.go); tasks/result and tasks/list are gone.
		"tasks/get":    {fn: methodTaskGetV2},
		"tasks/update": {fn: methodTaskUpdateV2},
		"tasks/cancel": {fn: methodTaskCancelV2},
	}
}

// modernCapabilities are the server capabilities of 2026-07-28: no
// logging/setLevel (the log level is per request), no v1 tasks.
func (h *Handler) modernCapabilities() map[string]any {
	s := h.server
	caps := map[string]any{"tools": map[string]any{"listChanged": true}}
	if len(s.resources)+len(s.templates) > 0 {
		caps["resources"] = map[string]any{"subscribe": true, "listChanged": false}
	}
	if len(s.prompts) > 0 {
		caps["prompts"] = map[string]any{"listChanged": false}
	}
	if s.complete != nil {
		caps["completions"] = map[string]any{}
	}
	caps["extensions"] = map[string]any{TasksExtension: map[string]any{}}
	return caps
}

func (h *Handler) serverInfo() map[string]string {
	return map[string]string{"name": ServerName, "version": h.cfg.Version}
}

// discover answers server/discover.
func (h *Handler) discover(context.Context, *call) (any, *Error) {
	res := map[string]any{
		"supportedVersions": h.allVersions(),
		"capabilities":      h.modernCapabilities(),
		"serverInfo":        h.serverInfo(),
	}
	if h.server.Instructions != "" {
		res["instructions"] = h.server.Instructions
	}
	return res, nil
}

// modernMeta is what a 2026-07-28 request's _meta carries.
type modernMeta struct {
	capabilities json.RawMessage
	clientInfo   json.RawMessage
	logLevel     string
}

// parseModernMeta validates params._meta: it must be an object with a
// protocol version and client capabilities (client info is optional).
func parseModernMeta(params json.RawMessage) (modernMeta, *Error) {
	var m modernMeta
	meta := requestMetaObject(params)
	if meta == nil {
		return m, errorf(CodeInvalidParams, "Invalid params: MCP 2026-07-28 requests need params._meta with %s and %s", metaProtocolVersion, metaClientCapabilities)
	}
	var pv string
	if raw, ok := meta[metaProtocolVersion]; !ok || json.Unmarshal(raw, &pv) != nil || pv == "" {
		return m, errorf(CodeInvalidParams, "Invalid params: params._meta needs a string %s", metaProtocolVersion)
	}
	caps, ok := meta[metaClientCapabilities]
	if !ok || len(caps) == 0 || caps[0] != '{' {
		return m, errorf(CodeInvalidParams, "Invalid params: params._meta needs an object %s", metaClientCapabilities)
	}
	m.capabilities = caps
	m.clientInfo = compactOrNil(meta[metaClientInfo])
	if raw, ok := meta[metaLogLevel]; ok {
		if json.Unmarshal(raw, &m.logLevel) != nil || logRank(m.logLevel) < 0 {
			return m, errorf(CodeInvalidParams, "Invalid params: %s must be one of %s", metaLogLevel, strings.Join(logLevels, ", "))
		}
	}
	return m, nil
}

// routingName is the value Mcp-Name must carry for method, if any.
func routingName(method string, params json.RawMessage) (string, bool) {
	var p struct {
		Name   *string `json:"name"`
		URI    *string `json:"uri"`
		TaskID *string `json:"taskId"`
	}
	_ = json.Unmarshal(params, &p)
	switch method {
	case "tools/call", "prompts/get":
		if p.Name != nil {
			return *p.Name, true
		}
	case "resources/read":
		if p.URI != nil {
			return *p.URI, true
		}
	case "tasks/get", "tasks/update", "tasks/cancel":
		if p.TaskID != nil {
			return *p.TaskID, true
		}
	}
	return "", false
}

// checkRoutingHeaders checks Mcp-Method (required, equal to the body's
// method) and Mcp-Name (required for tools/call, prompts/get and
// resources/read, equal to the body's name or uri).
func checkRoutingHeaders(r *http.Request, msg *Message) *Error {
	if got := r.Header.Get(HeaderMethod); got != msg.Method {
		if got == "" {
			return &Error{Code: CodeHeaderMismatch, Message: fmt.Sprintf("Header mismatch: the %s header is required (%q)", HeaderMethod, msg.Method)}
		}
		return &Error{Code: CodeHeaderMismatch, Message: fmt.Sprintf("Header mismatch: %s is %q but the body's method is %q", HeaderMethod, got, msg.Method)}
	}
	if want, ok := routingName(msg.Method, msg.Params); ok {
		got, present := r.Header[http.CanonicalHeaderKey(HeaderName)]
		if !present {
			return &Error{Code: CodeHeaderMismatch, Message: fmt.Sprintf("Header mismatch: the %s header is required for %s", HeaderName, msg.Method)}
		}
		if len(got) != 1 || got[0] != want {
			return &Error{Code: CodeHeaderMismatch, Message: fmt.Sprintf("Header mismatch: %s is %q but the body names %q", HeaderName, strings.Join(got, ","), want)}
		}
	}
	return nil
}

// HeaderParamPrefix starts the headers that mirror tool arguments whose
// schema names them with x-mcp-header (SEP-2243).
const HeaderParamPrefix = "Mcp-Param-"

// checkParamHeaders checks, for tools/call, that every argument whose
// schema property carries "x-mcp-header": NAME is mirrored by an equal
// Mcp-Param-NAME header (a value wrapped as =?base64?...?= is decoded
// first, strictly), and that no such header comes without its argument.
func (h *Handler) checkParamHeaders(r *http.Request, msg *Message) *Error {
	if msg.Method != "tools/call" {
		return nil
	}
	var p struct {
		Name      string                     `json:"name"`
		Arguments map[string]json.RawMessage `json:"arguments"`
	}
	if json.Unmarshal(msg.Params, &p) != nil {
		return nil // the method reports bad params
	}
	t, ok := h.server.toolByName[p.Name]
	if !ok || t.def.InputSchema == nil {
		return nil
	}
	for prop, schema := range t.def.InputSchema.Properties {
		name, _ := schema.Extra["x-mcp-header"].(string)
		if name == "" {
			continue
		}
		header := HeaderParamPrefix + name
		values := r.Header.Values(header)
		raw, inBody := p.Arguments[prop]
		switch {
		case !inBody && len(values) == 0:
			continue
		case !inBody:
			return &Error{Code: CodeHeaderMismatch, Message: fmt.Sprintf("Header mismatch: %s is sent but argument %q is not", header, prop)}
		case len(values) == 0:
			return &Error{Code: CodeHeaderMismatch, Message: fmt.Sprintf("Header mismatch: argument %q needs the %s header", prop, header)}
		case len(values) > 1:
			return &Error{Code: CodeHeaderMismatch, Message: fmt.Sprintf("Header mismatch: %s is sent more than once", header)}
		}
		got, err := decodeParamHeader(values[0])
		if err != nil {
			return &Error{Code: CodeHeaderMismatch, Message: fmt.Sprintf("Header mismatch: %s: %v", header, err)}
		}
		if want := headerText(raw); got != want {
			return &Error{Code: CodeHeaderMismatch, Message: fmt.Sprintf("Header mismatch: %s is %q but argument %q is %q", header, got, prop, want)}
		}
	}
	return nil
}

// decodeParamHeader decodes an Mcp-Param value: =?base64?B64?= is strict
// standard Base64 (padded); anything else is literal.
func decodeParamHeader(v string) (string, error) {
	inner, ok := strings.CutPrefix(v, "=?base64?")
	if !ok {
		return v, nil
	}
	inner, ok = strings.CutSuffix(inner, "?=")
	if !ok {
		return v, nil
	}
	b, err := base64.StdEncoding.Strict().DecodeString(inner)
	if err != nil {
		return "", fmt.Errorf("invalid Base64: %v", err)
	}
	return string(b), nil
}

// headerText is an argument as its header carries it: a string's text,
// any other value's JSON.
func headerText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// modernStatus is the HTTP status of a 2026-07-28 error answer.
func modernStatus(e *Error) int {
	switch e.Code {
	case CodeMethodNotFound:
		return http.StatusNotFound
	case CodeHeaderMismatch, CodeMissingClientCapability, CodeUnsupportedProtocolVersion:
		return http.StatusBadRequest
	}
	return http.StatusOK
}

// serveModern serves a 2026-07-28 request; false when it does not (the
// caller then answers -32022).
func (h *Handler) serveModern(w http.ResponseWriter, r *http.Request, msg *Message, pv string) bool {
	if !h.cfg.Sessionless || pv != ModernProtocolVersion {
		return false
	}
	if msg.Kind != KindRequest {
		// Notifications (cancellation of a request is closing its
		// connection) and stray responses: nothing to do.
		w.WriteHeader(http.StatusAccepted)
		return true
	}
	if e := checkRoutingHeaders(r, msg); e != nil {
		h.fail(w, http.StatusBadRequest, msg.ID, e)
		return true
	}
	if e := h.checkParamHeaders(r, msg); e != nil {
		h.fail(w, http.StatusBadRequest, msg.ID, e)
		return true
	}
	meta, e := parseModernMeta(msg.Params)
	if e != nil {
		h.fail(w, http.StatusBadRequest, msg.ID, e)
		return true
	}
	if msg.Method == "subscriptions/listen" {
		h.listen(w, r, msg)
		return true
	}
	m, ok := h.modernMethods()[msg.Method]
	if !ok {
		h.fail(w, http.StatusNotFound, msg.ID, errorf(CodeMethodNotFound, "Method not found: %s (not served in MCP 2026-07-28)", msg.Method))
		return true
	}
	h.serveModernRequest(w, r, msg, m, meta)
	return true
}

// serveModernRequest runs a sessionless request and answers it as JSON,
// or as SSE (progress and log notifications first) when the method
// streams and the client accepts it.
func (h *Handler) serveModernRequest(w http.ResponseWriter, r *http.Request, msg *Message, m modernMethod, meta modernMeta) {
	acc := accepted(r.Header.Values("Accept"))
	token := requestMeta(msg.Params)
	useSSE := (acc.sse && (m.streams || token != nil)) || !acc.json
	budget := h.cfg.RequestTimeout
	if m.input {
		budget = h.cfg.CallTimeout
	}
	// Closing the connection cancels a sessionless request.
	ctx, cancel := context.WithTimeout(r.Context(), budget)
	defer cancel()

	var mr *mrtr
	if m.input {
		var e *Error
		if mr, e = h.startMRTR(msg.Method, msg.Params); e != nil {
			h.answerModern(w, msg.ID, nil, e)
			return
		}
	} else {
		mr = &mrtr{responses: map[string]json.RawMessage{}, pending: map[string]inputRequest{}}
	}
	sess := &session{rec: sessionRecord{
		ProtocolVersion:    ModernProtocolVersion,
		ClientCapabilities: meta.capabilities,
		ClientInfo:         meta.clientInfo,
		LogLevel:           meta.logLevel,
	}}
	// The answer turns into an SSE stream only when a notification
	// (progress, log) comes first; otherwise it is JSON, with the HTTP
	// status its error calls for.
	ob := &outbox{h: h, direct: true}
	defer ob.close()
	if useSSE {
		ob.lazy = w
	}
	c := &call{h: h, session: sess, msg: msg}
	c.req = &Request{h: h, sess: sess, id: msg.ID, method: msg.Method, progressToken: token, out: ob, mrtr: mr, started: msg.started()}
	result, rerr := m.fn(ctx, c)
	switch {
	case len(mr.pending) > 0:
		result, rerr = h.inputRequired(mr, msg.Method, msg.Params), nil
	case c.storeErr != nil:
		result, rerr = nil, errorf(CodeInternalError, "Internal error: %v", c.storeErr)
	case rerr == nil:
		result = completeResult(result, m.cacheable, h.serverInfo())
	case rerr.Code == CodeResourceNotFound:
		// SEP-2164: an unknown resource is invalid params from 2026-07-28 on.
		rerr = &Error{Code: CodeInvalidParams, Message: rerr.Message, Data: rerr.Data}
	}
	if !ob.finish(h.encodeAnswer(msg.ID, result, rerr)) {
		h.answerModern(w, msg.ID, result, rerr)
	}
}

// answerModern answers as JSON with the status modernStatus gives errors.
func (h *Handler) answerModern(w http.ResponseWriter, id json.RawMessage, result any, rerr *Error) {
	if rerr != nil {
		h.fail(w, modernStatus(rerr), id, rerr)
		return
	}
	h.answer(w, id, result, nil)
}

// completeResult adds resultType "complete", the server's identity in
// _meta and, on cacheable results, ttlMs and cacheScope.
func completeResult(result any, cacheable bool, info map[string]string) any {
	b, err := json.Marshal(result)
	if err != nil {
		return result
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil || m == nil {
		return result
	}
	if _, ok := m["resultType"]; !ok {
		m["resultType"] = "complete"
	}
	meta, _ := m["_meta"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
	}
	meta[metaServerInfo] = info
	m["_meta"] = meta
	if cacheable {
		m["ttlMs"] = cacheTTL.Milliseconds()
		m["cacheScope"] = "public"
	}
	return m
}

// errUnsupported reports a version the worker does not serve.
func (h *Handler) errUnsupported(pv string) *Error {
	return &Error{Code: CodeUnsupportedProtocolVersion,
		Message: fmt.Sprintf("Unsupported protocol version %q (supported: %s)", pv, strings.Join(h.allVersions(), ", ")),
		Data:    map[string]any{"supported": h.allVersions(), "requested": pv}}
}
