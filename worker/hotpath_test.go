package worker

import "testing"

// TestAcceptedFastPath: the Accept values recognised without parsing
// give what parsing them gives (a second, empty header value skips the
// fast path).
func TestAcceptedFastPath(t *testing.T) {
	for _, a := range []string{"application/json, text/event-stream", "text/event-stream, application/json", "application/json"} {
		fast, parsed := accepted([]string{a}), accepted([]string{a, ""})
		if fast != parsed || !fast.json {
			t.Errorf("Accept %q: fast %+v, parsed %+v", a, fast, parsed)
		}
	}
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON"} {
		if !isJSONMediaType(ct) {
			t.Errorf("Content-Type %q refused", ct)
		}
	}
	for _, ct := range []string{"", "text/plain", "application/jsonx", "application/json;;"} {
		if isJSONMediaType(ct) {
			t.Errorf("Content-Type %q accepted", ct)
		}
	}
}

// TestDecodeParseErrors: a body that is not JSON is a parse error (-32700)
// whether or not it starts like an object; valid JSON that is not an
// object is an invalid request (-32600).
func TestDecodeParseErrors(t *testing.T) {
	for body, code := range map[string]int{
		``:                                CodeParseError,
		`{`:                               CodeParseError,
		`{"jsonrpc":"2.0","method":"x"}}`: CodeParseError,
		`{"jsonrpc":"2.0",}`:              CodeParseError,
		`[1,`:                             CodeParseError,
		`[]`:                              CodeInvalidRequest,
		`"x"`:                             CodeInvalidRequest,
		` {"jsonrpc":"1.0","method":"x"}`: CodeInvalidRequest,
	} {
		_, e := Decode([]byte(body))
		if e == nil || e.Code != code {
			t.Errorf("Decode(%q) = %v, want code %d", body, e, code)
		}
	}
}
