package worker

import (
	"context"
	"encoding/json"
)

// tool is one MCP tool the worker serves.
type tool struct {
	Name        string          `json:"name"`
	Title       string          `json:"title,omitempty"`
	Description string          `json:"description,omitempty"`
	InputSchema json.RawMessage `json:"inputSchema"`
	// run executes the tool; a *Error is a protocol error (bad arguments).
	run func(ctx context.Context, c *call, args json.RawMessage) (*toolResult, *Error)
}

// toolResult is a CallToolResult.
type toolResult struct {
	Content []content `json:"content"`
	IsError bool      `json:"isError,omitempty"`
}

// content is one content block; only text for now.
type content struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// toolset is an ordered set of tools.
type toolset struct {
	order  []*tool
	byName map[string]*tool
}

func (ts *toolset) add(t *tool) {
	if ts.byName == nil {
		ts.byName = map[string]*tool{}
	}
	ts.order = append(ts.order, t)
	ts.byName[t.Name] = t
}

func builtinTools() *toolset {
	ts := &toolset{}
	ts.add(echoTool())
	return ts
}

// list serves tools/list. The set is small, so there is one page and no
// nextCursor; a cursor param is ignored.
func (ts *toolset) list(context.Context, *call) (any, *Error) {
	return map[string]any{"tools": ts.order}, nil
}

// call serves tools/call.
func (ts *toolset) call(ctx context.Context, c *call) (any, *Error) {
	var p struct {
		Name      *string         `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	}
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return nil, e
	}
	if p.Name == nil {
		return nil, errorf(CodeInvalidParams, `Invalid params: tools/call needs a string "name"`)
	}
	t, ok := ts.byName[*p.Name]
	if !ok {
		return nil, errorf(CodeInvalidParams, "Unknown tool: %q", *p.Name)
	}
	if len(p.Arguments) == 0 || isNull(p.Arguments) {
		p.Arguments = json.RawMessage("{}")
	}
	if p.Arguments[0] != '{' {
		return nil, errorf(CodeInvalidParams, `Invalid params: "arguments" must be an object`)
	}
	res, e := t.run(ctx, c, p.Arguments)
	if e != nil {
		return nil, e
	}
	return res, nil
}

// echoTool returns its "text" argument as text content.
func echoTool() *tool {
	return &tool{
		Name:        "echo",
		Title:       "Echo",
		Description: "Returns the text it is given.",
		InputSchema: json.RawMessage(`{"type":"object","properties":{"text":{"type":"string","description":"the text to echo back"}},"required":["text"]}`),
		run: func(_ context.Context, _ *call, args json.RawMessage) (*toolResult, *Error) {
			var a struct {
				Text *string `json:"text"`
			}
			if err := json.Unmarshal(args, &a); err != nil || a.Text == nil {
				return nil, errorf(CodeInvalidParams, `Invalid arguments for tool echo: "text" must be a string`)
			}
			return &toolResult{Content: []content{{Type: "text", Text: *a.Text}}}, nil
		},
	}
}
