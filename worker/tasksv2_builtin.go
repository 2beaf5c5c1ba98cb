package worker

import (
	"context"
	"fmt"
	"time"
)

// The conformance fixture's tools for the tasks v2 extension (SEP-2663):
// greet (sync only), slow_compute, failing_job, protocol_error_job,
// confirm_delete, multi_input and test_tool_with_task. Each task-
// supporting tool decides itself to run as a task (ContinueAsTask): a
// client that did not declare the extension gets a plain result, or
// -32021 from a tool whose task support is "required".

// maxSlowComputeSeconds bounds slow_compute so a call cannot hold a
// goroutine beyond what the fixture needs.
const maxSlowComputeSeconds = 600

// failingJobDelay is how long failing_job works before it fails.
const failingJobDelay = time.Second

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// addTasksV2Fixture adds the tasks v2 fixture tools.
func addTasksV2Fixture(s *Server) {
	AddTool(s, &Tool{Name: "greet", Description: "Greets someone by name (never a task)."},
		func(_ context.Context, _ *Request, in struct {
			Name string `json:"name" jsonschema:"who to greet"`
		}) (*ToolResult, any, error) {
			return textResult("Hello, %s!", in.Name), nil, nil
		})
	AddTool(s, &Tool{Name: "slow_compute", TaskSupport: "optional",
		Description: "Works for the given number of seconds, then answers; runs as a task for clients of the tasks extension."},
		func(ctx context.Context, req *Request, in struct {
			Seconds float64 `json:"seconds" jsonschema:"how long to work, in seconds (0 to 600)"`
			Label   string  `json:"label,omitempty" jsonschema:"a label echoed in the result"`
		}) (*ToolResult, any, error) {
			if in.Seconds < 0 || in.Seconds > maxSlowComputeSeconds {
				return nil, nil, errorf(CodeInvalidParams, "Invalid params: seconds must be between 0 and %d", maxSlowComputeSeconds)
			}
			res, err := req.ContinueAsTask(ctx, func(ctx context.Context, _ *Request) (*ToolResult, error) {
				if err := sleepCtx(ctx, time.Duration(in.Seconds*float64(time.Second))); err != nil {
					return nil, err
				}
				return textResult("Computed %q in %gs", in.Label, in.Seconds), nil
			})
			return res, nil, err
		})
	AddTool(s, &Tool{Name: "failing_job", TaskSupport: "required",
		Description: "Works for a second, then fails with a tool execution error (isError)."},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			res, err := req.ContinueAsTask(ctx, func(ctx context.Context, _ *Request) (*ToolResult, error) {
				if err := sleepCtx(ctx, failingJobDelay); err != nil {
					return nil, err
				}
				return nil, fmt.Errorf("failing_job failed, as it always does")
			})
			return res, nil, err
		})
	AddTool(s, &Tool{Name: "protocol_error_job", TaskSupport: "optional",
		Description: "Fails with a protocol-level error (the task fails rather than completing with isError)."},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			res, err := req.ContinueAsTask(ctx, func(context.Context, *Request) (*ToolResult, error) {
				return nil, errorf(CodeInternalError, "Internal error: protocol_error_job failed on purpose")
			})
			return res, nil, err
		})
	AddTool(s, &Tool{Name: "confirm_delete", TaskSupport: "optional",
		Description: "Asks the user to confirm deleting a file (elicitation) and reports the answer."},
		func(ctx context.Context, req *Request, in struct {
			Filename string `json:"filename" jsonschema:"the file to delete"`
		}) (*ToolResult, any, error) {
			res, err := req.ContinueAsTask(ctx, func(ctx context.Context, req *Request) (*ToolResult, error) {
				raw, err := req.Input(ctx, "confirm", "elicitation/create", elicitInput("Delete "+in.Filename+"?", "confirm", "boolean"))
				if err != nil {
					return nil, err
				}
				if elicitedField(raw, "confirm") == "true" {
					return textResult("Deleted %s", in.Filename), nil
				}
				return textResult("Kept %s", in.Filename), nil
			})
			return res, nil, err
		})
	AddTool(s, &Tool{Name: "multi_input", TaskSupport: "optional",
		Description: "Asks for two inputs at once (a name and a confirmation) and reports both."},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			res, err := req.ContinueAsTask(ctx, func(ctx context.Context, req *Request) (*ToolResult, error) {
				name, e1 := req.Input(ctx, "name", "elicitation/create", elicitInput("What is your name?", "name", "string"))
				ok, e2 := req.Input(ctx, "confirm", "elicitation/create", elicitInput("Proceed?", "confirm", "boolean"))
				if e1 != nil {
					return nil, e1
				}
				if e2 != nil {
					return nil, e2
				}
				return textResult("name: %s; confirm: %s", elicitedField(name, "name"), elicitedField(ok, "confirm")), nil
			})
			return res, nil, err
		})
	AddTool(s, &Tool{Name: "test_tool_with_task", TaskSupport: "required",
		Description: "Asks for the user's name (MRTR), then continues as a task that greets them."},
		func(ctx context.Context, req *Request, _ struct{}) (*ToolResult, any, error) {
			raw, err := req.Input(ctx, "user_name", "elicitation/create", elicitInput("What is your name?", "name", "string"))
			if err != nil {
				return nil, nil, err
			}
			name := elicitedField(raw, "name")
			res, err := req.ContinueAsTask(ctx, func(context.Context, *Request) (*ToolResult, error) {
				return textResult("Hello, %s! (from a task)", name), nil
			})
			return res, nil, err
		})
}
