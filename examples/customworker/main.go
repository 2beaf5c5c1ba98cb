// Command customworker is an erlmcp worker that serves its own tool: it
// joins the cluster in etcd like `erlmcp worker` and keeps its sessions in
// the session store, so any worker serves any session.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/erlmcp/erlmcp/worker"
)

type greetIn struct {
	Name string `json:"name" jsonschema:"who to greet"`
}

type greetOut struct {
	Greeting string `json:"greeting"`
}

func main() {
	cfg := worker.DefaultConfig()
	flag.StringVar(&cfg.Common.EtcdEndpoints, "etcd", cfg.Common.EtcdEndpoints, "etcd endpoints")
	flag.StringVar(&cfg.Listen, "listen", cfg.Listen, "host:port to serve /mcp on")
	flag.Parse()

	srv := worker.NewServer()
	worker.AddTool(srv, &worker.Tool{Name: "greet", Description: "Greets someone."},
		func(ctx context.Context, req *worker.Request, in greetIn) (*worker.ToolResult, greetOut, error) {
			_ = req.Log(ctx, "info", "greet", "greeting "+in.Name)
			return nil, greetOut{Greeting: fmt.Sprintf("Hello, %s!", in.Name)}, nil
		})

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := worker.Run(ctx, cfg, logrus.NewEntry(logrus.StandardLogger()), worker.WithServer(srv)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
