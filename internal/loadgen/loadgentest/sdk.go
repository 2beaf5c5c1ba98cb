// Package loadgentest serves MCP endpoints for the load generator's tests:
// a real server built on the official go-sdk, and a small hand-written one
// that misbehaves on purpose (a counter that goes back, skips or resets, a
// session answered 404). It is imported only by tests.
package loadgentest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// SDKOptions shapes the go-sdk server.
type SDKOptions struct {
	// Stateless serves without sessions (and so the 2026-07-28 protocol).
	Stateless bool
	// JSONResponse answers with application/json instead of streams.
	JSONResponse bool
	// NoCounter leaves out the counter tool.
	NoCounter bool
	// SlowSteps and SlowStep shape the "slow" tool: SlowSteps progress
	// notifications, SlowStep apart (simulated work).
	SlowSteps int
	SlowStep  time.Duration
}

// NewSDKServer starts an httptest server whose /mcp endpoint is a go-sdk
// StreamableHTTPHandler serving echo, counter (a counter per session,
// answering structuredContent {"value": n} and text n) and slow (progress
// notifications, then "done"). Streams keep their events in a memory event
// store, so they can be resumed with Last-Event-ID. The server closes when
// the test ends.
func NewSDKServer(tb interface {
	Helper()
	Cleanup(func())
}, o SDKOptions) *httptest.Server {
	tb.Helper()
	if o.SlowSteps == 0 {
		o.SlowSteps = 3
	}
	if o.SlowStep == 0 {
		o.SlowStep = 5 * time.Millisecond
	}
	server := mcp.NewServer(&mcp.Implementation{Name: "loadgentest", Version: "1"}, nil)

	type echoIn struct {
		Text string `json:"text"`
	}
	mcp.AddTool(server, &mcp.Tool{Name: "echo", Description: "Returns the text it is given."},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: in.Text}}}, nil, nil
		})

	if !o.NoCounter {
		var mu sync.Mutex
		counters := map[string]int64{}
		type counterIn struct {
			By int64 `json:"by"`
		}
		type counterOut struct {
			Value int64 `json:"value"`
		}
		mcp.AddTool(server, &mcp.Tool{Name: "counter", Description: "Adds by to this session's counter and returns it."},
			func(_ context.Context, req *mcp.CallToolRequest, in counterIn) (*mcp.CallToolResult, counterOut, error) {
				mu.Lock()
				counters[req.Session.ID()] += in.By
				v := counters[req.Session.ID()]
				mu.Unlock()
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: strconv.FormatInt(v, 10)}}}, counterOut{Value: v}, nil
			})
	}

	mcp.AddTool(server, &mcp.Tool{Name: "slow", Description: "Reports progress a few times, then answers."},
		func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
			tok := req.Params.GetProgressToken()
			for i := 1; i <= o.SlowSteps; i++ {
				if tok != nil {
					_ = req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: float64(i), Total: float64(o.SlowSteps)})
				}
				t := time.NewTimer(o.SlowStep)
				select {
				case <-ctx.Done():
					t.Stop()
					return nil, nil, ctx.Err()
				case <-t.C:
				}
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "done"}}}, nil, nil
		})

	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, &mcp.StreamableHTTPOptions{
		Stateless:    o.Stateless,
		JSONResponse: o.JSONResponse,
		EventStore:   mcp.NewMemoryEventStore(nil),
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", h)
	srv := httptest.NewServer(mux)
	tb.Cleanup(srv.Close)
	return srv
}
