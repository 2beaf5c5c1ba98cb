// Command mcpgoserver is a second peer for scripts/bench.sh: mark3labs/mcp-go,
// the most used community Go MCP library, serving Streamable HTTP from one
// process with stateful, in-memory sessions. It offers the tools erlmcp's
// loadtest drives: echo {text} and counter {by} (a per-session counter from 0,
// so loadtest's continuity check applies), with the same results as erlmcp's
// demo tools and bench/gosdkserver.
//
// It lives in the bench module so mcp-go never enters the product's build.
package main

import (
	"context"
	"flag"
	"strconv"
	"sync"

	"github.com/erlmcp/erlmcp/bench/internal/benchserve"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

type echoArgs struct {
	Text string `json:"text"`
}

type counterArgs struct {
	By *int64 `json:"by,omitempty"`
}

type counterOut struct {
	Value int64 `json:"value"`
}

// counters holds one counter per MCP session id. Entries of closed sessions
// are kept (a benchmark makes a bounded number of sessions).
type counters struct {
	mu sync.Mutex
	m  map[string]int64
}

func (c *counters) add(session string, by int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[session] += by
	return c.m[session]
}

func newServer() *server.MCPServer {
	cs := &counters{m: map[string]int64{}}
	s := server.NewMCPServer("mcpgo-bench", "1", server.WithToolCapabilities(false))
	s.AddTool(mcp.NewTool("echo", mcp.WithDescription("returns text"), mcp.WithInputSchema[echoArgs]()),
		mcp.NewTypedToolHandler(func(_ context.Context, _ mcp.CallToolRequest, a echoArgs) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(a.Text), nil
		}))
	s.AddTool(mcp.NewTool("counter", mcp.WithDescription("adds by (default 1) to a per-session counter"),
		mcp.WithInputSchema[counterArgs](), mcp.WithOutputSchema[counterOut]()),
		mcp.NewTypedToolHandler(func(ctx context.Context, _ mcp.CallToolRequest, a counterArgs) (*mcp.CallToolResult, error) {
			by := int64(1)
			if a.By != nil {
				by = *a.By
			}
			id := ""
			if sess := server.ClientSessionFromContext(ctx); sess != nil {
				id = sess.SessionID()
			}
			n := cs.add(id, by)
			return mcp.NewToolResultStructured(counterOut{Value: n}, strconv.FormatInt(n, 10)), nil
		}))
	return s
}

func main() {
	addr := flag.String("addr", "127.0.0.1:18080", "listen address (loopback only); MCP endpoint is http://<addr>/mcp")
	flag.Parse()
	benchserve.Main("mcpgoserver", *addr, server.NewStreamableHTTPServer(newServer(), server.WithStateful(true)))
}
