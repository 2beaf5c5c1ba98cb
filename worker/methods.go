package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// methodPing answers ping with an empty result.
func methodPing(context.Context, *call) (any, *Error) { return struct{}{}, nil }

// methodSetLevel stores the session's log level in its record, so every
// worker filters notifications/message by it.
func methodSetLevel(ctx context.Context, c *call) (any, *Error) {
	var p struct {
		Level string `json:"level"`
	}
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return nil, e
	}
	if logRank(p.Level) < 0 {
		return nil, errorf(CodeInvalidParams, "Invalid params: level must be one of %s", strings.Join(logLevels, ", "))
	}
	if err := c.h.updateSession(ctx, c.session, func(r *sessionRecord) bool {
		if r.LogLevel == p.Level {
			return false
		}
		r.LogLevel = p.Level
		return true
	}); err != nil {
		c.storeErr = err
		return nil, nil
	}
	return struct{}{}, nil
}

func (s *Server) listTools(_ context.Context, c *call) (any, *Error) {
	defs := make([]toolDef, 0, len(s.tools))
	for _, t := range s.tools {
		if t.sessionOnly && c.sessionless() {
			continue
		}
		defs = append(defs, t.def)
	}
	return map[string]any{"tools": defs}, nil
}

// toolCallParams are the params of tools/call.
type toolCallParams struct {
	Name      *string         `json:"name"`
	Arguments json.RawMessage `json:"arguments"`
	Task      json.RawMessage `json:"task"`
}

func (s *Server) callTool(ctx context.Context, c *call) (any, *Error) {
	var p toolCallParams
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return nil, e
	}
	if p.Name == nil {
		return nil, errorf(CodeInvalidParams, `Invalid params: tools/call needs a string "name"`)
	}
	t, ok := s.toolByName[*p.Name]
	if !ok || (t.sessionOnly && c.sessionless()) {
		return nil, errorf(CodeInvalidParams, "Unknown tool: %q", *p.Name)
	}
	if c.sessionless() {
		// Tasks v2: the tool decides (ContinueAsTask); a legacy params.task
		// is ignored, and a tool that only runs as a task needs the
		// extension.
		if t.support == "required" && !c.req.clientHas("extensions", TasksExtension) {
			return nil, missingTasksExtension(fmt.Sprintf("Tool %q runs only as a task: declare the %s extension", *p.Name, TasksExtension))
		}
		return runTool(ctx, c, t, p.Arguments)
	}
	if len(p.Task) > 0 && !isNull(p.Task) {
		return startTask(ctx, c, t, p)
	}
	if t.support == "required" {
		return nil, errorf(CodeMethodNotFound, "Tool %q must be called as a task (params.task)", *p.Name)
	}
	return runTool(ctx, c, t, p.Arguments)
}

// runTool validates arguments against the tool's input schema and runs it.
func runTool(ctx context.Context, c *call, t *tool, raw json.RawMessage) (any, *Error) {
	if len(raw) == 0 || isNull(raw) {
		raw = json.RawMessage("{}")
	}
	if raw[0] != '{' {
		return nil, errorf(CodeInvalidParams, `Invalid params: "arguments" must be an object`)
	}
	var args map[string]any
	if err := json.Unmarshal(raw, &args); err != nil {
		return nil, errorf(CodeInvalidParams, "Invalid params: arguments: %v", err)
	}
	if t.defaults {
		if err := t.in.ApplyDefaults(&args); err != nil {
			return invalidToolInput(c, t, err)
		}
		raw = nil // args differ from raw now
	}
	if t.flat == nil || !t.flat.valid(args) {
		if err := t.in.Validate(args); err != nil {
			return invalidToolInput(c, t, err)
		}
	}
	res, err := t.run(ctx, c.req, args, raw)
	if err == nil {
		return res, nil
	}
	var ia *invalidArgs
	var tc *taskCreated
	switch {
	case errors.As(err, &tc):
		return tc.result, nil
	case errors.As(err, &ia):
		return invalidToolInput(c, t, err)
	}
	out, rerr, serr := toolOutcome(nil, err)
	switch {
	case serr != nil:
		c.storeErr = serr // answered as the store's failure
		return nil, nil
	case rerr != nil:
		return nil, rerr
	}
	return out, nil
}

// invalidToolInput answers arguments that fail the input schema: a tool
// result with isError from 2025-11-25 on (so the model can correct
// itself), -32602 before.
func invalidToolInput(c *call, t *tool, err error) (any, *Error) {
	msg := "Invalid arguments for tool " + t.def.Name + ": " + err.Error()
	if c.session.rec.ProtocolVersion >= "2025-11-25" {
		return &ToolResult{Content: []Content{TextContent(msg)}, IsError: true}, nil
	}
	return nil, errorf(CodeInvalidParams, "%s", msg)
}

func (s *Server) listResources(_ context.Context, c *call) (any, *Error) {
	defs := make([]map[string]any, 0, len(s.resources))
	for _, r := range s.resources {
		if r.sessionOnly && c.sessionless() {
			continue
		}
		defs = append(defs, r.def)
	}
	return map[string]any{"resources": defs}, nil
}

func (s *Server) listTemplates(context.Context, *call) (any, *Error) {
	defs := make([]map[string]any, 0, len(s.templates))
	for _, t := range s.templates {
		defs = append(defs, t.def)
	}
	return map[string]any{"resourceTemplates": defs}, nil
}

// CodeResourceNotFound answers resources/read of an unknown URI.
const CodeResourceNotFound = -32002

func (s *Server) readResource(ctx context.Context, c *call) (any, *Error) {
	var p struct {
		URI string `json:"uri"`
	}
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return nil, e
	}
	if p.URI == "" {
		return nil, errorf(CodeInvalidParams, `Invalid params: resources/read needs a "uri"`)
	}
	var read ResourceHandler
	if r, ok := s.resByURI[p.URI]; ok && !(r.sessionOnly && c.sessionless()) {
		read = r.read
	} else {
		for _, t := range s.templates {
			if t.re.MatchString(p.URI) {
				read = t.read
				break
			}
		}
	}
	notFound := &Error{Code: CodeResourceNotFound, Message: "Resource not found", Data: map[string]string{"uri": p.URI}}
	if read == nil {
		return nil, notFound
	}
	contents, err := read(ctx, c.req, p.URI)
	var je *Error
	switch {
	case err == nil:
		return map[string]any{"contents": contents}, nil
	case errors.Is(err, ErrResourceNotFound):
		return nil, notFound
	case errors.As(err, &je):
		return nil, je
	case errors.Is(err, ErrSessionNotFound), errors.Is(err, ErrStoreUnavailable):
		c.storeErr = err
		return nil, nil
	}
	return nil, errorf(CodeInternalError, "Internal error reading %s: %v", p.URI, err)
}

const subscriptionPrefix = "sub/"

func methodSubscribe(ctx context.Context, c *call) (any, *Error) {
	var p struct {
		URI string `json:"uri"`
	}
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return nil, e
	}
	if p.URI == "" {
		return nil, errorf(CodeInvalidParams, `Invalid params: resources/subscribe needs a "uri"`)
	}
	if _, err := c.h.store.PutState(ctx, c.session.id, subscriptionPrefix+p.URI, []byte("{}"), nil); err != nil {
		c.storeErr = err
		return nil, nil
	}
	return struct{}{}, nil
}

func methodUnsubscribe(ctx context.Context, c *call) (any, *Error) {
	var p struct {
		URI string `json:"uri"`
	}
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return nil, e
	}
	if err := c.h.store.DeleteState(ctx, c.session.id, subscriptionPrefix+p.URI); err != nil && !errors.Is(err, ErrNotFound) {
		c.storeErr = err
		return nil, nil
	}
	return struct{}{}, nil
}

// notifyResourceUpdated appends notifications/resources/updated to the
// session's standalone stream when the client subscribed to uri.
func (h *Handler) notifyResourceUpdated(ctx context.Context, sid, uri string) error {
	if _, err := h.store.GetState(ctx, sid, subscriptionPrefix+uri); err != nil {
		if errors.Is(err, ErrNotFound) && !errors.Is(err, ErrSessionNotFound) {
			return nil
		}
		return err
	}
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": map[string]string{"uri": uri}})
	_, _, err := h.appendStandalone(ctx, sid, b)
	return err
}

func (s *Server) listPrompts(context.Context, *call) (any, *Error) {
	defs := make([]map[string]any, 0, len(s.prompts))
	for _, p := range s.prompts {
		defs = append(defs, p.def)
	}
	return map[string]any{"prompts": defs}, nil
}

func (s *Server) getPrompt(ctx context.Context, c *call) (any, *Error) {
	var p struct {
		Name      string            `json:"name"`
		Arguments map[string]string `json:"arguments"`
	}
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return nil, e
	}
	pr, ok := s.promptByName[p.Name]
	if !ok {
		return nil, errorf(CodeInvalidParams, "Unknown prompt: %q", p.Name)
	}
	for _, a := range pr.args {
		if _, ok := p.Arguments[a.Name]; a.Required && !ok {
			return nil, errorf(CodeInvalidParams, "Invalid params: prompt %q needs argument %q", p.Name, a.Name)
		}
	}
	if p.Arguments == nil {
		p.Arguments = map[string]string{}
	}
	res, err := pr.get(ctx, c.req, p.Arguments)
	var je *Error
	switch {
	case err == nil:
		if res.Messages == nil {
			res.Messages = []PromptMessage{}
		}
		return res, nil
	case errors.As(err, &je):
		return nil, je
	case errors.Is(err, ErrSessionNotFound), errors.Is(err, ErrStoreUnavailable):
		c.storeErr = err
		return nil, nil
	}
	return nil, errorf(CodeInternalError, "Internal error in prompt %q: %v", p.Name, err)
}

// maxCompletionValues is the most values completion/complete returns.
const maxCompletionValues = 100

func (s *Server) completion(ctx context.Context, c *call) (any, *Error) {
	var p struct {
		Ref      CompletionRef `json:"ref"`
		Argument struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"argument"`
		Context struct {
			Arguments map[string]string `json:"arguments"`
		} `json:"context"`
	}
	if e := decodeParams(c.msg.Params, &p); e != nil {
		return nil, e
	}
	switch p.Ref.Type {
	case "ref/prompt":
		if _, ok := s.promptByName[p.Ref.Name]; !ok {
			return nil, errorf(CodeInvalidParams, "Unknown prompt: %q", p.Ref.Name)
		}
	case "ref/resource":
	default:
		return nil, errorf(CodeInvalidParams, `Invalid params: ref.type must be "ref/prompt" or "ref/resource"`)
	}
	var values []string
	if s.complete != nil {
		var err error
		if values, err = s.complete(ctx, c.req, p.Ref, p.Argument.Name, p.Argument.Value, p.Context.Arguments); err != nil {
			var je *Error
			if errors.As(err, &je) {
				return nil, je
			}
			return nil, errorf(CodeInternalError, "Internal error in completion: %v", err)
		}
	}
	total := len(values)
	sort.Strings(values)
	if len(values) > maxCompletionValues {
		values = values[:maxCompletionValues]
	}
	if values == nil {
		values = []string{}
	}
	return map[string]any{"completion": map[string]any{"values": values, "total": total, "hasMore": total > len(values)}}, nil
}

// MarshalJSON writes only the fields of the content's type.
func (c Content) MarshalJSON() ([]byte, error) {
	if c.Type == "text" && len(c.Annotations) == 0 {
		// The usual block, without a map: the same bytes (members in
		// the map's sorted order), a third of the allocations.
		return json.Marshal(struct {
			Text string `json:"text"`
			Type string `json:"type"`
		}{c.Text, c.Type})
	}
	m := map[string]any{"type": c.Type}
	switch c.Type {
	case "text":
		m["text"] = c.Text
	case "image", "audio":
		m["data"] = c.Data
		m["mimeType"] = c.MIMEType
	case "resource":
		m["resource"] = c.Resource
	case "resource_link":
		m["uri"] = c.URI
		m["name"] = c.Name
		setIf(m, "mimeType", c.MIMEType)
	default:
		type plain Content
		return json.Marshal(plain(c))
	}
	if len(c.Annotations) > 0 {
		m["annotations"] = c.Annotations
	}
	return json.Marshal(m)
}

// MarshalJSON writes text or blob, whichever the contents have.
func (rc ResourceContents) MarshalJSON() ([]byte, error) {
	m := map[string]any{"uri": rc.URI}
	setIf(m, "mimeType", rc.MIMEType)
	if rc.Blob != nil {
		m["blob"] = rc.Blob
	} else {
		m["text"] = rc.Text
	}
	return json.Marshal(m)
}
