package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// modernWorker is a worker serving 2026-07-28 with the "all" tool set.
func modernWorker(t *testing.T, store SessionStore, id string, opts ...Option) *httptest.Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Common.ID = id
	cfg.Toolset = ToolsetAll
	cfg.Sessionless = true
	h := NewHandler(store, append([]Option{WithConfig(cfg)}, opts...)...)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close)
	return srv
}

const clientMeta = `"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"sampling":{},"elicitation":{},"roots":{}},"io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"}}`

// modernBody is a 2026-07-28 request; params is the JSON of params
// without _meta (may be empty).
func modernBody(method, params string) string {
	if params != "" {
		params += ","
	}
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":7,"method":%q,"params":{%s%s}}`, method, params, clientMeta)
}

func modernHeaders(method, name string) map[string]string {
	h := map[string]string{HeaderProtocolVersion: ModernProtocolVersion, HeaderMethod: method}
	if name != "" {
		h[HeaderName] = name
	}
	return h
}

func resultMap(t *testing.T, r reply) map[string]any {
	t.Helper()
	if r.rpc.Error != nil {
		t.Fatalf("error answer %d: %+v", r.status, r.rpc.Error)
	}
	var m map[string]any
	mustUnmarshal(t, r.rpc.Result, &m)
	return m
}

func TestModernTransport(t *testing.T) {
	srv := modernWorker(t, newMemStore(), "w1")
	noMeta := `{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{}}`
	for _, tc := range []struct {
		name    string
		body    string
		headers map[string]string
		status  int
		code    int // 0: a result
	}{
		{"discover", modernBody("server/discover", ""), modernHeaders("server/discover", ""), 200, 0},
		{"missing _meta", noMeta, modernHeaders("tools/list", ""), 400, CodeInvalidParams},
		{"meta without capabilities", `{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}`, modernHeaders("tools/list", ""), 400, CodeInvalidParams},
		{"meta without version", `{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/clientCapabilities":{}}}}`, modernHeaders("tools/list", ""), 400, CodeInvalidParams},
		{"header/body version mismatch", strings.Replace(modernBody("tools/list", ""), `"2026-07-28"`, `"v9"`, 1), modernHeaders("tools/list", ""), 400, CodeHeaderMismatch},
		{"unsupported version", strings.Replace(modernBody("tools/list", ""), `"2026-07-28"`, `"v9"`, 1), map[string]string{HeaderProtocolVersion: "v9", HeaderMethod: "tools/list"}, 400, CodeUnsupportedProtocolVersion},
		{"Mcp-Method missing", modernBody("tools/list", ""), map[string]string{HeaderProtocolVersion: ModernProtocolVersion}, 400, CodeHeaderMismatch},
		{"Mcp-Method differs", modernBody("tools/list", ""), modernHeaders("prompts/list", ""), 400, CodeHeaderMismatch},
		{"Mcp-Name missing", modernBody("tools/call", `"name":"echo","arguments":{"text":"x"}`), modernHeaders("tools/call", ""), 400, CodeHeaderMismatch},
		{"Mcp-Name differs", modernBody("tools/call", `"name":"echo","arguments":{"text":"x"}`), modernHeaders("tools/call", "other"), 400, CodeHeaderMismatch},
		{"tools/call", modernBody("tools/call", `"name":"echo","arguments":{"text":"x"}`), modernHeaders("tools/call", "echo"), 200, 0},
		{"unknown method", modernBody("unknown/method", ""), modernHeaders("unknown/method", ""), 404, CodeMethodNotFound},
		{"initialize removed", modernBody("initialize", ""), modernHeaders("initialize", ""), 404, CodeMethodNotFound},
		{"ping removed", modernBody("ping", ""), modernHeaders("ping", ""), 404, CodeMethodNotFound},
		{"session tool hidden", modernBody("tools/call", `"name":"counter","arguments":{}`), modernHeaders("tools/call", "counter"), 200, CodeInvalidParams},
		{"missing capability", strings.Replace(modernBody("tools/call", `"name":"test_missing_capability","arguments":{}`), `"sampling":{},`, "", 1), modernHeaders("tools/call", "test_missing_capability"), 400, CodeMissingClientCapability},
		{"unknown resource", modernBody("resources/read", `"uri":"test://nope"`), modernHeaders("resources/read", "test://nope"), 200, CodeInvalidParams},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.headers
			h[HeaderSessionID] = "ignored-session"
			r := post(t, srv.URL, tc.body, h)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			if string(r.rpc.ID) != "7" {
				t.Errorf("id %s, want 7", r.rpc.ID)
			}
			if tc.code == 0 {
				if m := resultMap(t, r); m["resultType"] != "complete" {
					t.Errorf("resultType %v: %s", m["resultType"], r.body)
				}
				return
			}
			if r.rpc.Error == nil || r.rpc.Error.Code != tc.code {
				t.Fatalf("error %+v, want code %d: %s", r.rpc.Error, tc.code, r.body)
			}
		})
	}
}

func TestModernResults(t *testing.T) {
	srv := modernWorker(t, newMemStore(), "w1")
	for _, tc := range []struct {
		method, params, name string
		cacheable            bool
		check                func(t *testing.T, m map[string]any)
	}{
		{"server/discover", "", "", true, func(t *testing.T, m map[string]any) {
			if v, _ := m["supportedVersions"].([]any); len(v) == 0 || v[0] != ModernProtocolVersion {
				t.Errorf("supportedVersions %v", m["supportedVersions"])
			}
			caps, _ := m["capabilities"].(map[string]any)
			if caps["tools"] == nil || caps["prompts"] == nil || caps["logging"] != nil || caps["tasks"] != nil {
				t.Errorf("capabilities %v", caps)
			}
			if info, _ := m["_meta"].(map[string]any)[metaServerInfo].(map[string]any); info["name"] != ServerName {
				t.Errorf("_meta serverInfo %v", m["_meta"])
			}
		}},
		{"tools/list", "", "", true, func(t *testing.T, m map[string]any) {
			for _, tl := range m["tools"].([]any) {
				if tl.(map[string]any)["name"] == "counter" {
					t.Error("the session-only counter tool is listed")
				}
			}
		}},
		{"resources/list", "", "", true, nil},
		{"resources/templates/list", "", "", true, nil},
		{"prompts/list", "", "", true, nil},
		{"resources/read", `"uri":"test://static-text"`, "test://static-text", true, nil},
		{"prompts/get", `"name":"test_simple_prompt"`, "test_simple_prompt", false, nil},
		{"completion/complete", `"ref":{"type":"ref/prompt","name":"test_prompt_with_arguments"},"argument":{"name":"arg1","value":"pa"}`, "", false, nil},
	} {
		t.Run(tc.method, func(t *testing.T) {
			r := post(t, srv.URL, modernBody(tc.method, tc.params), modernHeaders(tc.method, tc.name))
			m := resultMap(t, r)
			if m["resultType"] != "complete" {
				t.Errorf("resultType %v", m["resultType"])
			}
			_, hasTTL := m["ttlMs"]
			if hasTTL != tc.cacheable || (tc.cacheable && m["cacheScope"] != "public") {
				t.Errorf("ttlMs %v cacheScope %v, want cacheable=%v", m["ttlMs"], m["cacheScope"], tc.cacheable)
			}
			if tc.check != nil {
				tc.check(t, m)
			}
		})
	}
}

func TestModernGetDeleteNotAllowed(t *testing.T) {
	srv := modernWorker(t, newMemStore(), "w1")
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		req, _ := http.NewRequest(method, srv.URL+"/mcp", nil)
		req.Header.Set(HeaderProtocolVersion, ModernProtocolVersion)
		req.Header.Set(HeaderSessionID, "whatever")
		if r := do(t, req); r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "POST" {
			t.Errorf("%s: %d Allow=%q", method, r.status, r.header.Get("Allow"))
		}
	}
}

func TestModernDisabled(t *testing.T) {
	srv := testWorker(t, newMemStore(), "w1")
	r := post(t, srv.URL, modernBody("server/discover", ""), modernHeaders("server/discover", ""))
	if r.status != 400 || r.rpc.Error == nil || r.rpc.Error.Code != CodeUnsupportedProtocolVersion {
		t.Fatalf("discover without --sessionless: %d %s", r.status, r.body)
	}
	var data struct {
		Supported []string `json:"supported"`
	}
	b, _ := json.Marshal(r.rpc.Error.Data)
	mustUnmarshal(t, b, &data)
	for _, v := range data.Supported {
		if v == ModernProtocolVersion {
			t.Errorf("supported lists %s while disabled: %v", v, data.Supported)
		}
	}
}

func TestModernLogLevel(t *testing.T) {
	srv := modernWorker(t, newMemStore(), "w1")
	for _, tc := range []struct {
		name  string
		level string
		logs  bool
	}{
		{"no logLevel: no log messages", "", false},
		{"debug", "debug", true},
		{"error filters info", "error", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := modernBody("tools/call", `"name":"test_logging_tool","arguments":{}`)
			if tc.level != "" {
				body = strings.Replace(body, `"_meta":{`, `"_meta":{"io.modelcontextprotocol/logLevel":"`+tc.level+`",`, 1)
			}
			r := post(t, srv.URL, body, modernHeaders("tools/call", "test_logging_tool"))
			if got := strings.Contains(string(r.body), "notifications/message"); got != tc.logs {
				t.Errorf("log messages sent: %v, want %v: %s", got, tc.logs, r.body)
			}
			if m := resultMap(t, r); m["resultType"] != "complete" {
				t.Errorf("resultType %v", m["resultType"])
			}
		})
	}
}

// mrtrCall calls tool with inputResponses and requestState (omitted when
// empty) on srv.
func mrtrCall(t *testing.T, url, method, name, inputs, state string) reply {
	t.Helper()
	params := fmt.Sprintf(`"name":%q,"arguments":{}`, name)
	if inputs != "" {
		params += `,"inputResponses":` + inputs
	}
	if state != "" {
		params += `,"requestState":` + state
	}
	return post(t, url, modernBody(method, params), modernHeaders(method, name))
}

func TestMRTR(t *testing.T) {
	store := newMemStore()
	key := []byte("0123456789abcdef0123456789abcdef")
	// Two workers with the cluster's key: a retry may land on either.
	a := modernWorker(t, store, "a", WithMRTRKey(key))
	b := modernWorker(t, store, "b", WithMRTRKey(key))
	other := modernWorker(t, store, "c") // another cluster's key

	round1 := resultMap(t, mrtrCall(t, a.URL, "tools/call", "test_input_required_result_multi_round", "", ""))
	if round1["resultType"] != "input_required" {
		t.Fatalf("round 1: %v", round1)
	}
	reqs := round1["inputRequests"].(map[string]any)
	if step, _ := reqs["step1"].(map[string]any); step["method"] != "elicitation/create" || len(reqs) != 1 {
		t.Fatalf("round 1 inputRequests %v", reqs)
	}
	state1, _ := json.Marshal(round1["requestState"])
	step1 := `{"step1":{"action":"accept","content":{"name":"Ada"}}}`

	round2 := resultMap(t, mrtrCall(t, b.URL, "tools/call", "test_input_required_result_multi_round", step1, string(state1)))
	if reqs := round2["inputRequests"].(map[string]any); round2["resultType"] != "input_required" || reqs["step2"] == nil {
		t.Fatalf("round 2: %v", round2)
	}
	state2, _ := json.Marshal(round2["requestState"])
	step2 := `{"step2":{"action":"accept","content":{"color":"green"}}}`
	done := resultMap(t, mrtrCall(t, a.URL, "tools/call", "test_input_required_result_multi_round", step2, string(state2)))
	if done["resultType"] != "complete" || !strings.Contains(fmt.Sprint(done["content"]), "Ada likes green") {
		t.Fatalf("round 3: %v", done)
	}

	tampered := strings.Replace(string(state2), `"`, `"x`, 1)
	for _, tc := range []struct {
		name, url, tool, inputs, state string
	}{
		{"tampered state", a.URL, "test_input_required_result_multi_round", step2, tampered},
		{"another cluster's key", other.URL, "test_input_required_result_multi_round", step2, string(state2)},
		{"state of another tool", a.URL, "test_input_required_result_request_state", `{"confirm":{"action":"accept","content":{"ok":true}}}`, string(state2)},
		{"inputResponses not an object", a.URL, "test_input_required_result_elicitation", `12`, ""},
		{"an input response not an object", a.URL, "test_input_required_result_elicitation", `{"user_name":12345}`, ""},
		{"null inputResponses", a.URL, "test_input_required_result_elicitation", `null`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mrtrCall(t, tc.url, "tools/call", tc.tool, tc.inputs, tc.state)
			if r.rpc.Error == nil || r.rpc.Error.Code != CodeInvalidParams {
				t.Fatalf("want -32602, got %d %s", r.status, r.body)
			}
		})
	}
}

func TestMRTRInputs(t *testing.T) {
	srv := modernWorker(t, newMemStore(), "w1")
	for _, tc := range []struct {
		method, name string
		caps         string // clientCapabilities, "" keeps all
		want         map[string]string
	}{
		{"tools/call", "test_input_required_result_elicitation", "", map[string]string{"user_name": "elicitation/create"}},
		{"tools/call", "test_input_required_result_sampling", "", map[string]string{"capital_question": "sampling/createMessage"}},
		{"tools/call", "test_input_required_result_list_roots", "", map[string]string{"client_roots": "roots/list"}},
		{"tools/call", "test_input_required_result_multiple_inputs", "", map[string]string{"user_name": "elicitation/create", "greeting": "sampling/createMessage", "client_roots": "roots/list"}},
		{"tools/call", "test_input_required_result_capabilities", `{"sampling":{}}`, map[string]string{"capital_question": "sampling/createMessage"}},
		{"tools/call", "test_sampling", "", map[string]string{"sampling/createMessage#1": "sampling/createMessage"}},
		{"prompts/get", "test_input_required_result_prompt", "", map[string]string{"user_context": "elicitation/create"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			params := fmt.Sprintf(`"name":%q,"arguments":{}`, tc.name)
			if tc.name == "test_sampling" {
				params = `"name":"test_sampling","arguments":{"prompt":"hi"}`
			}
			body := modernBody(tc.method, params)
			if tc.caps != "" {
				body = strings.Replace(body, `{"sampling":{},"elicitation":{},"roots":{}}`, tc.caps, 1)
			}
			m := resultMap(t, post(t, srv.URL, body, modernHeaders(tc.method, tc.name)))
			if m["resultType"] != "input_required" || m["requestState"] == "" {
				t.Fatalf("result %v", m)
			}
			got := map[string]string{}
			for k, v := range m["inputRequests"].(map[string]any) {
				got[k], _ = v.(map[string]any)["method"].(string)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("inputRequests %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMRTRSignerVerify(t *testing.T) {
	s := mrtrSigner{key: []byte("k1")}
	now := time.Unix(1_000_000, 0)
	good := s.sign(mrtrState{Target: "tools/call x", Expires: now.Unix() + 10})
	expired := s.sign(mrtrState{Target: "tools/call x", Expires: now.Unix() - 1})
	for _, tc := range []struct {
		name, token, target string
		signer              mrtrSigner
		ok                  bool
	}{
		{"valid", good, "tools/call x", s, true},
		{"other target", good, "tools/call y", s, false},
		{"other key", good, "tools/call x", mrtrSigner{key: []byte("k2")}, false},
		{"expired", expired, "tools/call x", s, false},
		{"malformed", "nodot", "tools/call x", s, false},
		{"altered payload", "e30." + strings.SplitN(good, ".", 2)[1], "tools/call x", s, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.signer.verify(tc.token, tc.target, now)
			if (err == nil) != tc.ok {
				t.Errorf("verify: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// listenStream opens subscriptions/listen with filter on url and returns
// its data lines.
func listenStream(t *testing.T, ctx context.Context, url, filter string) <-chan map[string]any {
	t.Helper()
	body := modernBody("subscriptions/listen", `"notifications":`+filter)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/mcp", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range modernHeaders("subscriptions/listen", "") {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("listen: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan map[string]any, 16)
	go func() {
		defer resp.Body.Close()
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var m map[string]any
				if json.Unmarshal([]byte(d), &m) == nil {
					out <- m
				}
			}
		}
	}()
	return out
}

func TestListen(t *testing.T) {
	// Two workers sharing a broker, as etcd makes them: the change on one
	// reaches a stream on the other.
	broker := NewLocalBroker()
	a := modernWorker(t, newMemStore(), "a", WithBroker(broker))
	b := modernWorker(t, newMemStore(), "b", WithBroker(broker))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	tools := listenStream(t, ctx, a.URL, `{"toolsListChanged":true,"promptsListChanged":true}`)
	prompts := listenStream(t, ctx, a.URL, `{"promptsListChanged":true,"resourceSubscriptions":["test://watched-resource"]}`)
	var subID any
	for _, tc := range []struct {
		name   string
		stream <-chan map[string]any
		want   string
	}{
		{"ack first (tools)", tools, "notifications/subscriptions/acknowledged"},
		{"ack first (prompts)", prompts, "notifications/subscriptions/acknowledged"},
	} {
		m := <-tc.stream
		if m["method"] != tc.want {
			t.Fatalf("%s: first message %v", tc.name, m)
		}
		meta := m["params"].(map[string]any)["_meta"].(map[string]any)
		if meta[metaSubscriptionID] == nil || meta[metaSubscriptionID] == subID {
			t.Fatalf("%s: subscription id %v", tc.name, meta)
		}
		subID = meta[metaSubscriptionID]
		if tc.stream == tools {
			honored := m["params"].(map[string]any)["notifications"].(map[string]any)
			if honored["toolsListChanged"] != true || honored["promptsListChanged"] != nil {
				t.Errorf("honored filter %v", honored)
			}
		}
	}
	// Streams subscribe before they acknowledge, so these reach them.
	if r := post(t, b.URL, modernBody("tools/call", `"name":"test_trigger_tool_change","arguments":{}`), modernHeaders("tools/call", "test_trigger_tool_change")); r.rpc.Error != nil {
		t.Fatalf("trigger: %s", r.body)
	}
	if err := broker.Publish(ctx, ListenEvent{Kind: ListenResourceUpdated, URI: "test://watched-resource"}); err != nil {
		t.Fatal(err)
	}
	m := <-tools
	if m["method"] != "notifications/tools/list_changed" || m["params"].(map[string]any)["_meta"].(map[string]any)[metaSubscriptionID] == nil {
		t.Fatalf("tools stream: %v", m)
	}
	// The prompts stream did not ask for tool changes: its next message is
	// the resource update.
	m = <-prompts
	if m["method"] != "notifications/resources/updated" || m["params"].(map[string]any)["uri"] != "test://watched-resource" {
		t.Fatalf("prompts stream: %v", m)
	}
}

func TestParamHeaders(t *testing.T) {
	srv := modernWorker(t, newMemStore(), "w1")
	hello := "=?base64?SGVsbG8=?="
	for _, tc := range []struct {
		name   string
		region string // the argument; "-" omits it
		header string // Mcp-Param-Region; "" omits it
		ok     bool
	}{
		{"literal", "eu-west", "eu-west", true},
		{"base64", "Hello", hello, true},
		{"base64 without padding", "Hello", "=?base64?SGVsbG8?=", false},
		{"base64 bad characters", "Hello", "=?base64?SGVs!!!bG8=?=", false},
		{"no prefix: literal", "SGVsbG8=", "SGVsbG8=", true},
		{"no suffix: literal", "=?base64?SGVsbG8=", "=?base64?SGVsbG8=", true},
		{"mismatch", "eu-west", "us-east", false},
		{"header missing", "eu-west", "", false},
		{"argument missing", "-", "eu-west", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := `{}`
			if tc.region != "-" {
				args = fmt.Sprintf(`{"region":%q}`, tc.region)
			}
			h := modernHeaders("tools/call", "test_custom_header")
			if tc.header != "" {
				h[HeaderParamPrefix+"Region"] = tc.header
			}
			r := post(t, srv.URL, modernBody("tools/call", `"name":"test_custom_header","arguments":`+args), h)
			if tc.ok {
				if m := resultMap(t, r); fmt.Sprint(m["content"]) != fmt.Sprint([]any{map[string]any{"type": "text", "text": "Region: " + tc.region}}) {
					t.Errorf("result %v", m)
				}
				return
			}
			if r.status != http.StatusBadRequest || r.rpc.Error == nil || r.rpc.Error.Code != CodeHeaderMismatch {
				t.Errorf("want 400 -32020, got %d %s", r.status, r.body)
			}
		})
	}
}
