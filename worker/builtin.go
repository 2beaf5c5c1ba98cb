package worker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
)

// Built-in tool sets (Config.Toolset, --toolset).
const (
	ToolsetDemo       = "demo"       // echo and a session counter
	ToolsetEverything = "everything" // the MCP conformance fixture
	ToolsetAll        = "all"        // both
)

// BuiltinServer returns the built-in tool set named name.
func BuiltinServer(name string) (*Server, error) {
	s := NewServer()
	switch name {
	case ToolsetDemo:
		AddDemo(s)
	case ToolsetEverything:
		AddEverything(s)
	case ToolsetAll, "":
		AddDemo(s)
		AddEverything(s)
	default:
		return nil, fmt.Errorf("unknown tool set %q (want %s, %s or %s)", name, ToolsetDemo, ToolsetEverything, ToolsetAll)
	}
	return s, nil
}

type echoIn struct {
	Text string `json:"text" jsonschema:"the text to echo back"`
}

type counterIn struct {
	By int64 `json:"by,omitempty" jsonschema:"how much to add (at least 1; default 1)"`
}

// CounterOut is the counter tool's structured output.
type CounterOut struct {
	Value int64 `json:"value"`
}

// counterState is the counter's state key: the value and the last
// requests applied to it (idempotency keys), so a retried request gets
// the value it got the first time instead of adding again.
type counterState struct {
	Value   int64           `json:"value"`
	Applied []counterUpdate `json:"applied,omitempty"`
}

type counterUpdate struct {
	Key   string `json:"key"`
	Value int64  `json:"value"`
	// At is when it was applied (Unix ms, the applying worker's clock).
	At int64 `json:"at,omitempty"`
}

const (
	counterKey         = "counter"
	counterURI         = "demo://counter"
	counterRemembered  = 64
	counterMaxAttempts = 32
)

// AddDemo adds the demo set: echo, counter and the counter's resource.
func AddDemo(s *Server) {
	AddTool(s, &Tool{Name: "echo", Title: "Echo", Description: "Returns the text it is given."},
		func(_ context.Context, _ *Request, in echoIn) (*ToolResult, any, error) {
			return &ToolResult{Content: []Content{TextContent(in.Text)}}, nil, nil
		})

	in, err := jsonschema.For[counterIn](nil)
	if err != nil {
		panic(err)
	}
	by := in.Properties["by"]
	by.Default = json.RawMessage("1")
	one := 1.0
	by.Minimum = &one
	AddTool(s, &Tool{Name: "counter", Title: "Session counter", InputSchema: in, SessionOnly: true,
		Description: "Adds `by` (default 1) to a counter kept in the session and returns the new value. " +
			"A retried request (same JSON-RPC id) returns the value it got the first time; " +
			"a request overtaken while it ran by one with a higher numeric id is refused, not applied."},
		func(ctx context.Context, req *Request, in counterIn) (*ToolResult, CounterOut, error) {
			v, err := addCounter(ctx, req, in.By)
			if err != nil {
				return nil, CounterOut{}, err
			}
			_ = req.NotifyResourceUpdated(ctx, counterURI)
			return &ToolResult{Content: []Content{TextContent(fmt.Sprint(v))}}, CounterOut{Value: v}, nil
		})

	s.AddResource(&Resource{URI: counterURI, Name: "counter", Title: "Session counter", MIMEType: "application/json", SessionOnly: true,
		Description: "The session counter's value; subscribe to hear when the counter tool changes it."},
		func(ctx context.Context, req *Request, uri string) ([]ResourceContents, error) {
			st, _, err := readCounter(ctx, req)
			if err != nil {
				return nil, err
			}
			b, _ := json.Marshal(CounterOut{Value: st.Value})
			return []ResourceContents{{URI: uri, MIMEType: "application/json", Text: string(b)}}, nil
		})
}

func readCounter(ctx context.Context, req *Request) (counterState, uint64, error) {
	var st counterState
	raw, version, err := req.GetState(ctx, counterKey)
	if errors.Is(err, ErrNotFound) && !errors.Is(err, ErrSessionNotFound) {
		return st, 0, nil
	}
	if err != nil {
		return st, 0, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, 0, fmt.Errorf("the counter's state does not decode: %w", err)
	}
	return st, version, nil
}

// addCounter adds by to the counter with compare-and-set, once per request
// id: the id is the idempotency key kept with the value.
func addCounter(ctx context.Context, req *Request, by int64) (int64, error) {
	if by < 1 {
		by = 1
	}
	key := string(req.ID())
	for range counterMaxAttempts {
		st, version, err := readCounter(ctx, req)
		if err != nil {
			return 0, err
		}
		for _, u := range st.Applied {
			if u.Key == key {
				return u.Value, nil
			}
		}
		// A call that stalled (its worker frozen, its store unreachable)
		// while its client gave up and sent the next one must not apply
		// after that next one did: its client would see the counter skip.
		// Clients number their requests upwards, so a higher id applied
		// since this call began means this call is stale; refuse it,
		// unapplied. (A higher id applied before it began is a client
		// that started numbering again, e.g. a new client object resuming
		// the session: not refused.)
		if later, ok := laterApplied(key, req.started, st.Applied); ok {
			return 0, fmt.Errorf("the counter already applied request %s, sent after this one (%s) while it ran; this one is not applied", later, key)
		}
		st.Value += by
		st.Applied = append(st.Applied, counterUpdate{Key: key, Value: st.Value, At: time.Now().UnixMilli()})
		if len(st.Applied) > counterRemembered {
			st.Applied = st.Applied[len(st.Applied)-counterRemembered:]
		}
		b, _ := json.Marshal(st)
		if _, err := req.PutState(ctx, counterKey, b, &version); err != nil {
			if errors.Is(err, ErrVersionConflict) {
				continue
			}
			return 0, err
		}
		return st.Value, nil
	}
	return 0, fmt.Errorf("%w: the counter kept changing under %d attempts", ErrStoreUnavailable, counterMaxAttempts)
}

// laterApplied returns an applied key whose numeric request id is above
// key's and that was applied at or after started. Non-numeric ids are not
// ordered, and are never refused.
func laterApplied(key string, started time.Time, applied []counterUpdate) (string, bool) {
	id, err := strconv.ParseInt(key, 10, 64)
	if err != nil {
		return "", false
	}
	for _, u := range applied {
		if v, err := strconv.ParseInt(u.Key, 10, 64); err == nil && v > id && u.At >= started.UnixMilli() {
			return u.Key, true
		}
	}
	return "", false
}

// A 1x1 PNG and a short WAV for the media fixtures.
var (
	fixturePNG, _ = base64.StdEncoding.DecodeString("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
	fixtureWAV, _ = base64.StdEncoding.DecodeString("UklGRiQAAABXQVZFZm10IBAAAAABAAEARKwAAIhYAQACABAAZGF0YQAAAAA=")
)

type samplingIn struct {
	Prompt string `json:"prompt" jsonschema:"the prompt to send to the client's LLM"`
}

type elicitationIn struct {
	Message string `json:"message" jsonschema:"what to ask the user"`
}

// AddEverything adds the MCP conformance suite's "everything" fixture:
// the test_* tools, resources and prompts.
func AddEverything(s *Server) {
	text := func(t string) ToolHandler[struct{}, any] {
		return func(context.Context, *Request, struct{}) (*ToolResult, any, error) {
			return &ToolResult{Content: []Content{TextContent(t)}}, nil, nil
		}
	}
	AddTool(s, &Tool{Name: "test_simple_text", Description: "Returns simple text content."},
		text("This is a simple text response for testing."))
	AddTool(s, &Tool{Name: "test_image_content", Description: "Returns image content."},
		func(context.Context, *Request, struct{}) (*ToolResult, any, error) {
			return &ToolResult{Content: []Content{ImageContent(fixturePNG, "image/png")}}, nil, nil
		})
	AddTool(s, &Tool{Name: "test_audio_content", Description: "Returns audio content."},
		func(context.Context, *Request, struct{}) (*ToolResult, any, error) {
			return &ToolResult{Content: []Content{AudioContent(fixtureWAV, "audio/wav")}}, nil, nil
		})
	embedded := ResourceContents{URI: "test://embedded-resource", MIMEType: "text/plain", Text: "This is an embedded resource content."}
	AddTool(s, &Tool{Name: "test_embedded_resource", Description: "Returns an embedded resource."},
		func(context.Context, *Request, struct{}) (*ToolResult, any, error) {
			return &ToolResult{Content: []Content{EmbeddedResource(embedded)}}, nil, nil
		})
	AddTool(s, &Tool{Name: "test_multiple_content_types", Description: "Returns text, image and resource content."},
		func(context.Context, *Request, struct{}) (*ToolResult, any, error) {
			return &ToolResult{Content: []Content{
				TextContent("Multiple content types test:"),
				ImageContent(fixturePNG, "image/png"),
				EmbeddedResource(ResourceContents{URI: "test://mixed-content-resource", MIMEType: "application/json", Text: `{"test":"data","value":123}`}),
			}}, nil, nil
		})
	AddTool(s, &Tool{Name: "test_tool_with_logging", Description: "Sends log messages while it runs."},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			for _, m := range []string{"Tool execution started", "Tool processing data", "Tool execution completed"} {
				if err := req.Log(ctx, "info", "test_tool_with_logging", m); err != nil {
					return nil, nil, err
				}
			}
			return &ToolResult{Content: []Content{TextContent("Tool with logging executed successfully")}}, nil, nil
		})
	AddTool(s, &Tool{Name: "test_tool_with_progress", Description: "Reports progress while it runs."},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			for _, p := range []float64{0, 50, 100} {
				if err := req.Progress(ctx, p, 100, fmt.Sprintf("Completed step %.0f of 100", p)); err != nil {
					return nil, nil, err
				}
			}
			return &ToolResult{Content: []Content{TextContent(fmt.Sprint(100))}}, nil, nil
		})
	AddTool(s, &Tool{Name: "test_error_handling", Description: "Always fails (isError)."},
		func(context.Context, *Request, struct{}) (*ToolResult, any, error) {
			//lint:ignore ST1005 the conformance fixture's text
			return nil, nil, errors.New("This tool intentionally returns an error for testing")
		})
	AddTool(s, &Tool{Name: "test_sampling", Description: "Asks the client's LLM (sampling/createMessage)."},
		func(ctx context.Context, req *Request, in samplingIn) (*ToolResult, any, error) {
			res, err := req.CreateMessage(ctx, &CreateMessageParams{MaxTokens: 100,
				Messages: []SamplingMessage{{Role: "user", Content: TextContent(in.Prompt)}}})
			if err != nil {
				return nil, nil, err
			}
			return &ToolResult{Content: []Content{TextContent("LLM response: " + res.Content.Text)}}, nil, nil
		})
	AddTool(s, &Tool{Name: "test_elicitation", Description: "Asks the user for input (elicitation/create)."},
		func(ctx context.Context, req *Request, in elicitationIn) (*ToolResult, any, error) {
			res, err := req.Elicit(ctx, &ElicitParams{Mode: "form", Message: in.Message, RequestedSchema: map[string]any{
				"type": "object",
				"properties": map[string]any{
					"username": map[string]any{"type": "string", "description": "User's response"},
					"email":    map[string]any{"type": "string", "description": "User's email address"},
				},
				"required": []string{"username", "email"},
			}})
			if err != nil {
				return nil, nil, err
			}
			b, _ := json.Marshal(res.Content)
			return &ToolResult{Content: []Content{TextContent(fmt.Sprintf("User response: action=%s, content=%s", res.Action, b))}}, nil, nil
		})

	elicitSchema := func(name, message string, schema map[string]any) {
		AddTool(s, &Tool{Name: name, Description: "Asks the user for input (elicitation/create) with " + message + "."},
			func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
				res, err := req.Elicit(ctx, &ElicitParams{Mode: "form", Message: "Conformance test: " + message, RequestedSchema: schema})
				if err != nil {
					return nil, nil, err
				}
				b, _ := json.Marshal(res.Content)
				return &ToolResult{Content: []Content{TextContent(fmt.Sprintf("Elicitation completed: action=%s, content=%s", res.Action, b))}}, nil, nil
			})
	}
	elicitSchema("test_elicitation_sep1034_defaults", "default values for every primitive type (SEP-1034)", sep1034Schema())
	elicitSchema("test_elicitation_sep1330_enums", "every enum variant (SEP-1330)", sep1330Schema())
	addModernFixture(s)
	addTasksV2Fixture(s)

	AddTool(s, &Tool{Name: "json_schema_2020_12_tool", Description: "Tool with JSON Schema 2020-12 features", InputSchema: schema2020()},
		func(_ context.Context, _ *Request, in map[string]any) (*ToolResult, any, error) {
			b, _ := json.Marshal(in)
			return &ToolResult{Content: []Content{TextContent("Received: " + string(b))}}, nil, nil
		})

	static := func(rc ResourceContents) ResourceHandler {
		return func(context.Context, *Request, string) ([]ResourceContents, error) {
			return []ResourceContents{rc}, nil
		}
	}
	s.AddResource(&Resource{URI: "test://static-text", Name: "static-text", MIMEType: "text/plain", Description: "A static text resource."},
		static(ResourceContents{URI: "test://static-text", MIMEType: "text/plain", Text: "This is the content of the static text resource."}))
	s.AddResource(&Resource{URI: "test://static-binary", Name: "static-binary", MIMEType: "image/png", Description: "A static binary resource."},
		static(ResourceContents{URI: "test://static-binary", MIMEType: "image/png", Blob: fixturePNG}))
	s.AddResource(&Resource{URI: "test://watched-resource", Name: "watched-resource", MIMEType: "text/plain", Description: "A resource to subscribe to."},
		static(ResourceContents{URI: "test://watched-resource", MIMEType: "text/plain", Text: "Watched resource content"}))
	s.AddResourceTemplate(&ResourceTemplate{URITemplate: "test://template/{id}/data", Name: "template", MIMEType: "application/json", Description: "A resource template with an id."},
		func(_ context.Context, _ *Request, uri string) ([]ResourceContents, error) {
			id := strings.TrimSuffix(strings.TrimPrefix(uri, "test://template/"), "/data")
			b, _ := json.Marshal(map[string]any{"id": id, "templateTest": true, "data": "Data for ID: " + id})
			return []ResourceContents{{URI: uri, MIMEType: "application/json", Text: string(b)}}, nil
		})

	s.AddPrompt(&Prompt{Name: "test_simple_prompt", Description: "A prompt without arguments."},
		func(context.Context, *Request, map[string]string) (*PromptResult, error) {
			return &PromptResult{Messages: []PromptMessage{{Role: "user", Content: TextContent("This is a simple prompt for testing.")}}}, nil
		})
	s.AddPrompt(&Prompt{Name: "test_prompt_with_arguments", Description: "A prompt with arguments.", Arguments: []PromptArgument{
		{Name: "arg1", Description: "First test argument", Required: true},
		{Name: "arg2", Description: "Second test argument", Required: true},
	}}, func(_ context.Context, _ *Request, args map[string]string) (*PromptResult, error) {
		return &PromptResult{Messages: []PromptMessage{{Role: "user", Content: TextContent(
			fmt.Sprintf("Prompt with arguments: arg1='%s', arg2='%s'", args["arg1"], args["arg2"]))}}}, nil
	})
	s.AddPrompt(&Prompt{Name: "test_prompt_with_embedded_resource", Description: "A prompt with an embedded resource.", Arguments: []PromptArgument{
		{Name: "resourceUri", Description: "URI of the resource to embed", Required: true},
	}}, func(_ context.Context, _ *Request, args map[string]string) (*PromptResult, error) {
		return &PromptResult{Messages: []PromptMessage{
			{Role: "user", Content: EmbeddedResource(ResourceContents{URI: args["resourceUri"], MIMEType: "text/plain", Text: "Embedded resource content for testing."})},
			{Role: "user", Content: TextContent("Please process the embedded resource above.")},
		}}, nil
	})
	s.AddPrompt(&Prompt{Name: "test_prompt_with_image", Description: "A prompt with an image."},
		func(context.Context, *Request, map[string]string) (*PromptResult, error) {
			return &PromptResult{Messages: []PromptMessage{
				{Role: "user", Content: ImageContent(fixturePNG, "image/png")},
				{Role: "user", Content: TextContent("Please analyze the image above.")},
			}}, nil
		})
	s.SetCompletion(func(_ context.Context, _ *Request, ref CompletionRef, arg, value string, _ map[string]string) ([]string, error) {
		var all []string
		switch {
		case ref.Type == "ref/prompt" && ref.Name == "test_prompt_with_arguments":
			all = []string{"paris", "park", "party", "python"}
		case ref.Type == "ref/resource" && strings.HasPrefix(ref.URI, "test://template/") && arg == "id":
			all = []string{"1", "2", "3", "42"}
		}
		var out []string
		for _, v := range all {
			if strings.HasPrefix(v, value) {
				out = append(out, v)
			}
		}
		return out, nil
	})
}

// sep1034Schema is an elicitation schema with a default for every
// primitive type (SEP-1034).
func sep1034Schema() map[string]any {
	return map[string]any{
		"type": "object",
		"properties": map[string]any{
			"name":     map[string]any{"type": "string", "description": "User name", "default": "John Doe"},
			"age":      map[string]any{"type": "integer", "description": "User age", "default": 30},
			"score":    map[string]any{"type": "number", "description": "User score", "default": 95.5},
			"status":   map[string]any{"type": "string", "description": "User status", "enum": []string{"active", "inactive", "pending"}, "default": "active"},
			"verified": map[string]any{"type": "boolean", "description": "Verification status", "default": true},
		},
	}
}

// sep1330Schema is an elicitation schema with each enum variant of
// SEP-1330: untitled and titled single-select, the legacy enumNames form,
// and untitled and titled multi-select.
func sep1330Schema() map[string]any {
	titled := func(pairs ...string) []map[string]any {
		var out []map[string]any
		for i := 0; i+1 < len(pairs); i += 2 {
			out = append(out, map[string]any{"const": pairs[i], "title": pairs[i+1]})
		}
		return out
	}
	options := []string{"option1", "option2", "option3"}
	return map[string]any{
		"type": "object",
		"properties": map[string]any{
			"untitledSingle": map[string]any{"type": "string", "description": "Untitled single-select", "enum": options},
			"titledSingle": map[string]any{"type": "string", "description": "Titled single-select",
				"oneOf": titled("value1", "First Option", "value2", "Second Option", "value3", "Third Option")},
			"legacyEnum": map[string]any{"type": "string", "description": "Legacy titled enum (enumNames, deprecated)",
				"enum": []string{"opt1", "opt2", "opt3"}, "enumNames": []string{"Option One", "Option Two", "Option Three"}},
			"untitledMulti": map[string]any{"type": "array", "description": "Untitled multi-select",
				"items": map[string]any{"type": "string", "enum": options}},
			"titledMulti": map[string]any{"type": "array", "description": "Titled multi-select",
				"items": map[string]any{"anyOf": titled("value1", "First Choice", "value2", "Second Choice", "value3", "Third Choice")}},
		},
	}
}

// schema2020JSON is an input schema using JSON Schema 2020-12 keywords
// (SEP-1613, SEP-2106): $schema, $defs with an $anchor, $ref, allOf/anyOf,
// if/then/else and additionalProperties.
const schema2020JSON = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "$defs": {"address": {"$anchor": "addressDef", "type": "object",
    "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
  "properties": {
    "name": {"type": "string"},
    "address": {"$ref": "#/$defs/address"},
    "contactMethod": {"type": "string", "enum": ["phone", "email"]},
    "phone": {"type": "string"},
    "email": {"type": "string"}
  },
  "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
  "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
  "then": {"required": ["phone"]},
  "else": {"required": ["email"]},
  "additionalProperties": false
}`

func schema2020() *jsonschema.Schema {
	var s jsonschema.Schema
	if err := json.Unmarshal([]byte(schema2020JSON), &s); err != nil {
		panic(err)
	}
	return &s
}
