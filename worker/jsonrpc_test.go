package worker

import (
	"encoding/json"
	"testing"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		in     string
		kind   Kind
		method string
		id     string
		code   int
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"ping"}`, KindRequest, "ping", "1", 0},
		{` {"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo"}} `, KindRequest, "tools/call", `"a"`, 0},
		{`{"jsonrpc":"2.0","id":-1.5e3,"method":"x","params":[]}`, KindRequest, "x", "-1.5e3", 0},
		{`{"jsonrpc":"2.0","method":"notifications/initialized"}`, KindNotification, "notifications/initialized", "", 0},
		{`{"jsonrpc":"2.0","method":"n","params":null}`, KindNotification, "n", "", 0},
		{`{"jsonrpc":"2.0","id":1,"result":{}}`, KindResponse, "", "1", 0},
		{`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}`, KindResponse, "", "null", 0},
		{``, 0, "", "", CodeParseError},
		{`{`, 0, "", "", CodeParseError},
		{`{"jsonrpc":"2.0","id":1,"method":"ping"}{}`, 0, "", "", CodeParseError},
		{"\xff", 0, "", "", CodeParseError},
		{`[]`, 0, "", "", CodeInvalidRequest},
		{`null`, 0, "", "", CodeInvalidRequest},
		{`{"id":1,"method":"ping"}`, 0, "", "", CodeInvalidRequest},
		{`{"jsonrpc":"2.0","id":true,"method":"ping"}`, 0, "", "", CodeInvalidRequest},
		{`{"jsonrpc":"2.0","id":1,"method":""}`, 0, "", "", CodeInvalidRequest},
		{`{"jsonrpc":"2.0","id":1,"Method":"ping"}`, 0, "", "", CodeInvalidRequest},
		{`{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}`, 0, "", "", CodeInvalidRequest},
		{`{"jsonrpc":"2.0","id":1,"method":"ping","result":1}`, 0, "", "", CodeInvalidRequest},
		{`{"jsonrpc":"2.0","result":1}`, 0, "", "", CodeInvalidRequest},
		{`{"jsonrpc":"2.0","id":1,"error":"bad"}`, 0, "", "", CodeInvalidRequest},
		{`{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"x"}}`, 0, "", "", CodeInvalidRequest},
		{`{"jsonrpc":"2.0","id":1,"error":{"message":"x"}}`, 0, "", "", CodeInvalidRequest},
	}
	for _, tc := range tests {
		m, e := Decode([]byte(tc.in))
		if tc.code != 0 {
			if e == nil || e.Code != tc.code {
				t.Errorf("Decode(%q) error %v, want code %d", tc.in, e, tc.code)
			}
			continue
		}
		if e != nil {
			t.Errorf("Decode(%q): %v", tc.in, e)
			continue
		}
		if m.Kind != tc.kind || m.Method != tc.method || string(m.ID) != tc.id {
			t.Errorf("Decode(%q) = %v %q id %s, want %v %q id %s", tc.in, m.Kind, m.Method, m.ID, tc.kind, tc.method, tc.id)
		}
	}
}

// FuzzDecode checks that Decode never panics, that every decoded message is
// consistent with its kind, and that re-encoding it decodes to the same
// message.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		initBody,
		`{"jsonrpc":"2.0","id":1,"method":"ping"}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`{"jsonrpc":"2.0","id":"x","result":{"a":[1,2]}}`,
		`{"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"m","data":null}}`,
		`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`,
		`[{"jsonrpc":"2.0","id":1,"method":"ping"}]`,
		`{"jsonrpc":"2.0","id":null,"method":"ping"}`,
		`{"jsonrpc":"1.0"}`,
		`{`,
		``,
		"\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, e := Decode(b)
		// Decode checks validity once (json.Valid inside splitMembers): a parse
		// error must still be exactly the bodies that are not JSON.
		if parseErr := e != nil && e.Code == CodeParseError; parseErr == json.Valid(b) {
			t.Fatalf("parse error %v for a body whose json.Valid is %v", parseErr, json.Valid(b))
		}
		if e != nil {
			if e.Code != CodeParseError && e.Code != CodeInvalidRequest {
				t.Fatalf("unexpected error code %d", e.Code)
			}
			if m != nil && m.Kind != 0 {
				t.Fatalf("error with kind %v", m.Kind)
			}
			if m != nil && m.ID != nil && !validID(m.ID) {
				t.Fatalf("invalid id %q returned", m.ID)
			}
			return
		}
		switch m.Kind {
		case KindRequest:
			if m.Method == "" || m.ID == nil || isNull(m.ID) || m.Result != nil || m.Error != nil {
				t.Fatalf("bad request %+v", m)
			}
		case KindNotification:
			if m.Method == "" || m.ID != nil || m.Result != nil || m.Error != nil {
				t.Fatalf("bad notification %+v", m)
			}
		case KindResponse:
			if m.Method != "" || m.ID == nil || (m.Result == nil) == (m.Error == nil) {
				t.Fatalf("bad response %+v", m)
			}
		default:
			t.Fatalf("no kind: %+v", m)
		}
		// Round trip.
		out := map[string]any{"jsonrpc": "2.0"}
		if m.ID != nil {
			out["id"] = m.ID
		}
		if m.Method != "" {
			out["method"] = m.Method
		}
		if m.Params != nil {
			out["params"] = m.Params
		}
		if m.Result != nil {
			out["result"] = m.Result
		}
		if m.Error != nil {
			out["error"] = m.Error
		}
		b2, err := json.Marshal(out)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		m2, e2 := Decode(b2)
		if e2 != nil {
			t.Fatalf("re-decode %s: %v", b2, e2)
		}
		if m2.Kind != m.Kind || m2.Method != m.Method {
			t.Fatalf("round trip changed %+v into %+v", m, m2)
		}
	})
}
