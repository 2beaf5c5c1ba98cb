package sessionstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// readyzEtcdTimeout bounds /readyz's etcd round trip.
const readyzEtcdTimeout = time.Second

// startHTTP serves /metrics, /healthz and /readyz on cfg.HTTPListen (if
// set) and returns the address to register as the member's http_addr.
func (n *Node) startHTTP() (string, error) {
	if n.cfg.HTTPListen == "" {
		return "", nil
	}
	ln, err := net.Listen("tcp", n.cfg.HTTPListen)
	if err != nil {
		return "", fmt.Errorf("listen on %s for HTTP (metrics, health): %w (choose another --http-listen)", n.cfg.HTTPListen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{Registry: n.metrics.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		// The process is up and its HTTP server answers; whether it serves
		// sessions is /readyz.
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if problems := n.readiness(r.Context()); len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %s\n", strings.Join(problems, "; "))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	n.httpLn = ln
	n.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	n.httpDone = make(chan struct{})
	go func() {
		defer close(n.httpDone)
		if err := n.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.WithError(err).Error("HTTP server stopped")
		}
	}()
	bound := ln.Addr().String()
	host, port, _ := net.SplitHostPort(bound)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		// Reachable where the gRPC address is.
		ahost, _, err := net.SplitHostPort(n.advertise)
		if err != nil {
			return "", fmt.Errorf("advertise address %q: %w", n.advertise, err)
		}
		return net.JoinHostPort(ahost, port), nil
	}
	return bound, nil
}

// stopHTTP stops the HTTP server (bounded by ctx).
func (n *Node) stopHTTP(ctx context.Context) {
	if n.httpSrv == nil {
		return
	}
	if err := n.httpSrv.Shutdown(ctx); err != nil {
		_ = n.httpSrv.Close()
	}
	<-n.httpDone
}

// HTTPAddr is the address the HTTP listener (/metrics, /healthz, /readyz)
// is bound to, or "" without --http-listen.
func (n *Node) HTTPAddr() string {
	if n.httpLn == nil {
		return ""
	}
	return n.httpLn.Addr().String()
}

// readiness lists why the node should not get traffic now (empty: ready):
// etcd must answer, the membership lease must be held, storage must accept
// writes, and every shard the map gives this node must have a local
// replica that knows its group's leader.
func (n *Node) readiness(ctx context.Context) []string {
	var problems []string
	ectx, cancel := context.WithTimeout(ctx, readyzEtcdTimeout)
	_, err := n.etcd.Get(ectx, clusterstate.ConfigKey(n.cfg.Common.Prefix), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		problems = append(problems, fmt.Sprintf("etcd at %s does not answer: %v", n.cfg.Common.EtcdEndpoints, err))
	}
	if !n.leaseHeld() {
		problems = append(problems, "membership lease not held (keepalives not acknowledged)")
	}
	if err := n.storageErr(); err != nil {
		problems = append(problems, fmt.Sprintf("storage refuses writes: %v", err))
	}
	select {
	case <-n.ready:
	default:
		return append(problems, "cluster config and shard map not read yet")
	}
	r := n.route.Load()
	if r == nil || n.raft == nil {
		return append(problems, "no shard map")
	}
	var missing, leaderless []string
	for _, sh := range r.shards {
		if !sh.Hosts(n.ID()) {
			continue
		}
		lead, err := n.raft.mr.Leader(uint32(sh.Shard))
		switch {
		case err != nil:
			missing = append(missing, fmt.Sprint(sh.Shard))
		case lead == 0:
			leaderless = append(leaderless, fmt.Sprint(sh.Shard))
		}
	}
	if len(missing) > 0 {
		problems = append(problems, "shards assigned but not hosted yet: "+strings.Join(missing, ","))
	}
	if len(leaderless) > 0 {
		problems = append(problems, "hosted shards without a known Raft leader: "+strings.Join(leaderless, ","))
	}
	return problems
}
