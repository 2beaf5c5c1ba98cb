package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/jsonschema-go/jsonschema"
)

// The conformance fixture's tools for MCP 2026-07-28: MRTR (input_required
// results), per-request capabilities and log level, and listen streams.

// textSchema is an elicitation schema of one required string property.
func textSchema(prop, typ string) map[string]any {
	return map[string]any{
		"type":       "object",
		"properties": map[string]any{prop: map[string]any{"type": typ}},
		"required":   []string{prop},
	}
}

func elicitInput(message, prop, typ string) map[string]any {
	return map[string]any{"message": message, "requestedSchema": textSchema(prop, typ)}
}

func samplingInput(text string, maxTokens int) map[string]any {
	return map[string]any{
		"messages":  []map[string]any{{"role": "user", "content": map[string]any{"type": "text", "text": text}}},
		"maxTokens": maxTokens,
	}
}

// elicitedField reads content[field] of an elicitation answer.
func elicitedField(raw json.RawMessage, field string) string {
	var res struct {
		Action  string         `json:"action"`
		Content map[string]any `json:"content"`
	}
	_ = json.Unmarshal(raw, &res)
	if v, ok := res.Content[field]; ok {
		return fmt.Sprint(v)
	}
	return ""
}

// sampledText reads the text of a sampling answer.
func sampledText(raw json.RawMessage) string {
	var res struct {
		Content struct {
			Text string `json:"text"`
		} `json:"content"`
	}
	_ = json.Unmarshal(raw, &res)
	return res.Content.Text
}

// rootURIs reads the URIs of a roots/list answer.
func rootURIs(raw json.RawMessage) []string {
	var res struct {
		Roots []Root `json:"roots"`
	}
	_ = json.Unmarshal(raw, &res)
	var out []string
	for _, r := range res.Roots {
		out = append(out, r.URI)
	}
	return out
}

func textResult(format string, args ...any) *ToolResult {
	return &ToolResult{Content: []Content{TextContent(fmt.Sprintf(format, args...))}}
}

// addModernFixture adds the 2026-07-28 fixture tools and prompt.
func addModernFixture(s *Server) {
	type none = struct{}
	tool := func(name, desc string, run func(ctx context.Context, req *Request) (*ToolResult, error)) {
		AddTool(s, &Tool{Name: name, Description: desc}, func(ctx context.Context, req *Request, _ none) (*ToolResult, any, error) {
			res, err := run(ctx, req)
			return res, nil, err
		})
	}
	tool("test_missing_capability", "Needs the client's sampling capability (fails with -32021 without it).",
		func(ctx context.Context, req *Request) (*ToolResult, error) {
			res, err := req.CreateMessage(ctx, &CreateMessageParams{MaxTokens: 10,
				Messages: []SamplingMessage{{Role: "user", Content: TextContent("Say hi")}}})
			if err != nil {
				return nil, err
			}
			return textResult("LLM response: %s", res.Content.Text), nil
		})
	tool("test_streaming_elicitation", "Asks the user for input (elicitation) while it runs.",
		func(ctx context.Context, req *Request) (*ToolResult, error) {
			raw, err := req.Input(ctx, "user_name", "elicitation/create", elicitInput("What is your name?", "name", "string"))
			if err != nil {
				return nil, err
			}
			return textResult("Hello, %s!", elicitedField(raw, "name")), nil
		})
	tool("test_logging_tool", "Sends log messages at the request's log level.",
		func(ctx context.Context, req *Request) (*ToolResult, error) {
			for _, m := range []string{"Logging tool started", "Logging tool finished"} {
				if err := req.Log(ctx, "info", "test_logging_tool", m); err != nil {
					return nil, err
				}
			}
			return textResult("Logging tool executed"), nil
		})
	tool("test_trigger_tool_change", "Tells listen streams that the tool list changed.",
		func(ctx context.Context, req *Request) (*ToolResult, error) {
			if err := req.NotifyListChanged(ctx, ListenToolsChanged); err != nil {
				return nil, err
			}
			return textResult("Tool list change announced"), nil
		})
	tool("test_input_required_result_elicitation", "MRTR: asks for the user's name (elicitation).",
		func(ctx context.Context, req *Request) (*ToolResult, error) {
			raw, err := req.Input(ctx, "user_name", "elicitation/create", elicitInput("What is your name?", "name", "string"))
			if err != nil {
				return nil, err
			}
			return textResult("Hello, %s!", elicitedField(raw, "name")), nil
		})
	tool("test_input_required_result_sampling", "MRTR: asks the client's LLM a question (sampling).",
		func(ctx context.Context, req *Request) (*ToolResult, error) {
			raw, err := req.Input(ctx, "capital_question", "sampling/createMessage", samplingInput("What is the capital of France?", 100))
			if err != nil {
				return nil, err
			}
			return textResult("LLM response: %s", sampledText(raw)), nil
		})
	tool("test_input_required_result_list_roots", "MRTR: asks for the client's roots.",
		func(ctx context.Context, req *Request) (*ToolResult, error) {
			raw, err := req.Input(ctx, "client_roots", "roots/list", map[string]any{})
			if err != nil {
				return nil, err
			}
			return textResult("Client roots: %s", strings.Join(rootURIs(raw), ", ")), nil
		})
	confirm := func(ctx context.Context, req *Request) (*ToolResult, error) {
		raw, err := req.Input(ctx, "confirm", "elicitation/create", elicitInput("Please confirm", "ok", "boolean"))
		if err != nil {
			return nil, err
		}
		state := "no-state"
		if req.RequestStateVerified() {
			state = "state-ok"
		}
		return textResult("Confirmed: %s (%s)", elicitedField(raw, "ok"), state), nil
	}
	tool("test_input_required_result_request_state", "MRTR: a confirmation round-tripping requestState.", confirm)
	tool("test_input_required_result_tampered_state", "MRTR: a confirmation whose requestState is integrity-checked.", confirm)
	tool("test_input_required_result_multiple_inputs", "MRTR: asks for elicitation, sampling and roots in one round.",
		func(ctx context.Context, req *Request) (*ToolResult, error) {
			name, e1 := req.Input(ctx, "user_name", "elicitation/create", elicitInput("What is your name?", "name", "string"))
			greeting, e2 := req.Input(ctx, "greeting", "sampling/createMessage", samplingInput("Generate a greeting", 50))
			roots, e3 := req.Input(ctx, "client_roots", "roots/list", map[string]any{})
			if err := errors.Join(e1, e2, e3); err != nil {
				return nil, err
			}
			return textResult("Name: %s; greeting: %s; roots: %s", elicitedField(name, "name"), sampledText(greeting),
				strings.Join(rootURIs(roots), ", ")), nil
		})
	tool("test_input_required_result_multi_round", "MRTR: two rounds of elicitation.",
		func(ctx context.Context, req *Request) (*ToolResult, error) {
			name, err := req.Input(ctx, "step1", "elicitation/create", elicitInput("Step 1: What is your name?", "name", "string"))
			if err != nil {
				return nil, err
			}
			color, err := req.Input(ctx, "step2", "elicitation/create", elicitInput("Step 2: What is your favorite color?", "color", "string"))
			if err != nil {
				return nil, err
			}
			return textResult("%s likes %s", elicitedField(name, "name"), elicitedField(color, "color")), nil
		})
	tool("test_input_required_result_capabilities", "MRTR: asks only for what the client declared (sampling, elicitation).",
		func(ctx context.Context, req *Request) (*ToolResult, error) {
			var errs []error
			var got []string
			if req.ClientHas("sampling") {
				raw, err := req.Input(ctx, "capital_question", "sampling/createMessage", samplingInput("What is the capital of France?", 100))
				errs, got = append(errs, err), append(got, "sampling: "+sampledText(raw))
			}
			if req.ClientHas("elicitation") {
				raw, err := req.Input(ctx, "user_name", "elicitation/create", elicitInput("What is your name?", "name", "string"))
				errs, got = append(errs, err), append(got, "elicitation: "+elicitedField(raw, "name"))
			}
			if err := errors.Join(errs...); err != nil {
				return nil, err
			}
			return textResult("Inputs: %s", strings.Join(got, "; ")), nil
		})
	var headerIn jsonschema.Schema
	if err := json.Unmarshal([]byte(`{"type":"object","properties":{"region":{"type":"string",
		"description":"Region to act in; mirrored in the Mcp-Param-Region header","x-mcp-header":"Region"}},"required":["region"]}`), &headerIn); err != nil {
		panic(err)
	}
	AddTool(s, &Tool{Name: "test_custom_header", Description: "Has an argument mirrored in an HTTP header (x-mcp-header, SEP-2243).", InputSchema: &headerIn},
		func(_ context.Context, _ *Request, in struct {
			Region string `json:"region"`
		}) (*ToolResult, any, error) {
			return textResult("Region: %s", in.Region), nil, nil
		})
	s.AddPrompt(&Prompt{Name: "test_input_required_result_prompt", Description: "MRTR: a prompt that asks the user for context (elicitation)."},
		func(ctx context.Context, req *Request, _ map[string]string) (*PromptResult, error) {
			raw, err := req.Input(ctx, "user_context", "elicitation/create", elicitInput("What context should the prompt use?", "context", "string"))
			if err != nil {
				return nil, err
			}
			return &PromptResult{Messages: []PromptMessage{{Role: "user", Content: TextContent("Context: " + elicitedField(raw, "context"))}}}, nil
		})
}
