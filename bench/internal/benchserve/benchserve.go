// Package benchserve is what the bench's peer servers (go-sdk, mcp-go) share:
// a loopback-only listener for one MCP handler at /mcp, shut down on SIGINT
// or SIGTERM, so every peer is started and stopped the same way.
package benchserve

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Main serves h at http://addr/mcp until SIGINT or SIGTERM, then shuts down
// within 5 s. It exits the process with status 2 when addr is not a loopback
// address (the peers have no protection against remote callers) and 1 when
// the listener fails.
func Main(name, addr string, h http.Handler) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: --addr: %v\n", name, err)
		os.Exit(2)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		fmt.Fprintf(os.Stderr, "%s: --addr must be a loopback address\n", name)
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", h)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("%s: %v", name, err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	log.Printf("%s: serving http://%s/mcp", name, ln.Addr())
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("%s: %v", name, err)
	}
}
