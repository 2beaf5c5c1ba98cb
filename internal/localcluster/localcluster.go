// Package localcluster is `erlmcp up`: a whole erlmcp cluster on one
// machine. It runs etcd embedded in its own process and the control planes,
// store nodes, workers and front as supervised child processes of the same
// binary, all on loopback, with every piece of state under one data
// directory so that running it again restarts the same cluster.
package localcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/supervisor"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Regions the children are spread over, round robin per role; each
// process's zone is its region with "a" appended.
var Regions = []string{"us-east-1", "eu-west-1", "ap-southeast-1"}

// Prefix is the etcd key prefix of the local cluster.
const Prefix = "/erlmcp/"

// Config of a local cluster.
type Config struct {
	// DataDir holds everything: LOCK, admin.token, cluster.json, etcd/,
	// store-N/ and logs/.
	DataDir string
	// Listen is the front's listen address (the MCP endpoint).
	Listen string
	// Port bases: control plane i (from 0) serves its admin API on
	// AdminPortBase+i, worker i on WorkerPortBase+i, store i on
	// StorePortBase+i; all on 127.0.0.1.
	AdminPortBase  int
	WorkerPortBase int
	StorePortBase  int
	EtcdClientPort int
	EtcdPeerPort   int
	Workers        int
	Stores         int
	ControlPlanes  int
	LogLevel       string
	// Fronts is the number of fronts; front i >= 2 listens on
	// 127.0.0.1:FrontPortBase+i-2 (topology.go).
	Fronts        int
	FrontPortBase int
	// EtcdMembers is 1 (etcd inside up) or 3 or 5 supervised `erlmcp etcd`
	// member processes (topology.go).
	EtcdMembers int
	// StoreFaultProxies puts a partition-injecting TCP proxy in front of
	// every store (partition.go), on StoreProxyPortBase+i.
	StoreFaultProxies  bool
	StoreProxyPortBase int

	// StoreHTTPPortBase: store i serves /metrics, /healthz and /readyz on
	// 127.0.0.1:StoreHTTPPortBase+i; 0 means right after the stores' gRPC
	// ports (StorePortBase+Stores+i).
	StoreHTTPPortBase int

	// WorkerAuthTokens and WorkerAuthPrincipalHeader are every worker's
	// --auth-tokens and --auth-principal-header ("" = not passed).
	WorkerAuthTokens          string
	WorkerAuthPrincipalHeader string

	// LeaseTTL is every child's membership lease: a dead process leaves
	// membership within about LeaseTTL + 0.5 s.
	LeaseTTL time.Duration
	// ReadyTimeout bounds the wait for the cluster to be ready.
	ReadyTimeout time.Duration
	// StopTimeout bounds how long children get to exit on SIGTERM before
	// they are killed.
	StopTimeout time.Duration
	// Executable is the erlmcp binary the children run ("" = this one).
	Executable string
	// EtcdTickMs and EtcdElectionMs are the embedded etcd's timing.
	EtcdTickMs     uint
	EtcdElectionMs uint
}

// DefaultConfig returns the defaults of `erlmcp up`.
func DefaultConfig() Config {
	return Config{
		DataDir:        "./.erlmcp",
		Listen:         "127.0.0.1:8080",
		AdminPortBase:  7070,
		WorkerPortBase: 8081,
		StorePortBase:  9091,
		EtcdClientPort: 2379,
		EtcdPeerPort:   2380,
		Workers:        3,
		Stores:         3,
		ControlPlanes:  2,
		Fronts:         1,
		FrontPortBase:  8090,
		EtcdMembers:    1,
		LogLevel:       "info",
		LeaseTTL:       5 * time.Second,
		ReadyTimeout:   60 * time.Second,
		StopTimeout:    7 * time.Second,
		EtcdTickMs:     100,
		EtcdElectionMs: 1000,
	}
}

// Validate reports the first setting that cannot work.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("--data-dir is empty")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("--listen %q: want host:port: %v", c.Listen, err)
	}
	switch {
	case c.Workers < 1:
		return fmt.Errorf("--workers %d: need at least 1", c.Workers)
	case c.Stores < 1:
		return fmt.Errorf("--stores %d: need at least 1", c.Stores)
	case c.ControlPlanes < 1:
		return fmt.Errorf("--controlplanes %d: need at least 1", c.ControlPlanes)
	case c.LeaseTTL < 2*time.Second:
		return fmt.Errorf("--lease-ttl %s: must be at least 2s (etcd grants no shorter lease with default timing)", c.LeaseTTL)
	case c.ReadyTimeout <= 0:
		return fmt.Errorf("--ready-timeout %s: must be positive", c.ReadyTimeout)
	case c.StopTimeout <= 0:
		return fmt.Errorf("--stop-timeout %s: must be positive", c.StopTimeout)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "warning", "error":
	default:
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	if err := c.validateTopology(); err != nil {
		return err
	}
	_, err := c.Plan()
	return err
}

// Child is one process of the plan.
type Child struct {
	Name string
	Role string
	// Addr is its main listen address (admin API for control planes).
	Addr string
	Args []string
}

// PortUse is a port the cluster will listen on and what for.
type PortUse struct {
	Addr    string
	Purpose string
}

// Plan is what Run will start, derived from a Config.
type Plan struct {
	DataDir       string // absolute
	EtcdClientURL string
	// EtcdEndpoints is each etcd member's client URL (EtcdClientURL joins
	// them with commas); FrontURLs every front's MCP endpoint, MCPURL first.
	EtcdEndpoints []string
	FrontURLs     []string
	StoreProxies  []storeProxy // with --store-fault-proxies
	EtcdPeerURL   string
	MCPURL        string
	FrontHealth   string // URL of the front's /healthz
	AdminURLs     []string
	StoreHTTPURLs []string // each store's /metrics, /healthz, /readyz
	Children      []Child
	Ports         []PortUse
}

// Paths inside the data dir.
func (p Plan) path(elem ...string) string {
	return filepath.Join(append([]string{p.DataDir}, elem...)...)
}

// TokenPath is the admin token file.
func (p Plan) TokenPath() string { return p.path("admin.token") }

// ClusterFilePath is cluster.json.
func (p Plan) ClusterFilePath() string { return p.path("cluster.json") }

// LogDir holds one log file per child.
func (p Plan) LogDir() string { return p.path("logs") }

// Plan computes the children, their flags and the ports they use.
func (c Config) Plan() (Plan, error) {
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return Plan{}, fmt.Errorf("--data-dir %q: %v", c.DataDir, err)
	}
	p := Plan{DataDir: abs}
	seen := map[int]string{}
	usePort := func(port int, purpose, flagName string) (string, error) {
		if port < 1 || port > 65535 {
			return "", fmt.Errorf("port %d for %s is out of range 1..65535 (see %s)", port, purpose, flagName)
		}
		if other, dup := seen[port]; dup {
			return "", fmt.Errorf("port %d would be used both for %s and for %s; change the port flags so the ranges do not overlap", port, other, purpose)
		}
		seen[port] = purpose
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p.Ports = append(p.Ports, PortUse{Addr: addr, Purpose: purpose})
		return addr, nil
	}
	clientAddr, err := usePort(c.EtcdClientPort, "etcd client URL", "--etcd-client-port")
	if err != nil {
		return Plan{}, err
	}
	peerAddr, err := usePort(c.EtcdPeerPort, "etcd peer URL", "--etcd-peer-port")
	if err != nil {
		return Plan{}, err
	}
	p.EtcdClientURL, p.EtcdPeerURL = "http://"+clientAddr, "http://"+peerAddr
	if err := c.planEtcdMembers(&p, usePort); err != nil {
		return Plan{}, err
	}

	// The front may listen on any host; it is reached on loopback.
	fhost, fportStr, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return Plan{}, fmt.Errorf("--listen %q: want host:port: %v", c.Listen, err)
	}
	fport, err := strconv.Atoi(fportStr)
	if err != nil || fport < 1 || fport > 65535 {
		return Plan{}, fmt.Errorf("--listen %q: port must be 1..65535", c.Listen)
	}
	if other, dup := seen[fport]; dup {
		return Plan{}, fmt.Errorf("port %d would be used both for %s and for the front (--listen)", fport, other)
	}
	seen[fport] = "the front (MCP endpoint, --listen)"
	p.Ports = append(p.Ports, PortUse{Addr: c.Listen, Purpose: "the front (MCP endpoint, --listen)"})
	reach := fhost
	if reach == "" || reach == "0.0.0.0" || reach == "::" {
		reach = "127.0.0.1"
	}
	frontURL := "http://" + net.JoinHostPort(reach, fportStr)
	p.MCPURL, p.FrontHealth = frontURL+"/mcp", frontURL+"/healthz"

	common := func(id string, i int) []string {
		region := Regions[i%len(Regions)]
		return []string{
			"--etcd-endpoints=" + p.EtcdClientURL,
			"--etcd-prefix=" + Prefix,
			"--id=" + id,
			"--region=" + region,
			"--zone=" + region + "a",
			"--lease-ttl=" + c.LeaseTTL.String(),
			"--log-level=" + c.LogLevel,
			"--log-format=json",
		}
	}
	for i := range c.ControlPlanes {
		id := fmt.Sprintf("cp-%d", i+1)
		addr, err := usePort(c.AdminPortBase+i, id+" admin API", "--admin-port-base")
		if err != nil {
			return Plan{}, err
		}
		p.AdminURLs = append(p.AdminURLs, "http://"+addr)
		args := append([]string{"controlplane"}, common(id, i)...)
		// Store nodes run every shard as a Raft group: the control plane
		// places min(3, stores) replicas per shard.
		args = append(args, "--admin-listen="+addr, "--admin-token-file="+p.TokenPath(),
			"--replication-mode=raft", fmt.Sprintf("--replication-factor=%d", min(3, c.Stores)))
		if p.actuatorUsable() {
			args = append(args, "--actuator=local:"+p.ActuatorSocketPath())
		}
		p.Children = append(p.Children, Child{Name: id, Role: membership.RoleControlPlane, Addr: addr, Args: args})
	}
	for i := range c.Stores {
		id := fmt.Sprintf("store-%d", i+1)
		addr, err := usePort(c.StorePortBase+i, id+" gRPC", "--store-port-base")
		if err != nil {
			return Plan{}, err
		}
		args := append([]string{"store"}, common(id, i)...)
		httpBase := c.StoreHTTPPortBase
		if httpBase == 0 {
			httpBase = c.StorePortBase + c.Stores
		}
		httpAddr, err := usePort(httpBase+i, id+" HTTP (metrics, health)", "--store-http-port-base")
		if err != nil {
			return Plan{}, err
		}
		p.StoreHTTPURLs = append(p.StoreHTTPURLs, "http://"+httpAddr)
		args = append(args, "--listen="+addr, "--http-listen="+httpAddr, "--data-dir="+p.path(id))
		if args, err = c.planStoreProxy(&p, usePort, i, id, addr, args); err != nil {
			return Plan{}, err
		}
		p.Children = append(p.Children, Child{Name: id, Role: membership.RoleStore, Addr: addr, Args: args})
	}
	for i := range c.Workers {
		id := fmt.Sprintf("worker-%d", i+1)
		addr, err := usePort(c.WorkerPortBase+i, id+" MCP listener", "--worker-port-base")
		if err != nil {
			return Plan{}, err
		}
		args := append([]string{"worker"}, common(id, i)...)
		args = append(args, "--listen="+addr)
		if c.WorkerAuthTokens != "" {
			args = append(args, "--auth-tokens="+c.WorkerAuthTokens)
		}
		if c.WorkerAuthPrincipalHeader != "" {
			args = append(args, "--auth-principal-header="+c.WorkerAuthPrincipalHeader)
		}
		p.Children = append(p.Children, Child{Name: id, Role: membership.RoleWorker, Addr: addr, Args: args})
	}
	args := append([]string{"front"}, common("front-1", 0)...)
	args = append(args, "--listen="+c.Listen)
	p.Children = append(p.Children, Child{Name: "front-1", Role: membership.RoleFront, Addr: c.Listen, Args: args})
	if err := c.planExtraFronts(&p, usePort, common); err != nil {
		return Plan{}, err
	}
	return p, nil
}

// CheckPorts tries to listen on each port and reports the first that is
// taken, naming what it was for.
func CheckPorts(ports []PortUse) error {
	for _, pu := range ports {
		l, err := net.Listen("tcp", pu.Addr)
		if err != nil {
			return fmt.Errorf("port %s (for %s) is not free: %v; stop what uses it or choose other ports (see --help)", pu.Addr, pu.Purpose, unwrapSyscall(err))
		}
		l.Close()
	}
	return nil
}

func unwrapSyscall(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	return err
}

// PrepareDataDir creates dir (0700) if needed and checks it is writable.
func PrepareDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data dir %s cannot be created: %v", dir, unwrapPath(err))
	}
	f, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		return fmt.Errorf("data dir %s is not writable: %v", dir, unwrapPath(err))
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("data dir %s: cannot remove test file: %v", dir, unwrapPath(err))
	}
	return nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Run starts the local cluster, prints its endpoints to out, waits for it
// to be ready, and runs it until ctx ends; then it stops everything. An
// error means nothing is left running.
func Run(ctx context.Context, cfg Config, out io.Writer, log *logrus.Entry) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	plan, err := cfg.Plan()
	if err != nil {
		return err
	}
	exe := cfg.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("cannot find the erlmcp executable to run children: %v", err)
		}
	}

	// Undo in reverse order whatever was started, on every path out.
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()

	if err := PrepareDataDir(plan.DataDir); err != nil {
		return err
	}
	lock, err := LockDataDir(plan.DataDir)
	if err != nil {
		return err
	}
	undo = append(undo, lock.Release)
	if err := CheckPorts(plan.Ports); err != nil {
		return err
	}
	if err := os.MkdirAll(plan.LogDir(), 0o700); err != nil {
		return fmt.Errorf("data dir %s: cannot create logs directory: %v", plan.DataDir, unwrapPath(err))
	}
	token, err := LoadOrCreateToken(plan.TokenPath())
	if err != nil {
		return err
	}

	etcdErr, stopEtcd, err := startEtcd(ctx, cfg, plan, out, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("embedded etcd: %w", err)
	}
	undo = append(undo, stopEtcd)

	sup := supervisor.New(log.WithField("component", "supervisor"), supervisor.Options{StopTimeout: cfg.StopTimeout})
	undo = append(undo, func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.StopTimeout+time.Second)
		defer cancel()
		fmt.Fprintln(out, "erlmcp up: stopping children")
		if err := sup.Stop(sctx); err != nil {
			log.WithError(err).Warn("stopping children")
		}
	})
	if err := startStoreProxies(ctx, plan, sup.PID, log); err != nil {
		return err
	}
	env := childEnv(os.Environ())
	act, err := serveActuator(plan, cfg, exe, env, token, sup, log)
	if err != nil {
		return err
	}
	if act != nil {
		undo = append(undo, act.Close)
	}
	for _, c := range plan.Children {
		spec := supervisor.Spec{
			Name:    c.Name,
			Path:    exe,
			Args:    c.Args,
			Env:     env,
			LogPath: filepath.Join(plan.LogDir(), c.Name+".log"),
		}
		if act != nil && c.Role == membership.RoleWorker {
			// A deploy before a restart of up left its release.
			spec = act.Apply(membership.RoleWorker, spec)
		}
		if err := sup.Start(spec); err != nil {
			return err
		}
	}

	if err := WriteClusterFile(plan.ClusterFilePath(), ClusterFile{
		MCPURL:        plan.MCPURL,
		AdminURLs:     plan.AdminURLs,
		EtcdEndpoints: plan.EtcdEndpoints,
		FrontURLs:     plan.FrontURLs,
		AdminToken:    token,
	}); err != nil {
		return err
	}

	fmt.Fprintf(out, `erlmcp up: cluster starting (%d control planes, %d store nodes, %d workers, %d fronts)
  MCP endpoint:  %s
  admin API:     %s  (bearer token in %s)
  store metrics: %s  (/metrics, /healthz, /readyz)
  etcd:          %s  (key prefix %s)
  data dir:      %s  (logs in %s, endpoints in %s)
  membership lease TTL: %s
  stop:          Ctrl-C or kill -TERM %d; running erlmcp up again on this data dir restarts the same cluster
`, cfg.ControlPlanes, cfg.Stores, cfg.Workers, cfg.Fronts, strings.Join(plan.FrontURLs, " "), strings.Join(plan.AdminURLs, " "), plan.TokenPath(), strings.Join(plan.StoreHTTPURLs, " "),
		plan.EtcdClientURL, Prefix, plan.DataDir, plan.LogDir(), plan.ClusterFilePath(), cfg.LeaseTTL, os.Getpid())

	cli, err := etcdclient.New(ctx, etcdclient.DefaultConfig(plan.EtcdEndpoints...))
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	undo = append(undo, func() { _ = cli.Close() })

	ready, err := waitReady(ctx, plan, cfg, cli, sup, etcdErr, out)
	if err != nil {
		return err
	}
	if !ready { // ctx ended while waiting
		return nil
	}
	fmt.Fprintln(out, "ready")

	select {
	case <-ctx.Done():
		fmt.Fprintln(out, "erlmcp up: shutting down")
		return nil
	case err := <-etcdErr:
		return fmt.Errorf("embedded etcd failed: %w", err)
	}
}

// waitReady polls until the front answers /healthz and at least one
// worker is registered, printing progress when it changes. It returns
// false (no error) when ctx ends first.
func waitReady(ctx context.Context, plan Plan, cfg Config, cli *clientv3.Client, sup *supervisor.Supervisor, etcdErr <-chan error, out io.Writer) (bool, error) {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.NewTimer(cfg.ReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		frontOK := "not answering yet"
		if resp, err := hc.Get(plan.FrontHealth); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				frontOK = "ok"
			} else {
				frontOK = resp.Status
			}
		}
		workers := 0
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		if ms, err := membership.List(lctx, cli, Prefix, membership.RoleWorker); err == nil {
			workers = len(ms)
		}
		cancel()
		var restarting []string
		for _, n := range sup.Names() {
			if s := sup.Starts(n); s > 1 {
				restarting = append(restarting, fmt.Sprintf("%s (started %d times)", n, s))
			}
		}
		status := fmt.Sprintf("front /healthz: %s; workers registered: %d/%d", frontOK, workers, cfg.Workers)
		if len(restarting) > 0 {
			status += "; restarting: " + strings.Join(restarting, ", ") + " — see " + plan.LogDir()
		}
		if frontOK == "ok" && workers > 0 {
			return true, nil
		}
		if status != last {
			fmt.Fprintf(out, "waiting: %s\n", status)
			last = status
		}
		select {
		case <-ctx.Done():
			return false, nil
		case err := <-etcdErr:
			return false, fmt.Errorf("embedded etcd failed: %w", err)
		case <-deadline.C:
			return false, fmt.Errorf("cluster not ready after %s (%s); the children's logs are in %s", cfg.ReadyTimeout, status, plan.LogDir())
		case <-tick.C:
		}
	}
}

// upEnvVars are the environment variables meant for `erlmcp up` itself;
// children do not inherit them, so none of them can leak into a child
// flag of the same name (--listen, --data-dir).
var upEnvVars = []string{"data-dir", "listen", "admin-port-base", "worker-port-base", "store-port-base",
	"store-http-port-base", "fronts", "front-port-base", "etcd-members", "store-fault-proxies", "store-proxy-port-base", "etcd-client-port", "etcd-peer-port", "workers", "stores", "controlplanes", "log-level", "lease-ttl", "ready-timeout", "stop-timeout",
	"worker-auth-tokens", "worker-auth-principal-header"}

func childEnv(env []string) []string {
	drop := map[string]bool{}
	for _, f := range upEnvVars {
		drop[config.EnvName(f)] = true
	}
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !drop[k] {
			out = append(out, kv)
		}
	}
	return out
}
