package worker

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestTypedTool: schemas inferred from Go types, input validated (isError
// from 2025-11-25, -32602 before), structuredContent from Out, state kept
// in the session.
func TestTypedTool(t *testing.T) {
	c := newCluster(t, []string{"a", "b"}, nil)
	for _, v := range []string{"2025-11-25", "2025-06-18"} {
		t.Run(v, func(t *testing.T) {
			sid := initOn(t, c.urls["a"], v, `{}`)
			r := post(t, c.urls["b"], `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, hdr(sid, v))
			var list struct {
				Tools []struct {
					Name                      string
					InputSchema, OutputSchema map[string]any
				}
			}
			mustUnmarshal(t, r.rpc.Result, &list)
			var found bool
			for _, tl := range list.Tools {
				if tl.Name != "typed" {
					continue
				}
				found = true
				props, _ := tl.InputSchema["properties"].(map[string]any)
				if tl.InputSchema["type"] != "object" || props["name"] == nil || props["times"] == nil ||
					!strings.Contains(mustJSON(t, tl.InputSchema["required"]), `"name"`) || strings.Contains(mustJSON(t, tl.InputSchema["required"]), "times") {
					t.Fatalf("input schema %v", tl.InputSchema)
				}
				if tl.OutputSchema["type"] != "object" || !strings.Contains(mustJSON(t, tl.OutputSchema), "greeting") {
					t.Fatalf("output schema %v", tl.OutputSchema)
				}
			}
			if !found {
				t.Fatal("typed tool not listed")
			}
			tests := []struct {
				name, args string
				want       string // substring of the result; "" with code
				code       int
			}{
				{"ok", `{"name":"ann","times":2}`, `"structuredContent":{"greeting":"hi ann hi ann ","stored":`, 0},
				{"missing required", `{}`, "", CodeInvalidParams},
				{"wrong type", `{"name":5}`, "", CodeInvalidParams},
				{"unknown property", `{"name":"x","extra":1}`, "", CodeInvalidParams},
			}
			for _, tc := range tests {
				r := post(t, c.urls["a"], `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"typed","arguments":`+tc.args+`}}`, hdr(sid, v))
				switch {
				case tc.code == 0:
					if !strings.Contains(string(r.rpc.Result), tc.want) {
						t.Errorf("%s: %s", tc.name, r.body)
					}
				case v >= "2025-11-25":
					if !strings.Contains(string(r.rpc.Result), `"isError":true`) || !strings.Contains(string(r.rpc.Result), "Invalid arguments") {
						t.Errorf("%s: want an isError result, got %s", tc.name, r.body)
					}
				default:
					if r.rpc.Error == nil || r.rpc.Error.Code != tc.code {
						t.Errorf("%s: want error %d, got %s", tc.name, tc.code, r.body)
					}
				}
			}
			e, err := c.store.GetState(context.Background(), sid, "app/greeted")
			if err != nil || string(e.Value) != "ann" {
				t.Fatalf("session state %+v %v", e, err)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestResourcesPromptsCompletion covers the everything fixture's
// resources, prompts and completion, and the capabilities promised.
func TestResourcesPromptsCompletion(t *testing.T) {
	c := newCluster(t, []string{"a"}, nil)
	v := "2025-11-25"
	r := post(t, c.urls["a"], initBodyFor(v, "{}"), nil)
	caps := string(r.rpc.Result)
	for _, want := range []string{`"logging":{}`, `"tools":{"listChanged":false}`, `"resources":{"listChanged":false,"subscribe":true}`, `"prompts":{"listChanged":false}`, `"completions":{}`} {
		if !strings.Contains(caps, want) {
			t.Errorf("capabilities lack %s: %s", want, caps)
		}
	}
	sid := r.header.Get(HeaderSessionID)
	tests := []struct {
		name, body string
		want       string
		code       int
	}{
		{"resources/list", `{"method":"resources/list"}`, `"uri":"test://static-text"`, 0},
		{"templates/list", `{"method":"resources/templates/list"}`, `"uriTemplate":"test://template/{id}/data"`, 0},
		{"read text", `{"method":"resources/read","params":{"uri":"test://static-text"}}`, `"text":"This is the content of the static text resource."`, 0},
		{"read blob", `{"method":"resources/read","params":{"uri":"test://static-binary"}}`, `"blob":"iVBOR`, 0},
		{"read template", `{"method":"resources/read","params":{"uri":"test://template/42/data"}}`, `Data for ID: 42`, 0},
		{"read unknown", `{"method":"resources/read","params":{"uri":"test://nope"}}`, "", CodeResourceNotFound},
		{"read no uri", `{"method":"resources/read","params":{}}`, "", CodeInvalidParams},
		{"subscribe no uri", `{"method":"resources/subscribe","params":{}}`, "", CodeInvalidParams},
		{"prompts/list", `{"method":"prompts/list"}`, `"name":"test_prompt_with_arguments"`, 0},
		{"prompt", `{"method":"prompts/get","params":{"name":"test_prompt_with_arguments","arguments":{"arg1":"a","arg2":"b"}}}`, `arg1='a', arg2='b'`, 0},
		{"prompt image", `{"method":"prompts/get","params":{"name":"test_prompt_with_image"}}`, `"type":"image"`, 0},
		{"prompt missing arg", `{"method":"prompts/get","params":{"name":"test_prompt_with_arguments","arguments":{"arg1":"a"}}}`, "", CodeInvalidParams},
		{"prompt unknown", `{"method":"prompts/get","params":{"name":"nope"}}`, "", CodeInvalidParams},
		{"complete prompt", `{"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"test_prompt_with_arguments"},"argument":{"name":"arg1","value":"pa"}}}`, `"values":["paris","park","party"]`, 0},
		{"complete template", `{"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"test://template/{id}/data"},"argument":{"name":"id","value":"4"}}}`, `"values":["42"]`, 0},
		{"complete bad ref", `{"method":"completion/complete","params":{"ref":{"type":"ref/x"},"argument":{"name":"a","value":""}}}`, "", CodeInvalidParams},
		{"tool content types", `{"method":"tools/call","params":{"name":"test_multiple_content_types"}}`, `"type":"resource"`, 0},
		{"tool error", `{"method":"tools/call","params":{"name":"test_error_handling"}}`, `"isError":true`, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := `{"jsonrpc":"2.0","id":7,` + strings.TrimPrefix(tc.body, "{")
			r := post(t, c.urls["a"], body, hdr(sid, v))
			if tc.code != 0 {
				if r.rpc.Error == nil || r.rpc.Error.Code != tc.code {
					t.Fatalf("want error %d: %s", tc.code, r.body)
				}
				return
			}
			if r.rpc.Error != nil || !strings.Contains(string(r.rpc.Result), tc.want) {
				t.Fatalf("want %s in %s", tc.want, r.body)
			}
		})
	}
}

// TestGoSDKServerRequests: the official go-sdk client, its requests
// spread over three workers, answers sampling, elicitation and roots
// requests; each answer is POSTed to another worker than the one running
// the tool.
func TestGoSDKServerRequests(t *testing.T) {
	c := newCluster(t, []string{"a", "b", "c"}, nil)
	rr := &alternating{hosts: []string{strings.TrimPrefix(c.urls["a"], "http://"), strings.TrimPrefix(c.urls["b"], "http://"), strings.TrimPrefix(c.urls["c"], "http://")}}
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	//lint:file-ignore SA1019 sampling and roots are deprecated in 2026-07-28 but served for 2025-11-25 sessions
	client := mcp.NewClient(&mcp.Implementation{Name: "sdk", Version: "1"}, &mcp.ClientOptions{
		CreateMessageHandler: func(_ context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			return &mcp.CreateMessageResult{Role: "assistant", Model: "m", Content: &mcp.TextContent{Text: "sampled"}}, nil
		},
		ElicitationHandler: func(_ context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"username": "u", "email": "e@x"}}, nil
		},
	})
	client.AddRoots(&mcp.Root{URI: "file:///work", Name: "work"})
	// Server-to-client requests across workers are a session-era feature.
	s, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: c.urls["a"] + "/mcp", HTTPClient: &http.Client{Transport: rr}, MaxRetries: -1},
		&mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer s.Close()
	if v := s.InitializeResult().ProtocolVersion; v != "2025-11-25" {
		t.Fatalf("negotiated %s", v)
	}
	tests := []struct {
		tool string
		args map[string]any
		want string
	}{
		{"test_sampling", map[string]any{"prompt": "p"}, "LLM response: sampled"},
		{"test_elicitation", map[string]any{"message": "m"}, `User response: action=accept, content={"email":"e@x","username":"u"}`},
		{"roots", nil, "file:///work"},
		{"test_simple_text", nil, "This is a simple text response for testing."},
	}
	for _, tc := range tests {
		for range 3 { // each starts on another worker
			res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: tc.tool, Arguments: tc.args})
			if err != nil || res.IsError || len(res.Content) == 0 {
				if res != nil && len(res.Content) > 0 {
					t.Fatalf("%s: %q %v", tc.tool, res.Content[0].(*mcp.TextContent).Text, err)
				}
				t.Fatalf("%s: %+v %v", tc.tool, res, err)
			}
			if got := res.Content[0].(*mcp.TextContent).Text; got != tc.want {
				t.Fatalf("%s: %q, want %q", tc.tool, got, tc.want)
			}
		}
	}
}

// TestModernVersionRefused: a 2026-07-28 request gets 400 with -32022 and
// the supported versions, so a 2026-07-28 client falls back to initialize
// (TestGoSDKClient connects with the go-sdk's default, which probes
// server/discover at 2026-07-28 first).
func TestModernVersionRefused(t *testing.T) {
	srv := testWorker(t, newMemStore(), "w1")
	discover := `{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}`
	for _, headers := range []map[string]string{
		{HeaderProtocolVersion: "2026-07-28", "Mcp-Method": "server/discover"},
		{}, // only _meta says it
	} {
		r := post(t, srv.URL, discover, headers)
		if r.status != 400 || r.rpc.Error == nil || r.rpc.Error.Code != CodeUnsupportedProtocolVersion {
			t.Fatalf("%v: %d %s", headers, r.status, r.body)
		}
		var data struct {
			Supported []string `json:"supported"`
			Requested string   `json:"requested"`
		}
		mustUnmarshal(t, mustJSONRaw(t, r.rpc.Error.Data), &data)
		if data.Requested != "2026-07-28" || strings.Join(data.Supported, ",") != strings.Join(supportedVersions, ",") {
			t.Fatalf("data %+v", data)
		}
	}
}

func mustJSONRaw(t *testing.T, v any) json.RawMessage { return json.RawMessage(mustJSON(t, v)) }
