package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/jsonschema-go/jsonschema"
)

type flatIn struct {
	Text  string   `json:"text"`
	N     int      `json:"n,omitempty"`
	F     float64  `json:"f,omitempty"`
	B     *bool    `json:"b,omitempty"`
	Maybe *float64 `json:"maybe"`
}

// TestFlatSchemaAgreesWithValidate: wherever the flat check passes
// arguments, jsonschema-go's Validate passes them too; inferred scalar
// schemas are flat (so the fast path is really taken for valid input),
// and a schema with any other keyword is not.
func TestFlatSchemaAgreesWithValidate(t *testing.T) {
	inferred, err := jsonschema.For[flatIn](nil)
	if err != nil {
		t.Fatal(err)
	}
	echo, err := jsonschema.For[echoIn](nil)
	if err != nil {
		t.Fatal(err)
	}
	open := &jsonschema.Schema{Type: "object", Properties: map[string]*jsonschema.Schema{
		"a": {Type: "integer"}, "b": {Types: []string{"string", "null"}}}, Required: []string{"a"}}
	flat := map[string]*jsonschema.Schema{"inferred": inferred, "echo": echo, "open": open}
	notFlat := map[string]*jsonschema.Schema{
		"minLength": {Type: "object", Properties: map[string]*jsonschema.Schema{"a": {Type: "string", MinLength: jsonschema.Ptr(2)}}},
		"enum":      {Type: "object", Properties: map[string]*jsonschema.Schema{"a": {Type: "string", Enum: []any{"x"}}}},
		"default":   {Type: "object", Properties: map[string]*jsonschema.Schema{"a": {Type: "string", Default: json.RawMessage(`"x"`)}}},
		"nested":    {Type: "object", Properties: map[string]*jsonschema.Schema{"a": {Type: "object"}}},
		"array":     {Type: "object", Properties: map[string]*jsonschema.Schema{"a": {Type: "array"}}},
		"pattern":   {Type: "object", PatternProperties: map[string]*jsonschema.Schema{"^x": {Type: "string"}}},
		"extra ok":  {Type: "object", AdditionalProperties: &jsonschema.Schema{Type: "string"}},
		"no type":   {Properties: map[string]*jsonschema.Schema{"a": {Type: "string"}}},
		"untyped":   {Type: "object", Properties: map[string]*jsonschema.Schema{"a": {Description: "anything"}}},
	}
	inputs := []string{
		`{}`, `{"text":"x"}`, `{"text":5}`, `{"text":null}`, `{"text":"x","n":1}`, `{"text":"x","n":1.5}`,
		`{"text":"x","n":1.0}`, `{"text":"x","n":-3}`, `{"text":"x","f":1}`, `{"text":"x","f":0.25}`,
		`{"text":"x","b":true}`, `{"text":"x","b":null}`, `{"text":"x","b":"true"}`, `{"text":"x","extra":1}`,
		`{"text":"x","maybe":null}`, `{"text":"x","maybe":2.5}`, `{"text":"x","maybe":"2"}`, `{"text":["x"]}`,
		`{"text":{"a":1}}`, `{"a":1}`, `{"a":1.5}`, `{"a":1,"b":null}`, `{"a":1,"b":"s"}`, `{"a":1,"b":2}`,
		`{"a":1,"z":[1]}`, `{"Text":"x"}`, `{"text":"x","maybe":1e300}`,
	}
	for name, s := range flat {
		f := compileFlatSchema(s)
		if f == nil {
			t.Fatalf("%s: schema %s not flat", name, mustJSON(t, s))
		}
		rs, err := s.Resolve(nil)
		if err != nil {
			t.Fatal(err)
		}
		passed := 0
		for _, in := range inputs {
			var args map[string]any
			if err := json.Unmarshal([]byte(in), &args); err != nil {
				t.Fatal(err)
			}
			verr := rs.Validate(args)
			if f.valid(args) {
				passed++
				if verr != nil {
					t.Errorf("%s: %s passes the flat check but Validate says %v", name, in, verr)
				}
			} else if verr == nil {
				// Allowed (Validate decides), but for these schemas the
				// flat check should know every valid input.
				t.Errorf("%s: %s valid but refused by the flat check", name, in)
			}
		}
		if passed == 0 {
			t.Errorf("%s: no input passed the flat check", name)
		}
	}
	for name, s := range notFlat {
		if f := compileFlatSchema(s); f != nil {
			t.Errorf("%s: schema %s compiled as flat: %+v", name, mustJSON(t, s), f)
		}
	}
}

// TestRunningKeyPlainIDs: ids taken as they are spelled name the same
// request as the decode-and-encode spelling.
func TestRunningKeyPlainIDs(t *testing.T) {
	plain := 0
	for _, id := range []string{
		`0`, `7`, `-7`, `-0`, `123456789012345`, `1234567890123456`, `12345678901234567890`, `1.0`, `1e2`, `01`,
		`""`, `"a"`, `"req-1"`, `"a b"`, `"\u0061"`, `"<x>"`, `"a&b"`, `"é"`, `"tab	"`, `"\""`, `true`, `null`, `{}`, `-`, `"`,
	} {
		got, gotOK := runningKey("s", json.RawMessage(id))
		want, wantOK := canonicalIDKey("s", json.RawMessage(id))
		if got != want || gotOK != wantOK {
			t.Errorf("runningKey(%s) = %q %v, the round trip gives %q %v", id, got, gotOK, want, wantOK)
		}
		if plainID(json.RawMessage(id)) {
			plain++
		}
	}
	if plain < 6 {
		t.Errorf("only %d ids took the fast path", plain)
	}
}

// TestMayHaveMeta: whenever encoding/json finds params._meta,
// mayHaveMeta says it may be there; plain params without it are ruled out.
func TestMayHaveMeta(t *testing.T) {
	for _, params := range []string{
		`{"_meta":{"progressToken":1}}`, `{"_META":{}}`, `{"_Meta":null}`, `{"\u005fmeta":{}}`, `{"a":"_","_meta":{}}`,
		`{"name":"echo","arguments":{"text":"x"}}`, `{}`, `{"x_":1}`, `{"_met":1}`, `{"a_meta_b":1}`, `{"_":"meta"}`,
	} {
		var p struct {
			Meta json.RawMessage `json:"_meta"`
		}
		if err := json.Unmarshal([]byte(params), &p); err != nil {
			t.Fatal(err)
		}
		may := mayHaveMeta([]byte(params))
		if p.Meta != nil && !may {
			t.Errorf("%s: has _meta, mayHaveMeta says no", params)
		}
		if !strings.Contains(strings.ToLower(params), "meta") && may {
			t.Errorf("%s: mayHaveMeta says yes", params)
		}
	}
}

type argsIn struct {
	N int    `json:"n"`
	S string `json:"s,omitempty"`
}

type defaultsIn struct {
	S string `json:"s,omitempty"`
}

// TestToolArgumentsDecode: arguments decode into the tool's input type
// straight from the body, and still when only their re-encoding decodes
// (an integer spelled 1.0 or 1e2), and schema defaults are still applied.
func TestToolArgumentsDecode(t *testing.T) {
	srv := NewServer()
	AddTool(srv, &Tool{Name: "n"}, func(_ context.Context, _ *Request, in argsIn) (*ToolResult, any, error) {
		b, _ := json.Marshal(in)
		return &ToolResult{Content: []Content{TextContent(string(b))}}, nil, nil
	})
	withDefault, err := jsonschema.For[defaultsIn](nil)
	if err != nil {
		t.Fatal(err)
	}
	withDefault.Properties["s"].Default = json.RawMessage(`"dflt"`)
	AddTool(srv, &Tool{Name: "d", InputSchema: withDefault}, func(_ context.Context, _ *Request, in defaultsIn) (*ToolResult, any, error) {
		return &ToolResult{Content: []Content{TextContent("s=" + in.S)}}, nil, nil
	})
	if srv.toolByName["n"].flat == nil || srv.toolByName["n"].defaults || !srv.toolByName["d"].defaults {
		t.Fatalf("tool n flat %v defaults %v; tool d defaults %v", srv.toolByName["n"].flat, srv.toolByName["n"].defaults, srv.toolByName["d"].defaults)
	}
	h := NewHandler(newMemStore(), WithServer(srv))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, newPost(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`, ""))
	sid := rec.Header().Get(HeaderSessionID)
	if rec.Code != http.StatusOK || sid == "" {
		t.Fatalf("initialize: %d %s", rec.Code, rec.Body)
	}
	for args, want := range map[string]string{
		`{"tool":"n","arguments":{"n":3,"s":"x"}}`:  `{\"n\":3,\"s\":\"x\"}`,
		`{"tool":"n","arguments":{"n":1.0}}`:        `{\"n\":1}`,
		`{"tool":"n","arguments":{"n":1e2}}`:        `{\"n\":100}`,
		`{"tool":"n","arguments":{"n":1.5}}`:        `Invalid arguments for tool n`,
		`{"tool":"n","arguments":{"s":"x"}}`:        `Invalid arguments for tool n`,
		`{"tool":"d","arguments":{}}`:               `s=dflt`,
		`{"tool":"d","arguments":{"s":"mine"}}`:     `s=mine`,
		`{"tool":"n","arguments":{"n":2,"z":true}}`: `Invalid arguments for tool n`,
	} {
		var a struct {
			Tool      string          `json:"tool"`
			Arguments json.RawMessage `json:"arguments"`
		}
		if err := json.Unmarshal([]byte(args), &a); err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, newPost(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"`+a.Tool+`","arguments":`+string(a.Arguments)+`}}`, sid))
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), want) {
			t.Errorf("%s: got %d %s, want %s", args, rec.Code, rec.Body, want)
		}
	}
}

// TestSplitMembersAgreesWithMap: the member scan finds what decoding
// into a map finds, and refuses what that refuses.
func TestSplitMembersAgreesWithMap(t *testing.T) {
	for _, body := range splitMembersSeeds {
		checkSplitMembers(t, []byte(body))
	}
}

// FuzzSplitMembers: go test -run '^$' -fuzz FuzzSplitMembers ./worker/
func FuzzSplitMembers(f *testing.F) {
	for _, body := range splitMembersSeeds {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkSplitMembers(t, body) })
}

var splitMembersSeeds = []string{
	`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}`,
	` { "jsonrpc" : "2.0" , "id" : "a\"}b" , "method" : "x" , "params" : [ 1 , { "}" : "]" } ] } `,
	`{}`, ` {} `, `{"id":1,"id":2}`, `{"ID":1,"Method":"x"}`, `{"\u0069d":3,"method":"m"}`, `{"i\\d":1}`,
	`{"result":{"a":[1,2,{"b":null}]},"id":-1.5e3,"jsonrpc":"2.0"}`, `{"error":{"code":1,"message":"\\"}}`,
	`{"a":true,"b":false,"c":null,"method":"\u00e9"}`, `{"params":"x\\\"y"}`, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`,
	`{"a":1}}`, `[]`, `"x"`, `{"a":"\ud800"}`, "{\"a\":\"\xff\"}", `{"id":1}x`, "{\"id\":1}\n",
}

func checkSplitMembers(t *testing.T, body []byte) {
	t.Helper()
	got, ok := splitMembers(body)
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	want, wantOK := splitMembersSlow(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		if ok {
			t.Errorf("%q: not an object, split anyway", body)
		}
		return
	}
	if ok != wantOK {
		t.Fatalf("%q: ok %v, encoding/json says %v", body, ok, wantOK)
	}
	for name, pair := range map[string][2]json.RawMessage{
		"id": {got.id, want.id}, "jsonrpc": {got.jsonrpc, want.jsonrpc}, "method": {got.method, want.method},
		"params": {got.params, want.params}, "result": {got.result, want.result}, "error": {got.error, want.error},
	} {
		if !bytes.Equal(pair[0], pair[1]) {
			t.Errorf("%q: member %s is %q, encoding/json says %q", body, name, pair[0], pair[1])
		}
	}
}

// TestTextContentJSON: a text block encodes as it did through a map.
func TestTextContentJSON(t *testing.T) {
	for _, text := range []string{"", "hello", `a"b\c<d>&e`, "é\u2028\x01"} {
		got, err := json.Marshal(TextContent(text))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(map[string]any{"type": "text", "text": text})
		if !bytes.Equal(got, want) {
			t.Errorf("%q: %s, want %s", text, got, want)
		}
	}
}

// TestRequestMeta: the progress token is read from params._meta, and a
// null, absent or malformed one is none.
func TestRequestMeta(t *testing.T) {
	for params, want := range map[string]string{
		`{"name":"x","_meta":{"progressToken":"tok","other":1}}`: `"tok"`,
		`{"_meta":{"progressToken":7}}`:                          `7`,
		`{"_meta":{"progressToken":null}}`:                       ``,
		`{"_meta":{}}`:                                           ``,
		`{"_meta":"not an object"}`:                              ``,
		`{"name":"x"}`:                                           ``,
		`[1]`:                                                    ``,
		``:                                                       ``,
	} {
		if got := string(requestMeta(json.RawMessage(params))); got != want {
			t.Errorf("requestMeta(%s) = %q, want %q", params, got, want)
		}
	}
}
