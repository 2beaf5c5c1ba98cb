package loadgen

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Failure is a request that did not get a successful answer, classified.
type Failure struct {
	// Kind is the bucket the report counts it in: http_<status>,
	// jsonrpc_<code>, timeout, conn_refused, conn_reset, conn_closed,
	// conn_error, decode, tool_error, bad_result, stream_ended, cancelled.
	Kind string
	// Status is the HTTP status when the server answered with one.
	Status int
	Msg    string
	// Endpoint is the host:port the failed request went to, when known.
	Endpoint string
}

func (f *Failure) Error() string { return f.Kind + ": " + f.Msg }

func failure(kind, format string, a ...any) *Failure {
	return &Failure{Kind: kind, Msg: fmt.Sprintf(format, a...)}
}

// SessionLost reports whether err says the session is gone (HTTP 404).
func SessionLost(err error) bool {
	var f *Failure
	return errors.As(err, &f) && f.Status == http.StatusNotFound
}

// KindOf returns the report bucket of err.
func KindOf(err error) string {
	var f *Failure
	if errors.As(err, &f) {
		return f.Kind
	}
	return "other"
}

// classify turns a transport error into a Failure. opCtx is the request's
// context: its deadline passing is a timeout whatever error the read saw.
func classify(opCtx context.Context, err error) *Failure {
	var f *Failure
	if errors.As(err, &f) {
		return f
	}
	var ne net.Error
	switch {
	case errors.Is(opCtx.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return failure("timeout", "%v", err)
	case errors.Is(opCtx.Err(), context.Canceled), errors.Is(err, context.Canceled):
		return failure("cancelled", "%v", err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return failure("conn_refused", "%v", err)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return failure("conn_reset", "%v", err)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return failure("conn_closed", "%v", err)
	case errors.As(err, &ne) && ne.Timeout():
		return failure("timeout", "%v", err)
	}
	return failure("conn_error", "%v", err)
}

// maxBodyBytes bounds a JSON response body.
const maxBodyBytes = 16 << 20

// Client speaks MCP over Streamable HTTP to one URL, or with Fallbacks to
// the first of several that answers.
type Client struct {
	URL string
	// Fallbacks are further endpoints of the same service. Each session
	// keeps to one endpoint and moves to the next one, round robin, when
	// its own request there timed out or could not connect, or when its
	// endpoint is marked down: at once on a connection refused, reset or
	// closed, after EndpointTimeouts timeouts in a row with no answer
	// between them. A marked endpoint is avoided for EndpointCooldown (see
	// pick).
	Fallbacks []string
	// EndpointCooldown and EndpointTimeouts default (when 0) to
	// DefaultEndpointCooldown and DefaultEndpointTimeouts.
	EndpointCooldown time.Duration
	EndpointTimeouts int
	// EndpointProbeTimeout (default DefaultEndpointProbeTimeout) bounds the
	// probe after a session's own timeout: an endpoint that answers it is
	// live and slow, and the session stays; one that does not is marked
	// down at once and the session moves.
	EndpointProbeTimeout time.Duration
	healthOnce           sync.Once
	h                    *endpointHealth
	HTTP                 *http.Client
	Headers              http.Header
	Protocol             string
	// ClientName goes into clientInfo.
	ClientName, ClientVersion string
	// OnHTTP, when set, is called once per HTTP request sent.
	OnHTTP func()
	// StampSentAt sends X-Erlmcp-Sent-At (when the request was sent) with
	// every request; only a worker logging at debug level reads it, so it
	// is off unless asked for (loadtest --stamp-sent-at).
	StampSentAt bool
}

// NewHTTPClient returns an HTTP/1.1 keep-alive client whose pool holds at
// most conns connections to the target, and which never follows redirects
// (only the URL given is requested).
func NewHTTPClient(conns int, dialTimeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		// A non-nil empty map keeps the transport on HTTP/1.1 for https too.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Session is one MCP session (or, sessionless, one logical client).
type Session struct {
	c *Client
	// ID is the Mcp-Session-Id; "" when the server set none or sessionless.
	ID string
	// Version is the negotiated protocol version.
	Version string
	nextID  int64
	// ep is the endpoint this session sends to (see Client.pick); moved
	// says the session's own failure just chose it, so its next request
	// tries it even when it is marked down (every endpoint was).
	ep    int
	moved bool
}

// NewSessionless returns a logical client for the sessionless protocol,
// which needs no initialize.
func (c *Client) NewSessionless() *Session {
	return &Session{c: c, Version: c.Protocol}
}

// Initialize opens a session: initialize, then notifications/initialized.
func (c *Client) Initialize(ctx context.Context) (*Session, error) {
	s := &Session{c: c, Version: c.Protocol}
	params := map[string]any{
		"protocolVersion": c.Protocol,
		"capabilities":    map[string]any{},
		"clientInfo":      c.clientInfo(),
	}
	res, hdr, err := s.call(ctx, "initialize", params, callOpts{})
	if err != nil {
		return nil, err
	}
	var ir struct {
		ProtocolVersion string `json:"protocolVersion"`
	}
	if err := json.Unmarshal(res.Result, &ir); err != nil || ir.ProtocolVersion == "" {
		return nil, failure("decode", "initialize result has no protocolVersion: %.200s", res.Result)
	}
	s.Version = ir.ProtocolVersion
	s.ID = hdr.Get("Mcp-Session-Id")
	if err := s.Notify(ctx, "notifications/initialized", nil); err != nil {
		return nil, err
	}
	return s, nil
}

func (c *Client) clientInfo() map[string]any {
	name, ver := c.ClientName, c.ClientVersion
	if name == "" {
		name = "erlmcp-loadtest"
	}
	if ver == "" {
		ver = "dev"
	}
	return map[string]any{"name": name, "version": ver}
}

// CallResult is a JSON-RPC result and what it took to get it.
type CallResult struct {
	Result json.RawMessage
	// Progress counts notifications/progress received on the way.
	Progress int
	// Resumed counts GET + Last-Event-ID reconnections it took.
	Resumed int
	// Conflicts counts resumptions refused with 409 and retried.
	Conflicts int
	// Dropped is true when the caller asked to drop the stream after its
	// first event id and the answer had not yet come (so a resume happened).
	Dropped bool
}

type callOpts struct {
	progressToken string
	// dropAfterID closes the POST's stream as soon as an event with an id
	// arrived, to resume with GET + Last-Event-ID.
	dropAfterID bool
}

// maxResumes bounds reconnections of one request's stream without progress.
const maxResumes = 5

// Call sends one request and waits for its answer; a JSON-RPC error answer
// is a Failure of kind jsonrpc_<code>.
func (s *Session) Call(ctx context.Context, method string, params map[string]any) (CallResult, error) {
	res, _, err := s.call(ctx, method, params, callOpts{})
	return res, err
}

// CallStream calls with a progress token, expecting progress on a stream;
// with drop, it drops the stream after its first event id and resumes.
func (s *Session) CallStream(ctx context.Context, method string, params map[string]any, token string, drop bool) (CallResult, error) {
	res, _, err := s.call(ctx, method, params, callOpts{progressToken: token, dropAfterID: drop})
	return res, err
}

func (s *Session) headers(h http.Header, method, name string) {
	for k, vs := range s.c.Headers {
		h[k] = append([]string(nil), vs...)
	}
	if s.ID != "" {
		h.Set("Mcp-Session-Id", s.ID)
	}
	if method != "initialize" {
		h.Set("Mcp-Protocol-Version", s.Version)
	}
	if Sessionless(s.c.Protocol) && method != "" {
		h.Set("Mcp-Method", method)
		if name != "" {
			h.Set("Mcp-Name", name)
		}
	}
}

func (s *Session) body(method string, id int64, params map[string]any, o callOpts) ([]byte, string) {
	var name string
	if params == nil && (Sessionless(s.c.Protocol) || o.progressToken != "") {
		params = map[string]any{}
	}
	if params != nil {
		if n, ok := params["name"].(string); ok && method == "tools/call" {
			name = n
		}
		meta := map[string]any{}
		if o.progressToken != "" {
			meta["progressToken"] = o.progressToken
		}
		if Sessionless(s.c.Protocol) {
			meta["io.modelcontextprotocol/protocolVersion"] = s.c.Protocol
			meta["io.modelcontextprotocol/clientInfo"] = s.c.clientInfo()
			meta["io.modelcontextprotocol/clientCapabilities"] = map[string]any{}
		}
		if len(meta) > 0 {
			p := make(map[string]any, len(params)+1)
			for k, v := range params {
				p[k] = v
			}
			p["_meta"] = meta
			params = p
		}
	}
	msg := map[string]any{"jsonrpc": "2.0", "method": method}
	if id != 0 {
		msg["id"] = id
	}
	if params != nil {
		msg["params"] = params
	}
	b, _ := json.Marshal(msg)
	return b, name
}

func (s *Session) newRequest(ctx context.Context, httpMethod string, body []byte, rpcMethod, name string) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	if !s.moved {
		s.ep = s.c.pick(s.ep, "", time.Now())
	}
	s.moved = false
	req, err := http.NewRequestWithContext(ctx, httpMethod, s.c.url(s.ep), rd)
	if err != nil {
		return nil, failure("conn_error", "%v", err)
	}
	s.headers(req.Header, rpcMethod, name)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if httpMethod == http.MethodGet {
		req.Header.Set("Accept", "text/event-stream")
	} else {
		req.Header.Set("Accept", "application/json, text/event-stream")
	}
	return req, nil
}

// headerSentAt is worker.HeaderSentAt (this package imports no role).
const headerSentAt = "X-Erlmcp-Sent-At"

func (s *Session) send(req *http.Request) (*http.Response, error) {
	if s.c.OnHTTP != nil {
		s.c.OnHTTP()
	}
	ep, sent := s.ep, time.Now()
	if s.c.StampSentAt {
		// The worker's debug log tells from it how long the request took
		// to reach it (the front, a paused process), to trace a stall.
		req.Header.Set(headerSentAt, strconv.FormatInt(sent.UnixMicro(), 10))
	}
	resp, err := s.c.HTTP.Do(req)
	if err != nil {
		return nil, s.transportFailed(ep, req, classify(req.Context(), err))
	}
	s.c.answered(ep, sent)
	return resp, nil
}

// transportFailed records f, a failure of req to endpoint ep before or
// while its answer was read, against the endpoint, and moves the session
// on if need be (see Client.pick). A body cut off or stalled after the
// headers counts as much as no answer: a front stopped in the middle of an
// answer leaves it hanging. After a timeout the endpoint is probed (see
// Client.alive): the session stays on a live one and leaves one that does
// not answer, which is marked down for every session.
func (s *Session) transportFailed(ep int, req *http.Request, f *Failure) *Failure {
	if req != nil && req.URL != nil {
		f.Endpoint = req.URL.Host
	}
	kind := f.Kind
	if kind == "timeout" && s.c.endpoints() > 1 && !s.c.isDown(ep, time.Now()) {
		// A stopped front and a live one slow behind a stopped store look
		// alike from the request; the probe tells them apart.
		if s.c.alive(ep) {
			kind = ""
		} else {
			s.c.markDown(ep, time.Now())
		}
	}
	now := time.Now()
	s.c.failed(ep, kind, now)
	s.ep = s.c.pick(ep, kind, now)
	s.moved = s.ep != ep
	return f
}

// statusFailure reads a non-2xx answer into a Failure, keeping a JSON-RPC
// error message from the body when there is one.
func statusFailure(resp *http.Response) *Failure {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	msg := strings.TrimSpace(string(b))
	var m struct {
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &m) == nil && m.Error != nil {
		msg = m.Error.Message
	}
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	f := &Failure{Kind: "http_" + strconv.Itoa(resp.StatusCode), Status: resp.StatusCode, Msg: fmt.Sprintf("%s: %s", resp.Status, msg)}
	if resp.Request != nil && resp.Request.URL != nil {
		f.Endpoint = resp.Request.URL.Host
	}
	return f
}

// Notify sends a notification, which the server acknowledges with 202.
func (s *Session) Notify(ctx context.Context, method string, params map[string]any) error {
	body, name := s.body(method, 0, params, callOpts{})
	req, err := s.newRequest(ctx, http.MethodPost, body, method, name)
	if err != nil {
		return err
	}
	resp, err := s.send(req)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return statusFailure(resp)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyBytes))
	resp.Body.Close()
	return nil
}

// Delete ends the session with DELETE.
func (s *Session) Delete(ctx context.Context) error {
	req, err := s.newRequest(ctx, http.MethodDelete, nil, "", "")
	if err != nil {
		return err
	}
	resp, err := s.send(req)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return statusFailure(resp)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyBytes))
	resp.Body.Close()
	return nil
}

// rpcMessage is any JSON-RPC message.
type rpcMessage struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (s *Session) call(ctx context.Context, method string, params map[string]any, o callOpts) (CallResult, http.Header, error) {
	s.nextID++
	id := s.nextID
	idText := strconv.FormatInt(id, 10)
	body, name := s.body(method, id, params, o)
	req, err := s.newRequest(ctx, http.MethodPost, body, method, name)
	if err != nil {
		return CallResult{}, nil, err
	}
	resp, err := s.send(req)
	if err != nil {
		return CallResult{}, nil, err
	}
	hdr := resp.Header
	if resp.StatusCode/100 != 2 {
		return CallResult{}, hdr, statusFailure(resp)
	}
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	var res CallResult
	switch ct {
	case "application/json":
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes))
		resp.Body.Close()
		if err != nil {
			return res, hdr, s.transportFailed(s.ep, resp.Request, classify(ctx, err))
		}
		var m rpcMessage
		if err := json.Unmarshal(b, &m); err != nil {
			return res, hdr, failure("decode", "response body is not a JSON-RPC message: %v", err)
		}
		if string(bytes.TrimSpace(m.ID)) != idText {
			return res, hdr, failure("decode", "response id %s, want %s", m.ID, idText)
		}
		return res, hdr, answer(&res, m)
	case "text/event-stream":
	default:
		resp.Body.Close()
		return res, hdr, failure("decode", "response Content-Type %q, want application/json or text/event-stream", resp.Header.Get("Content-Type"))
	}

	// A stream: read until our answer; resume with GET + Last-Event-ID when
	// the stream ends (or is dropped on purpose) before it.
	lastID := ""
	var retry time.Duration
	stalled := 0
	for {
		found, dropped, m, sr, err := readStream(resp.Body, idText, &res, o.dropAfterID && res.Resumed == 0)
		if sr.LastEventID != "" {
			if sr.LastEventID != lastID {
				stalled = 0
			}
			lastID = sr.LastEventID
		}
		if sr.retry > 0 {
			retry = sr.retry
		}
		if found {
			drainAndClose(resp.Body, sr.r)
			return res, hdr, answer(&res, m)
		}
		resp.Body.Close()
		if err != nil && !errors.Is(err, io.EOF) {
			return res, hdr, s.transportFailed(s.ep, resp.Request, classifyStream(ctx, err))
		}
		if dropped {
			res.Dropped = true
		}
		if lastID == "" || s.ID == "" || Sessionless(s.c.Protocol) {
			return res, hdr, failure("stream_ended", "the response stream of %s ended without its answer and gave no event id to resume from", method)
		}
		stalled++
		if stalled > maxResumes {
			return res, hdr, failure("stream_ended", "the response stream of %s ended without its answer %d times after event %q", method, stalled, lastID)
		}
		if retry > 0 && !dropped {
			t := time.NewTimer(min(retry, time.Second))
			select {
			case <-ctx.Done():
				t.Stop()
				return res, hdr, classify(ctx, ctx.Err())
			case <-t.C:
			}
		}
		res.Resumed++
		greq, err := s.newRequest(ctx, http.MethodGet, nil, "", "")
		if err != nil {
			return res, hdr, err
		}
		greq.Header.Set("Last-Event-ID", lastID)
		resp, err = s.resume(ctx, greq, &res)
		if err != nil {
			return res, hdr, err
		}
		if ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); ct != "text/event-stream" {
			resp.Body.Close()
			return res, hdr, failure("decode", "resumed stream has Content-Type %q, want text/event-stream", resp.Header.Get("Content-Type"))
		}
	}
}

// maxConflicts bounds the retries of a resumption the server refuses with
// 409 Conflict because it still holds the dropped stream.
const maxConflicts = 6

// resume sends the GET that resumes a stream. A server may refuse it with
// 409 while it has not yet noticed that the client dropped the stream; the
// GET is then retried after 5, 10, 20 … ms (within the request's timeout),
// each retry counted in res.Conflicts.
func (s *Session) resume(ctx context.Context, req *http.Request, res *CallResult) (*http.Response, error) {
	for wait := 5 * time.Millisecond; ; wait *= 2 {
		resp, err := s.send(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusConflict && res.Conflicts < maxConflicts {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
			resp.Body.Close()
			res.Conflicts++
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, classify(ctx, ctx.Err())
			case <-t.C:
			}
			continue
		}
		if resp.StatusCode/100 != 2 {
			return nil, statusFailure(resp)
		}
		return resp, nil
	}
}

// classifyStream classifies an error met while reading a stream.
func classifyStream(ctx context.Context, err error) *Failure {
	if errors.Is(err, ErrEventTooLarge) {
		return failure("decode", "%v", err)
	}
	return classify(ctx, err)
}

type streamRead struct {
	LastEventID string
	retry       time.Duration
	r           io.Reader
}

// readStream reads events from body until the message answering idText.
// With drop, it returns (dropped=true) at the first event with an id that
// does not carry the answer.
func readStream(body io.Reader, idText string, res *CallResult, drop bool) (found, dropped bool, m rpcMessage, sr streamRead, err error) {
	r := NewSSEReader(body)
	sr.r = r.r
	for {
		ev, err := r.Next()
		sr.LastEventID = r.LastEventID
		if err != nil {
			return false, false, m, sr, err
		}
		if ev.HasRetry {
			sr.retry = ev.Retry
		}
		if ev.Data != "" {
			var msg rpcMessage
			if err := json.Unmarshal([]byte(ev.Data), &msg); err != nil {
				return false, false, m, sr, failure("decode", "stream event is not a JSON-RPC message: %v (%s)", err, ev)
			}
			switch {
			case msg.Method == "notifications/progress":
				res.Progress++
			case msg.Method == "" && string(bytes.TrimSpace(msg.ID)) == idText:
				return true, false, msg, sr, nil
			}
		}
		if drop && ev.HasID {
			return false, true, m, sr, nil
		}
	}
}

// drainAndClose reads what is left of a finished stream so the connection
// can be reused, but gives up after a short while (a server may keep a
// stream open after the answer), closing the connection instead.
func drainAndClose(body io.ReadCloser, buffered io.Reader) {
	t := time.AfterFunc(100*time.Millisecond, func() { body.Close() })
	_, _ = io.Copy(io.Discard, io.LimitReader(buffered, 1<<20))
	t.Stop()
	body.Close()
}

// answer turns the message answering a call into its result or a Failure.
func answer(res *CallResult, m rpcMessage) error {
	if m.Error != nil {
		return &Failure{Kind: "jsonrpc_" + strconv.Itoa(m.Error.Code), Msg: m.Error.Message}
	}
	if m.Result == nil {
		return failure("decode", "answer has neither result nor error")
	}
	res.Result = m.Result
	return nil
}

// ToolResult is the part of a CallToolResult the load generator reads.
type ToolResult struct {
	Content []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
	StructuredContent json.RawMessage `json:"structuredContent"`
	IsError           bool            `json:"isError"`
}

// DecodeToolResult reads a tools/call result; isError is a tool_error.
func DecodeToolResult(raw json.RawMessage) (ToolResult, error) {
	var tr ToolResult
	if err := json.Unmarshal(raw, &tr); err != nil {
		return tr, failure("decode", "tools/call result: %v", err)
	}
	if tr.IsError {
		msg := ""
		if len(tr.Content) > 0 {
			msg = tr.Content[0].Text
		}
		return tr, failure("tool_error", "tool answered isError: %.200s", msg)
	}
	return tr, nil
}

// CounterValue reads the counter tool's value: structuredContent.value, or
// else the number in its first text content.
func CounterValue(raw json.RawMessage) (int64, error) {
	tr, err := DecodeToolResult(raw)
	if err != nil {
		return 0, err
	}
	if len(tr.StructuredContent) > 0 && string(tr.StructuredContent) != "null" {
		var sc struct {
			Value *json.Number `json:"value"`
		}
		if err := json.Unmarshal(tr.StructuredContent, &sc); err == nil && sc.Value != nil {
			if v, err := sc.Value.Int64(); err == nil {
				return v, nil
			}
		}
		return 0, failure("bad_result", "counter structuredContent %.100s has no integer \"value\"", tr.StructuredContent)
	}
	for _, c := range tr.Content {
		if c.Type == "text" {
			if v, err := strconv.ParseInt(strings.TrimSpace(c.Text), 10, 64); err == nil {
				return v, nil
			}
		}
	}
	return 0, failure("bad_result", "counter result has neither structuredContent.value nor a number as text: %.200s", raw)
}
