// Command gosdkserver is the baseline for scripts/bench.sh: the official MCP
// Go SDK (github.com/modelcontextprotocol/go-sdk) serving Streamable HTTP from
// one process with stateful, in-memory sessions. It offers the same two tools
// erlmcp's loadtest drives: echo {text} and counter {by} (a per-session
// counter starting at 0, so loadtest's continuity check applies).
//
// It lives in its own module (bench/go.mod) so go-sdk's server never enters
// the product's build graph.
package main

import (
	"context"
	"flag"
	"net/http"
	"strconv"
	"sync"

	"github.com/erlmcp/erlmcp/bench/internal/benchserve"
	"github.com/modelcontextprotocol/go-sdk/mcp"
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

// counters holds one counter per MCP session. Entries of closed sessions are
// kept (a benchmark makes a bounded number of sessions).
type counters struct {
	mu sync.Mutex
	m  map[*mcp.ServerSession]int64
}

func (c *counters) add(ss *mcp.ServerSession, by int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[ss] += by
	return c.m[ss]
}

func newServer() *mcp.Server {
	cs := &counters{m: map[*mcp.ServerSession]int64{}}
	srv := mcp.NewServer(&mcp.Implementation{Name: "gosdk-bench", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Description: "returns text"},
		func(_ context.Context, _ *mcp.CallToolRequest, a echoArgs) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: a.Text}}}, nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "counter", Description: "adds by (default 1) to a per-session counter"},
		func(_ context.Context, req *mcp.CallToolRequest, a counterArgs) (*mcp.CallToolResult, counterOut, error) {
			by := int64(1)
			if a.By != nil {
				by = *a.By
			}
			n := cs.add(req.Session, by)
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: strconv.FormatInt(n, 10)}}},
				counterOut{Value: n}, nil
		})
	return srv
}

func main() {
	addr := flag.String("addr", "127.0.0.1:18080", "listen address (loopback only); MCP endpoint is http://<addr>/mcp")
	jsonResp := flag.Bool("json", true, "answer POSTs with application/json instead of text/event-stream")
	flag.Parse()

	srv := newServer()
	benchserve.Main("gosdkserver", *addr, mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv },
		&mcp.StreamableHTTPOptions{JSONResponse: *jsonResp}))
}
