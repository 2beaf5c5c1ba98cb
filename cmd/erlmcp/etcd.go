package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/embedetcd"
	"github.com/erlmcp/erlmcp/internal/logging"
)

const etcdSummary = `Run an embedded etcd member (etcd v3.7, the same server as a standalone
etcd). Alone it is a single-member cluster; for a clustered etcd start one per
machine with the same --initial-cluster (name=peer-url,...) and
--cluster-state new, or existing to join a running cluster. etcd's own logs
are limited to errors.`

// cmdEtcd runs an embedded etcd member until ctx ends.
func cmdEtcd(ctx context.Context, args []string, _, stderr io.Writer) int {
	cfg := embedetcd.DefaultConfig("./.erlmcp-etcd")
	logFormat, logLevel := "auto", "info"
	fs := config.NewFlagSet("etcd", etcdSummary, stderr)
	fs.StringVar(&cfg.Name, "name", cfg.Name, "member name, unique in the etcd cluster")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for etcd's data (WAL and snapshots)")
	fs.StringVar(&cfg.ClientURL, "client-url", cfg.ClientURL, "client URL to listen on and advertise (http://host:port)")
	fs.StringVar(&cfg.PeerURL, "peer-url", cfg.PeerURL, "peer URL to listen on and advertise (http://host:port)")
	fs.StringVar(&cfg.InitialCluster, "initial-cluster", cfg.InitialCluster, "name=peer-url,... of every member (empty: this member alone)")
	fs.StringVar(&cfg.ClusterState, "cluster-state", cfg.ClusterState, "new (bootstrap) or existing (join a running cluster)")
	fs.UintVar(&cfg.TickMs, "tick-ms", cfg.TickMs, "heartbeat interval in milliseconds")
	fs.UintVar(&cfg.ElectionMs, "election-ms", cfg.ElectionMs, "election timeout in milliseconds (the shortest lease etcd grants is 1.5x this)")
	fs.StringVar(&logFormat, "log-format", logFormat, "log format: text, json, or auto (text on a terminal, json otherwise)")
	fs.StringVar(&logLevel, "log-level", logLevel, "log level: debug, info, warn, error")
	if err := config.Parse(fs, args, nil); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp etcd: %v\n", err)
		return exitUsage
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "erlmcp etcd: %v\n", err)
		return exitUsage
	}
	log, err := logging.New(stderr, logFormat, logLevel, "etcd", cfg.Name, "")
	if err != nil {
		fmt.Fprintf(stderr, "erlmcp etcd: %v\n", err)
		return exitUsage
	}
	srv, err := embedetcd.Start(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return exitOK
		}
		log.WithError(err).Error("etcd failed to start")
		fmt.Fprintf(stderr, "erlmcp etcd: %v\n", err)
		return exitFailure
	}
	defer srv.Close()
	log.WithField("client_url", cfg.ClientURL).WithField("data_dir", cfg.DataDir).Info("etcd ready")
	select {
	case <-ctx.Done():
		log.Info("stopping etcd")
		return exitOK
	case err := <-srv.Err():
		log.WithError(err).Error("etcd failed")
		fmt.Fprintf(stderr, "erlmcp etcd: %v\n", err)
		return exitFailure
	}
}
