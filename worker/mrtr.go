package worker

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// MRTR (multi round-trip requests, MCP 2026-07-28): a sessionless request
// that needs the client (sampling, elicitation, roots) is answered with
// resultType "input_required" and its inputRequests; the client retries
// the request with inputResponses and the requestState it was given.
// requestState carries the answers of earlier rounds, HMAC-signed with the
// cluster's key, so a retry may land on any worker and a client cannot
// forge or alter it.

// ErrInputRequired is returned by a server→client request of a sessionless
// request whose answer the client has not sent yet: the handler should
// return it (after asking for every input it needs this round); the
// request is then answered with resultType "input_required".
var ErrInputRequired = errors.New("the client's input is required (MRTR)")

// mrtrStateTTL bounds how long a requestState is accepted.
const mrtrStateTTL = time.Hour

// inputRequest is one entry of inputRequests.
type inputRequest struct {
	Method string `json:"method"`
	Params any    `json:"params"`
}

// mrtr is the MRTR state of one sessionless request.
type mrtr struct {
	// responses are the client's answers: of earlier rounds (from
	// requestState) and of this one (inputResponses).
	responses map[string]json.RawMessage
	// pending are the inputs asked for this round and not answered.
	pending map[string]inputRequest
	// verified: the request carried a valid requestState.
	verified bool
	// auto numbers the keys of ServerRequest calls without a key.
	auto int
}

// mrtrState is the signed content of requestState.
type mrtrState struct {
	// Target binds the state to one request: method and tool/prompt name.
	Target    string                     `json:"t"`
	Responses map[string]json.RawMessage `json:"r,omitempty"`
	Expires   int64                      `json:"e"`
}

// mrtrSigner signs and verifies requestState.
type mrtrSigner struct{ key []byte }

func newMRTRKey() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}

func (s mrtrSigner) mac(payload []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write(payload)
	return m.Sum(nil)
}

// sign returns <payload>.<mac>, both base64url.
func (s mrtrSigner) sign(st mrtrState) string {
	payload, _ := json.Marshal(st)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(s.mac(payload))
}

// verify checks a requestState's signature, expiry and target.
func (s mrtrSigner) verify(token, target string, now time.Time) (mrtrState, error) {
	var st mrtrState
	enc := base64.RawURLEncoding
	p, m, ok := strings.Cut(token, ".")
	if !ok {
		return st, errors.New("requestState is malformed")
	}
	payload, err1 := enc.DecodeString(p)
	mac, err2 := enc.DecodeString(m)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, s.mac(payload)) {
		return st, errors.New("requestState failed its integrity check")
	}
	if err := json.Unmarshal(payload, &st); err != nil {
		return st, errors.New("requestState does not decode")
	}
	if st.Target != target {
		return st, fmt.Errorf("requestState belongs to another request (%s)", st.Target)
	}
	if now.Unix() > st.Expires {
		return st, errors.New("requestState has expired")
	}
	return st, nil
}

// mrtrTarget names what a requestState is for.
func mrtrTarget(method string, params json.RawMessage) string {
	var p struct {
		Name string `json:"name"`
	}
	_ = json.Unmarshal(params, &p)
	return method + " " + p.Name
}

// startMRTR reads inputResponses and requestState from a request's params.
func (h *Handler) startMRTR(method string, params json.RawMessage) (*mrtr, *Error) {
	var p struct {
		InputResponses json.RawMessage `json:"inputResponses"`
		RequestState   *string         `json:"requestState"`
	}
	if len(params) > 0 && params[0] == '{' {
		if err := json.Unmarshal(params, &p); err != nil {
			return nil, errorf(CodeInvalidParams, "Invalid params: %v", err)
		}
	}
	var responses map[string]json.RawMessage
	if p.InputResponses != nil {
		if p.InputResponses[0] != '{' || json.Unmarshal(p.InputResponses, &responses) != nil {
			return nil, errorf(CodeInvalidParams, "Invalid params: inputResponses must be an object of responses")
		}
		for k, v := range responses {
			if len(v) == 0 || v[0] != '{' {
				return nil, errorf(CodeInvalidParams, "Invalid params: inputResponses[%q] must be a result object", k)
			}
		}
	}
	m := &mrtr{responses: map[string]json.RawMessage{}, pending: map[string]inputRequest{}}
	if p.RequestState != nil {
		st, err := h.mrtrSigner().verify(*p.RequestState, mrtrTarget(method, params), time.Now())
		if err != nil {
			return nil, errorf(CodeInvalidParams, "Invalid params: %v", err)
		}
		for k, v := range st.Responses {
			m.responses[k] = v
		}
		m.verified = true
	}
	for k, v := range responses {
		m.responses[k] = v
	}
	return m, nil
}

// inputRequired is the result of a round that needs the client's input.
func (h *Handler) inputRequired(m *mrtr, method string, params json.RawMessage) map[string]any {
	st := mrtrState{Target: mrtrTarget(method, params), Expires: time.Now().Add(mrtrStateTTL).Unix()}
	if len(m.responses) > 0 {
		st.Responses = m.responses
	}
	return map[string]any{
		"resultType":    "input_required",
		"inputRequests": m.pending,
		"requestState":  h.mrtrSigner().sign(st),
	}
}

func (h *Handler) mrtrSigner() mrtrSigner { return mrtrSigner{key: h.mrtrKey} }

// Input asks the client for input: method (sampling/createMessage,
// elicitation/create, roots/list) with params, under key. On a session it
// is ServerRequest. On a sessionless (2026-07-28) request it returns the
// client's inputResponses[key] when the client sent it, else records the
// input request and returns ErrInputRequired: ask for every input the
// round needs, then return the error.
func (r *Request) Input(ctx context.Context, key, method string, params any) (json.RawMessage, error) {
	if capability, ok := inputCapability[method]; ok && !r.clientHas(capability) {
		return nil, missingCapability(capability, "the client did not declare the "+capability+" capability")
	}
	if r.mrtr == nil {
		return r.ServerRequest(ctx, method, params)
	}
	if raw, ok := r.mrtr.responses[key]; ok {
		return raw, nil
	}
	r.mrtr.pending[key] = inputRequest{Method: method, Params: params}
	return nil, ErrInputRequired
}

// inputCapability is the client capability each input method needs.
var inputCapability = map[string]string{
	"sampling/createMessage": "sampling",
	"elicitation/create":     "elicitation",
	"roots/list":             "roots",
}

// RequestStateVerified reports whether a sessionless request carried a
// requestState that passed its integrity check.
func (r *Request) RequestStateVerified() bool { return r.mrtr != nil && r.mrtr.verified }

// Sessionless reports whether the request is a 2026-07-28 one, without a
// session (its state keys are unavailable).
func (r *Request) Sessionless() bool { return r.mrtr != nil }

// ClientHas reports whether the client declared capability path (e.g.
// "sampling", "elicitation.url" as "elicitation", "url").
func (r *Request) ClientHas(path ...string) bool { return r.clientHas(path...) }
