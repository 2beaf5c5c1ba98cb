// Package front is the small etcd-aware HTTP front for one machine and
// small installs: it discovers workers from etcd membership, spreads
// requests over the non-draining ones by health-aware round robin (no
// stickiness: any worker serves any session), streams responses (SSE)
// unbuffered, and resends a request to another worker only when the first
// provably did not process it (the connection could not be made, or was
// reset before any byte of the answer) or it is read-only (proxy.go). It
// finds dead and paused workers by probes that slow or failed requests
// trigger (health.go).
package front

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/debugpprof"
	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/internal/etcdwatch"
	"github.com/erlmcp/erlmcp/internal/gcfloor"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/peerconn"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultMaxBodyBytes is the largest request body the front buffers for a
// possible retry; it matches the worker's request limit (4 MiB).
const DefaultMaxBodyBytes = 4 << 20

// Config of a front.
type Config struct {
	Common config.Common
	// Listen is the HTTP listen address (host:port; port 0 picks one).
	Listen string
	// Advertise is the address written to membership; "" means the
	// address actually listened on.
	Advertise string
	// Version is written to membership.
	Version string
	// MaxBodyBytes bounds the buffered request body; larger → 413.
	MaxBodyBytes int64
	// DialTimeout bounds connecting to a worker.
	DialTimeout time.Duration
	// Cooldown is how long a worker that refused a connection (or failed a
	// probe) is skipped while others are available.
	Cooldown time.Duration
	// ProbeInterval is the period of active GET /healthz probes of each
	// worker; 0 disables the periodic probes (suspicion from requests
	// still triggers confirmation probes).
	ProbeInterval time.Duration
	// ProbeTimeout bounds one health probe; a probe that takes longer
	// failed. A paused (SIGSTOPped) worker is found by these timeouts.
	ProbeTimeout time.Duration
	// ProbeFailAfter is how many consecutive failed probes take a worker
	// out of rotation and cancel its in-flight requests (a refused
	// connection counts as all of them): more than one, so one slow
	// answer on a busy machine does not abort a live worker's requests.
	ProbeFailAfter int
	// SuspectAfter is how long a request may wait for its response
	// headers before its worker is probed (0: only the periodic probes and
	// failed requests raise suspicion). It only starts probes, so it may be
	// well below the slowest legitimate answer.
	SuspectAfter time.Duration
	// WorkerKeepAlive reuses connections to workers; false opens one per
	// request.
	WorkerKeepAlive bool
	// MaxIdlePerWorker bounds the idle keep-alive connections kept per
	// worker.
	MaxIdlePerWorker int
	// Pprof serves net/http/pprof under /debug/pprof/ on the front's
	// port, to profile CPU per request under load. Off by default: a
	// profile exposes internals and costs CPU while it is taken.
	Pprof bool
	// ShutdownTimeout bounds the graceful HTTP shutdown when ctx ends.
	ShutdownTimeout time.Duration
	// VanishedGrace is how long the front keeps routing to a worker whose
	// membership key vanished without the worker draining (its lease was
	// revoked under it, see vanishGrace), while it answers; 0 drops such
	// a worker at once.
	VanishedGrace time.Duration
	// GCPercent is the Go GC target of the front process (as GOGC),
	// applied by the `erlmcp front` command, not by Start (it is
	// process-wide). The front's live heap is a few MiB while each request
	// allocates a few KiB of short-lived garbage, so at the runtime's
	// default of 100 it collects several times a second; 400 trades some
	// MiB of heap for a fraction of that GC CPU.
	GCPercent int
	// GCMinHeapMiB is the floor of the front process's GC heap goal in
	// MiB (internal/gcfloor), applied with GCPercent by the command. Off
	// (0) by default: a 128 MiB floor on the front made no measurable
	// difference to the HA path beside GOGC 400 (docs/benchmarks.md); the
	// flag is there for a front whose live heap is larger.
	GCMinHeapMiB int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	c := config.DefaultCommon()
	return Config{
		Common:           c,
		Listen:           "127.0.0.1:8080",
		MaxBodyBytes:     DefaultMaxBodyBytes,
		DialTimeout:      time.Second,
		Cooldown:         2 * time.Second,
		ProbeInterval:    time.Second,
		ProbeTimeout:     200 * time.Millisecond,
		ProbeFailAfter:   2,
		SuspectAfter:     150 * time.Millisecond,
		WorkerKeepAlive:  true,
		MaxIdlePerWorker: 256,
		ShutdownTimeout:  5 * time.Second,
		VanishedGrace:    c.LeaseTTL,
		GCPercent:        400,
		GCMinHeapMiB:     DefaultGCMinHeapMiB,
	}
}

// DefaultGCMinHeapMiB is the default Config.GCMinHeapMiB: no floor.
const DefaultGCMinHeapMiB = 0

// Validate reports the first setting that cannot work.
func (c Config) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("--listen %q: want host:port: %v", c.Listen, err)
	}
	if _, err := gcfloor.FromMiB(c.GCPercent, c.GCMinHeapMiB); err != nil {
		return err
	}
	switch {
	case c.MaxBodyBytes <= 0:
		return fmt.Errorf("--max-body-bytes %d: must be positive", c.MaxBodyBytes)
	case c.DialTimeout <= 0:
		return fmt.Errorf("--dial-timeout %s: must be positive", c.DialTimeout)
	case c.Cooldown < 0:
		return fmt.Errorf("--cooldown %s: must not be negative", c.Cooldown)
	case c.ProbeInterval < 0:
		return fmt.Errorf("--probe-interval %s: must not be negative (0 disables probing)", c.ProbeInterval)
	case c.ProbeTimeout <= 0:
		return fmt.Errorf("--probe-timeout %s: must be positive", c.ProbeTimeout)
	case c.ProbeFailAfter < 1:
		return fmt.Errorf("--probe-fail-after %d: must be at least 1", c.ProbeFailAfter)
	case c.SuspectAfter < 0:
		return fmt.Errorf("--suspect-after %s: must not be negative (0 disables it)", c.SuspectAfter)
	case c.MaxIdlePerWorker < 0:
		return fmt.Errorf("--max-idle-per-worker %d: must not be negative", c.MaxIdlePerWorker)
	case c.VanishedGrace < 0:
		return fmt.Errorf("--vanished-grace %s: must not be negative (0 drops a vanished worker at once)", c.VanishedGrace)
	}
	return nil
}

// Front is a running front.
type Front struct {
	cfg    Config
	log    *logrus.Entry
	pool   *pool
	det    *detector
	ln     net.Listener
	srv    *http.Server
	reg    *membership.Registration
	cancel context.CancelFunc
	done   chan struct{} // background loops finished
	served chan error

	// membersMu guards members, the last worker membership snapshot,
	// and regrace, the timer that applies it again when a vanished
	// worker's grace ends (setWorkers).
	membersMu sync.Mutex
	members   []membership.Member
	vanish    *vanishGrace
	regrace   *time.Timer
}

// Run connects to etcd, serves until ctx ends, then shuts down.
func Run(ctx context.Context, cfg Config, log *logrus.Entry) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cli, err := etcdclient.New(ctx, etcdclient.DefaultConfig(cfg.Common.Endpoints()...).WithLogger(quietZap()))
	if err != nil {
		return err
	}
	defer cli.Close()
	f, err := Start(ctx, cfg, cli, log)
	if err != nil {
		return err
	}
	log.WithField("listen", f.Addr()).Info("front serving")
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-f.served:
	}
	log.Info("front stopping")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	closeErr := f.Close(sctx)
	if serveErr != nil {
		return fmt.Errorf("front: serve: %w", serveErr)
	}
	return closeErr
}

// Start listens, starts watching worker membership and registers the front
// in etcd. It returns once the front serves (possibly before the first
// worker list arrives).
func Start(ctx context.Context, cfg Config, cli *clientv3.Client, log *logrus.Entry) (*Front, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("front: listen on %s: %w", cfg.Listen, err)
	}
	bctx, cancel := context.WithCancel(context.Background())
	f := &Front{
		cfg:    cfg,
		log:    log,
		pool:   newPool(cfg.Cooldown),
		vanish: newVanishGrace(cfg.VanishedGrace, time.Now),
		ln:     ln,
		cancel: cancel,
		done:   make(chan struct{}),
		served: make(chan error, 1),
	}
	f.det = newDetector(bctx, f.pool, cfg, log)
	f.srv = &http.Server{
		Handler:           f.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext:       peerconn.ConnContext, // see proxy.ServeHTTP
		ErrorLog:          nil,
	}
	go func() {
		if err := f.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			f.served <- err
		}
	}()

	loops := 2
	finished := make(chan struct{}, 3)
	go func() {
		defer func() { finished <- struct{}{} }()
		_ = etcdwatch.Run(bctx, cli, membership.RolePrefix(cfg.Common.Prefix, membership.RoleWorker), etcdwatch.Options{
			OnError: func(err error) { log.WithError(err).Warn("watching worker membership") },
		}, func(s etcdwatch.Snapshot) {
			f.setWorkers(membership.FromKVs(s.KVs))
		})
	}()
	go func() {
		defer func() { finished <- struct{}{} }()
		f.watchTraffic(bctx, cli)
	}()
	if cfg.ProbeInterval > 0 {
		loops++
		go func() {
			defer func() { finished <- struct{}{} }()
			f.det.probeLoop(cfg.ProbeInterval)
		}()
	}
	go func() {
		for range loops {
			<-finished
		}
		close(f.done)
	}()

	adv := cfg.Advertise
	if adv == "" {
		adv = ln.Addr().String()
	}
	m := membership.Member{
		Role:      membership.RoleFront,
		ID:        cfg.Common.ID,
		Addr:      adv,
		Region:    cfg.Common.Region,
		Zone:      cfg.Common.Zone,
		Version:   cfg.Version,
		PID:       os.Getpid(),
		StartedAt: time.Now().UTC(),
	}
	reg, err := membership.Register(ctx, cli, cfg.Common.Prefix, m, cfg.Common.LeaseTTL, log)
	if err != nil {
		sctx, c := context.WithTimeout(context.Background(), time.Second)
		defer c()
		_ = f.Close(sctx)
		return nil, err
	}
	f.reg = reg
	return f, nil
}

// Addr is the address the front listens on.
func (f *Front) Addr() string { return f.ln.Addr().String() }

// Workers returns the ids of the workers requests may go to, in round-robin
// order.
func (f *Front) Workers() []string {
	bs := f.pool.list()
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.id
	}
	return out
}

// setWorkers routes to the workers of membership snapshot ms and to those
// vanishGrace still keeps.
func (f *Front) setWorkers(ms []membership.Member) {
	f.membersMu.Lock()
	defer f.membersMu.Unlock()
	f.members = ms
	f.applyWorkersLocked()
}

// applyWorkersLocked sets the pool from the last snapshot; while a
// vanished worker is kept, it runs again when that worker's grace ends,
// so the worker leaves then. Callers hold membersMu.
func (f *Front) applyWorkersLocked() {
	out, next, vanished := f.vanish.apply(f.members)
	for _, id := range vanished {
		f.log.WithField("worker", id).Warn("worker left membership without draining (its lease was lost); routing to it while it answers, for --vanished-grace")
	}
	f.pool.set(out)
	if f.regrace != nil {
		f.regrace.Stop()
		f.regrace = nil
	}
	if next > 0 {
		f.regrace = time.AfterFunc(next, func() {
			f.membersMu.Lock()
			defer f.membersMu.Unlock()
			f.applyWorkersLocked()
		})
	}
}

// Close deregisters, stops serving (in-flight requests get until ctx ends)
// and stops the background loops.
func (f *Front) Close(ctx context.Context) error {
	f.membersMu.Lock()
	if f.regrace != nil {
		f.regrace.Stop()
	}
	f.membersMu.Unlock()
	var errs []error
	if f.reg != nil {
		if err := f.reg.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("deregister front: %w", err))
		}
	}
	if err := f.srv.Shutdown(ctx); err != nil {
		// Long-lived SSE streams: cut them.
		_ = f.srv.Close()
	}
	f.cancel()
	<-f.done
	return errors.Join(errs...)
}

func (f *Front) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "workers": len(f.pool.list()), "traffic": f.pool.currentTraffic()})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		n := len(f.pool.list())
		if n == 0 {
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "no worker available", "workers": 0})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "workers": n})
	})
	if f.cfg.Pprof {
		debugpprof.Register(mux)
	}
	mux.Handle("/", newProxy(f.pool, f.det, f.cfg, f.log))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// workerURL turns a membership Addr (host:port or a URL) into a base URL.
func workerURL(addr string) string {
	if strings.Contains(addr, "://") {
		return strings.TrimSuffix(addr, "/")
	}
	return "http://" + addr
}
