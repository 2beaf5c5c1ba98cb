package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/yosida95/uritemplate/v3"
)

// Server is what a worker serves: tools, resources, resource templates,
// prompts and argument completion. Build it once with NewServer and the
// Add functions, then hand it to NewHandler with WithServer. Handlers get a
// *Request, which reaches the session (its state in the store, logging,
// progress, sampling, elicitation, roots); they keep nothing in memory
// between requests, because the next request of the session may reach
// another worker.
type Server struct {
	tools        []*tool
	toolByName   map[string]*tool
	resources    []*resource
	resByURI     map[string]*resource
	templates    []*resourceTemplate
	prompts      []*prompt
	promptByName map[string]*prompt
	complete     CompletionHandler
	// Instructions is sent in the initialize result when set.
	Instructions string
}

// NewServer returns an empty Server.
func NewServer() *Server {
	return &Server{toolByName: map[string]*tool{}, resByURI: map[string]*resource{}, promptByName: map[string]*prompt{}}
}

// Tool describes a tool. InputSchema and OutputSchema, when nil, are
// inferred from the handler's In and Out types.
type Tool struct {
	Name, Title, Description string
	// Annotations are sent as the tool's annotations (readOnlyHint, ...).
	Annotations map[string]any
	// InputSchema overrides the schema inferred from In; it must describe
	// an object.
	InputSchema *jsonschema.Schema
	// OutputSchema overrides the schema inferred from Out.
	OutputSchema *jsonschema.Schema
	// TaskSupport is "forbidden" (default), "optional" or "required":
	// whether tools/call may run the tool as a task (2025-11-25).
	TaskSupport string
	// SessionOnly: the tool keeps state in the session, so sessionless
	// (MCP 2026-07-28) requests neither list nor call it.
	SessionOnly bool
}

// ToolHandler runs a tool with its arguments decoded into In. It returns
// the result, or the structured output Out (the result is then built
// from it), or an error: a *Error is answered as that JSON-RPC error;
// any other error becomes a tool result with isError set and the error
// text as content, so the model sees it.
type ToolHandler[In, Out any] func(ctx context.Context, req *Request, in In) (*ToolResult, Out, error)

// ToolResult is a CallToolResult.
type ToolResult struct {
	Content           []Content `json:"content"`
	StructuredContent any       `json:"structuredContent,omitempty"`
	IsError           bool      `json:"isError,omitempty"`
}

// Content is one content block: text, image, audio, resource_link or an
// embedded resource.
type Content struct {
	Type        string            `json:"type"`
	Text        string            `json:"text,omitempty"`
	Data        []byte            `json:"data,omitempty"` // base64 on the wire
	MIMEType    string            `json:"mimeType,omitempty"`
	URI         string            `json:"uri,omitempty"`  // resource_link
	Name        string            `json:"name,omitempty"` // resource_link
	Resource    *ResourceContents `json:"resource,omitempty"`
	Annotations map[string]any    `json:"annotations,omitempty"`
}

// TextContent is a text content block.
func TextContent(text string) Content { return Content{Type: "text", Text: text} }

// ImageContent is an image content block.
func ImageContent(data []byte, mimeType string) Content {
	return Content{Type: "image", Data: data, MIMEType: mimeType}
}

// AudioContent is an audio content block.
func AudioContent(data []byte, mimeType string) Content {
	return Content{Type: "audio", Data: data, MIMEType: mimeType}
}

// EmbeddedResource is a resource content block.
func EmbeddedResource(rc ResourceContents) Content { return Content{Type: "resource", Resource: &rc} }

// ResourceContents is the content of one resource: Text or Blob.
type ResourceContents struct {
	URI      string `json:"uri"`
	MIMEType string `json:"mimeType,omitempty"`
	Text     string `json:"text,omitempty"`
	Blob     []byte `json:"blob,omitempty"`
}

// tool is one registered tool.
type tool struct {
	def toolDef
	in  *jsonschema.Resolved
	// run runs the tool on validated arguments: args, and raw (their
	// JSON, nil when defaults were applied to args) to decode them from.
	run    func(ctx context.Context, req *Request, args map[string]any, raw json.RawMessage) (*ToolResult, error)
	hasOut bool
	// defaults: the input schema may give a default somewhere, so its
	// arguments must go through ApplyDefaults (without, that is a no-op).
	defaults    bool
	flat        *flatSchema // the input schema when flat (toolinput.go), else nil
	support     string
	sessionOnly bool
}

type toolDef struct {
	Name         string             `json:"name"`
	Title        string             `json:"title,omitempty"`
	Description  string             `json:"description,omitempty"`
	InputSchema  *jsonschema.Schema `json:"inputSchema"`
	OutputSchema *jsonschema.Schema `json:"outputSchema,omitempty"`
	Annotations  map[string]any     `json:"annotations,omitempty"`
	Execution    map[string]any     `json:"execution,omitempty"`
}

// AddTool registers a tool. It panics when the tool has no name, is added
// twice, or its schema cannot be inferred: those are programming errors.
func AddTool[In, Out any](s *Server, t *Tool, h ToolHandler[In, Out]) {
	if t == nil || t.Name == "" {
		panic("worker.AddTool: a tool needs a name")
	}
	if _, dup := s.toolByName[t.Name]; dup {
		panic(fmt.Sprintf("worker.AddTool: tool %q added twice", t.Name))
	}
	in := t.InputSchema
	if in == nil {
		var err error
		if in, err = jsonschema.For[In](nil); err != nil {
			panic(fmt.Sprintf("worker.AddTool %q: input schema: %v", t.Name, err))
		}
	}
	if in.Type == "" && len(in.Types) == 0 {
		in.Type = "object"
	}
	if in.Type != "object" {
		panic(fmt.Sprintf("worker.AddTool %q: the input schema must describe an object, not %q", t.Name, in.Type))
	}
	resolved, err := in.Resolve(nil)
	if err != nil {
		panic(fmt.Sprintf("worker.AddTool %q: input schema: %v", t.Name, err))
	}
	out := t.OutputSchema
	outType := reflect.TypeFor[Out]()
	if out == nil && outType.Kind() != reflect.Interface {
		if out, err = jsonschema.For[Out](nil); err != nil {
			panic(fmt.Sprintf("worker.AddTool %q: output schema: %v", t.Name, err))
		}
		if out.Type != "object" {
			out = nil // structuredContent is an object; other Outs are content only
		}
	}
	support := t.TaskSupport
	if support == "" {
		support = "forbidden"
	}
	tl := &tool{
		def: toolDef{Name: t.Name, Title: t.Title, Description: t.Description, InputSchema: in,
			OutputSchema: out, Annotations: t.Annotations},
		in:          resolved,
		hasOut:      out != nil,
		defaults:    schemaMayHaveDefaults(in),
		flat:        compileFlatSchema(in),
		support:     support,
		sessionOnly: t.SessionOnly,
	}
	if support != "forbidden" {
		tl.def.Execution = map[string]any{"taskSupport": support}
	}
	tl.run = func(ctx context.Context, req *Request, args map[string]any, raw json.RawMessage) (*ToolResult, error) {
		var v In
		// The arguments as sent decode straight into In. Where they do
		// not (a number In holds as an integer spelled 1.0 or 1e2) or
		// defaults were added to args, args are encoded again and
		// decoded, as numbers in args are float64s.
		if raw == nil || json.Unmarshal(raw, &v) != nil {
			v = *new(In)
			b, _ := json.Marshal(args)
			if err := json.Unmarshal(b, &v); err != nil {
				return nil, &invalidArgs{err}
			}
		}
		res, o, err := h(ctx, req, v)
		if err != nil {
			return nil, err
		}
		if res == nil {
			res = &ToolResult{}
		}
		if tl.hasOut && res.StructuredContent == nil {
			res.StructuredContent = o
		}
		if res.Content == nil {
			res.Content = []Content{}
			if tl.hasOut || outType.Kind() != reflect.Interface {
				if b, err := json.Marshal(o); err == nil {
					res.Content = []Content{TextContent(string(b))}
				}
			}
		}
		return res, nil
	}
	s.tools = append(s.tools, tl)
	s.toolByName[t.Name] = tl
}

// schemaMayHaveDefaults reports whether s, or a schema in it, may give
// a "default" (any "default" member in its JSON counts, so a false answer
// is sure).
func schemaMayHaveDefaults(s *jsonschema.Schema) bool {
	b, err := json.Marshal(s)
	return err != nil || bytes.Contains(b, []byte(`"default"`))
}

// invalidArgs is an argument that passed the schema but not json decoding
// into In.
type invalidArgs struct{ err error }

func (e *invalidArgs) Error() string { return "invalid arguments: " + e.err.Error() }

// Resource describes a resource with a fixed URI.
type Resource struct {
	URI, Name, Title, Description, MIMEType string
	Size                                    int64
	// SessionOnly: the resource lives in a session, so sessionless (MCP
	// 2026-07-28) requests neither list nor read it.
	SessionOnly bool
}

// ResourceTemplate describes resources whose URIs match an RFC 6570 URI
// template.
type ResourceTemplate struct {
	URITemplate, Name, Title, Description, MIMEType string
}

// ResourceHandler reads the resource at uri. A missing resource is
// ErrResourceNotFound.
type ResourceHandler func(ctx context.Context, req *Request, uri string) ([]ResourceContents, error)

// ErrResourceNotFound is returned by a ResourceHandler for a URI it does
// not have; resources/read answers it with -32002.
var ErrResourceNotFound = errors.New("resource not found")

type resource struct {
	def         map[string]any
	read        ResourceHandler
	sessionOnly bool
}

type resourceTemplate struct {
	def  map[string]any
	re   *regexp.Regexp
	read ResourceHandler
}

// AddResource registers a resource.
func (s *Server) AddResource(r *Resource, h ResourceHandler) {
	if r == nil || r.URI == "" || r.Name == "" || h == nil {
		panic("worker.AddResource: a resource needs a URI, a name and a handler")
	}
	def := map[string]any{"uri": r.URI, "name": r.Name}
	setIf(def, "title", r.Title)
	setIf(def, "description", r.Description)
	setIf(def, "mimeType", r.MIMEType)
	if r.Size > 0 {
		def["size"] = r.Size
	}
	res := &resource{def: def, read: h, sessionOnly: r.SessionOnly}
	s.resources = append(s.resources, res)
	s.resByURI[r.URI] = res
}

// AddResourceTemplate registers a resource template; resources/read of a
// URI that matches it runs h.
func (s *Server) AddResourceTemplate(t *ResourceTemplate, h ResourceHandler) {
	if t == nil || t.URITemplate == "" || t.Name == "" || h == nil {
		panic("worker.AddResourceTemplate: a template needs a URI template, a name and a handler")
	}
	tpl, err := uritemplate.New(t.URITemplate)
	if err != nil {
		panic(fmt.Sprintf("worker.AddResourceTemplate %q: %v", t.URITemplate, err))
	}
	def := map[string]any{"uriTemplate": t.URITemplate, "name": t.Name}
	setIf(def, "title", t.Title)
	setIf(def, "description", t.Description)
	setIf(def, "mimeType", t.MIMEType)
	s.templates = append(s.templates, &resourceTemplate{def: def, re: tpl.Regexp(), read: h})
}

// Prompt describes a prompt.
type Prompt struct {
	Name, Title, Description string
	Arguments                []PromptArgument
}

// PromptArgument is one argument of a prompt.
type PromptArgument struct {
	Name        string `json:"name"`
	Title       string `json:"title,omitempty"`
	Description string `json:"description,omitempty"`
	Required    bool   `json:"required,omitempty"`
}

// PromptResult is a GetPromptResult.
type PromptResult struct {
	Description string          `json:"description,omitempty"`
	Messages    []PromptMessage `json:"messages"`
}

// PromptMessage is one message of a prompt.
type PromptMessage struct {
	Role    string  `json:"role"`
	Content Content `json:"content"`
}

// PromptHandler renders a prompt from its arguments.
type PromptHandler func(ctx context.Context, req *Request, args map[string]string) (*PromptResult, error)

type prompt struct {
	def  map[string]any
	args []PromptArgument
	get  PromptHandler
}

// AddPrompt registers a prompt.
func (s *Server) AddPrompt(p *Prompt, h PromptHandler) {
	if p == nil || p.Name == "" || h == nil {
		panic("worker.AddPrompt: a prompt needs a name and a handler")
	}
	if _, dup := s.promptByName[p.Name]; dup {
		panic(fmt.Sprintf("worker.AddPrompt: prompt %q added twice", p.Name))
	}
	def := map[string]any{"name": p.Name}
	setIf(def, "title", p.Title)
	setIf(def, "description", p.Description)
	if len(p.Arguments) > 0 {
		def["arguments"] = p.Arguments
	}
	pr := &prompt{def: def, args: p.Arguments, get: h}
	s.prompts = append(s.prompts, pr)
	s.promptByName[p.Name] = pr
}

// CompletionRef is what completion/complete completes for: a prompt
// (Type "ref/prompt", Name) or a resource template (Type "ref/resource",
// URI).
type CompletionRef struct {
	Type string `json:"type"`
	Name string `json:"name,omitempty"`
	URI  string `json:"uri,omitempty"`
}

// CompletionHandler returns the values that complete argument arg (whose
// typed prefix is value); context holds the arguments already chosen.
type CompletionHandler func(ctx context.Context, req *Request, ref CompletionRef, arg, value string, context map[string]string) ([]string, error)

// SetCompletion sets the completion handler; the server then advertises
// the completions capability.
func (s *Server) SetCompletion(h CompletionHandler) { s.complete = h }

// capabilities is the ServerCapabilities this server promises. Lists never
// change at run time, so every listChanged is false.
func (s *Server) capabilities() json.RawMessage {
	caps := map[string]any{
		"logging": map[string]any{},
		"tools":   map[string]any{"listChanged": false},
		"tasks": map[string]any{
			"list":     map[string]any{},
			"cancel":   map[string]any{},
			"requests": map[string]any{"tools": map[string]any{"call": map[string]any{}}},
		},
	}
	if len(s.resources)+len(s.templates) > 0 {
		caps["resources"] = map[string]any{"subscribe": true, "listChanged": false}
	}
	if len(s.prompts) > 0 {
		caps["prompts"] = map[string]any{"listChanged": false}
	}
	if s.complete != nil {
		caps["completions"] = map[string]any{}
	}
	b, _ := json.Marshal(caps)
	return b
}

// ToolNames returns the names of the registered tools, sorted.
func (s *Server) ToolNames() []string {
	names := make([]string, 0, len(s.tools))
	for _, t := range s.tools {
		names = append(names, t.def.Name)
	}
	sort.Strings(names)
	return names
}

func setIf(m map[string]any, k, v string) {
	if v != "" {
		m[k] = v
	}
}
