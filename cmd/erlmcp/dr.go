package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/backup"
	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/localcluster"
)

// `erlmcp dr`: disaster recovery. check judges the cluster's health;
// switch moves the active region and verifies it; snapshot and restore
// take and restore a backup of etcd and the session store.

const drUsage = `Usage: erlmcp dr <command> [flags]

Disaster recovery for an erlmcp cluster (scripts/disaster-recovery.sh wraps it).

Commands:
  check      health verdict: etcd quorum, store nodes, under-replicated or
             leaderless shards, healthy workers per region, active region
  switch ROLE
             make the region whose role is ROLE (primary, secondary, dr)
             active through the admin API, then verify: the region is
             active, every shard's leader is a store in it, and an MCP
             session works through a worker in it
  snapshot   back up etcd (a Maintenance snapshot) and every session-store
             shard (a linearizable dump from its leader) into --out DIR:
             files plus manifest.json with SHA-256 sums
  restore    restore a backup (--from DIR) in two phases:
               etcd      (cluster stopped) etcd's snapshot into the data dir,
                         cleaned of the old processes' leases and shard map
               sessions  (cluster running) every shard's dump loaded back
                         through its Raft log
             --phase auto (default) picks etcd when no erlmcp up holds the
             data dir, sessions when one does

Common flags (env in parentheses):
  --data-dir DIR         (ERLMCP_DATA_DIR, default ./.erlmcp) the local
                         cluster's data dir (cluster.json: endpoints, token)
  --admin-url URLS       (ERLMCP_ADMIN_URL) admin API URLs, comma-separated
  --token TOKEN          (ERLMCP_ADMIN_TOKEN) admin bearer token
  --etcd-endpoints URLS  (ERLMCP_ETCD_ENDPOINTS) comma-separated
  --timeout DURATION     (ERLMCP_DR_TIMEOUT, default 2m) bound of the command
check:    --json           print the verdict as JSON
snapshot: --out DIR        (required) a new directory for the backup
restore:  --from DIR       (required) a backup directory
          --phase PHASE    auto, etcd or sessions (default auto)
          --etcd-client-port N, --etcd-peer-port N  (ERLMCP_ETCD_CLIENT_PORT,
                           ERLMCP_ETCD_PEER_PORT; defaults those of erlmcp up)
                           the ports erlmcp up will run etcd on

Progress goes to stderr, one line per step; results to stdout.
Exit codes: check: 0 healthy, 1 degraded, 2 down or unreachable;
other commands: 0 done and verified, 1 failed; every command: 64 bad usage.
`

// exitDRUsage is bad usage of `erlmcp dr` (EX_USAGE): check's verdicts use
// 1 and 2, so usage errors need their own code.
const exitDRUsage = 64

// Verdict exit codes of `dr check`.
const (
	exitHealthy  = 0
	exitDegraded = 1
	exitDown     = 2
)

type drOptions struct {
	ctl        ctlOptions
	endpoints  string
	timeout    time.Duration
	json       bool
	out, from  string
	phase      string
	clientPort int
	peerPort   int
	args       []string
}

func cmdDR(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runDR(ctx, args, stdout, stderr, os.LookupEnv)
}

func runDR(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, drUsage)
		return exitDRUsage
	}
	name := args[0]
	switch name {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, drUsage)
		return exitOK
	case "check", "switch", "snapshot", "restore":
	default:
		fmt.Fprintf(stderr, "erlmcp dr: unknown command %q\n\n%s", name, drUsage)
		return exitDRUsage
	}
	def := localcluster.DefaultConfig()
	o := drOptions{ctl: ctlOptions{dataDir: ".erlmcp"}, timeout: 2 * time.Minute, phase: "auto", clientPort: def.EtcdClientPort, peerPort: def.EtcdPeerPort}
	fs := flag.NewFlagSet("dr "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.ctl.register(fs)
	fs.StringVar(&o.endpoints, "etcd-endpoints", "", "")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "")
	fs.BoolVar(&o.json, "json", false, "")
	fs.StringVar(&o.out, "out", "", "")
	fs.StringVar(&o.from, "from", "", "")
	fs.StringVar(&o.phase, "phase", o.phase, "")
	fs.IntVar(&o.clientPort, "etcd-client-port", o.clientPort, "")
	fs.IntVar(&o.peerPort, "etcd-peer-port", o.peerPort, "")
	for rest := args[1:]; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stdout, drUsage)
				return exitOK
			}
			fmt.Fprintf(stderr, "erlmcp dr %s: %v\n\n%s", name, err, drUsage)
			return exitDRUsage
		}
		if fs.NArg() == 0 {
			break
		}
		o.args = append(o.args, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var bad error
	for flagName, apply := range map[string]func(string) error{
		"admin-url":        func(v string) error { o.ctl.adminURL = v; return nil },
		"token":            func(v string) error { o.ctl.token = v; return nil },
		"data-dir":         func(v string) error { o.ctl.dataDir = v; return nil },
		"etcd-endpoints":   func(v string) error { o.endpoints = v; return nil },
		"etcd-client-port": func(v string) (err error) { o.clientPort, err = strconv.Atoi(v); return err },
		"etcd-peer-port":   func(v string) (err error) { o.peerPort, err = strconv.Atoi(v); return err },
		"dr-timeout":       func(v string) (err error) { o.timeout, err = time.ParseDuration(v); return err },
	} {
		if set[strings.TrimPrefix(flagName, "dr-")] {
			continue
		}
		if v, ok := lookup(config.EnvName(flagName)); ok {
			if err := apply(v); err != nil {
				bad = fmt.Errorf("%s=%q: %w", config.EnvName(flagName), v, err)
			}
		}
	}
	if bad == nil {
		bad = o.validate(name)
	}
	if bad != nil {
		fmt.Fprintf(stderr, "erlmcp dr %s: %v\n\n%s", name, bad, drUsage)
		return exitDRUsage
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	switch name {
	case "check":
		return drCheck(ctx, o, stdout, stderr)
	}
	var err error
	switch name {
	case "switch":
		err = drSwitch(ctx, o, stdout, stderr)
	case "snapshot":
		err = drSnapshot(ctx, o, stdout, stderr)
	case "restore":
		err = drRestore(ctx, o, stdout, stderr)
	}
	if err != nil {
		var ce *ctlError
		if errors.As(err, &ce) && ce.code == exitUsage {
			fmt.Fprintf(stderr, "erlmcp dr %s: %s\n", name, ce.msg)
			return exitDRUsage
		}
		fmt.Fprintf(stderr, "erlmcp dr %s: %v\n", name, err)
		return exitFailure
	}
	return exitOK
}

func (o drOptions) validate(name string) error {
	want := 0
	switch name {
	case "switch":
		want = 1
		if len(o.args) == 1 && o.args[0] != "primary" && o.args[0] != "secondary" && o.args[0] != "dr" {
			return fmt.Errorf("switch %q: want primary, secondary or dr", o.args[0])
		}
	case "snapshot":
		if o.out == "" {
			return errors.New("--out DIR is required")
		}
	case "restore":
		if o.from == "" {
			return errors.New("--from DIR is required")
		}
		if o.phase != "auto" && o.phase != "etcd" && o.phase != "sessions" {
			return fmt.Errorf("--phase %q: want auto, etcd or sessions", o.phase)
		}
	}
	switch {
	case len(o.args) != want:
		return fmt.Errorf("want %d argument(s), got %q", want, o.args)
	case o.timeout <= 0:
		return fmt.Errorf("--timeout %s: want more than 0", o.timeout)
	case o.clientPort < 1 || o.clientPort > 65535 || o.peerPort < 1 || o.peerPort > 65535:
		return fmt.Errorf("--etcd-client-port %d / --etcd-peer-port %d: want 1..65535", o.clientPort, o.peerPort)
	}
	return nil
}

// etcdEndpoints are --etcd-endpoints, else cluster.json's.
func (o drOptions) etcdEndpoints() ([]string, error) {
	if o.endpoints != "" {
		var eps []string
		for _, e := range strings.Split(o.endpoints, ",") {
			if e = strings.TrimSpace(e); e != "" {
				eps = append(eps, e)
			}
		}
		return eps, nil
	}
	path := filepath.Join(o.ctl.dataDir, clusterJSONName)
	c, err := localcluster.ReadClusterFile(path)
	if err != nil {
		return nil, fmt.Errorf("no --etcd-endpoints and no local cluster: %w", err)
	}
	if len(c.EtcdEndpoints) == 0 {
		return nil, fmt.Errorf("%s lists no etcd_endpoints; pass --etcd-endpoints", path)
	}
	return c.EtcdEndpoints, nil
}

func drSnapshot(ctx context.Context, o drOptions, stdout, stderr io.Writer) error {
	eps, err := o.etcdEndpoints()
	if err != nil {
		return err
	}
	cfg := backup.DefaultSnapshotConfig()
	cfg.EtcdEndpoint, cfg.Prefix, cfg.Dir, cfg.Timeout, cfg.Progress = eps[0], localcluster.Prefix, o.out, o.timeout, stderr
	start := time.Now()
	m, err := backup.Snapshot(ctx, cfg)
	if err != nil {
		return err
	}
	sessions := 0
	for _, s := range m.Shards {
		sessions += s.Sessions
	}
	fmt.Fprintf(stdout, "backup %s: etcd revision %d, %d shards, %d sessions in %s\n", o.out, m.Etcd.Revision, m.ShardCount, sessions, time.Since(start).Round(time.Millisecond))
	return nil
}

func drRestore(ctx context.Context, o drOptions, stdout, stderr io.Writer) error {
	phase := o.phase
	if phase == "auto" {
		running, err := upRunning(o.ctl.dataDir)
		if err != nil {
			return err
		}
		phase = "etcd"
		if running {
			phase = "sessions"
		}
		fmt.Fprintf(stderr, "restore: phase %s (erlmcp up running on %s: %v)\n", phase, o.ctl.dataDir, running)
	}
	if phase == "etcd" {
		if running, err := upRunning(o.ctl.dataDir); err != nil {
			return err
		} else if running {
			return fmt.Errorf("an erlmcp up runs on %s: stop it first (etcd is restored into a stopped cluster's data dir)", o.ctl.dataDir)
		}
		for _, sub := range []string{"etcd", "etcd-1"} {
			if ents, err := os.ReadDir(filepath.Join(o.ctl.dataDir, sub)); err == nil && len(ents) > 0 {
				return fmt.Errorf("%s already holds etcd data: restore into an empty data dir (move this one away first); if etcd was restored already, start the cluster and run restore again to load the sessions", filepath.Join(o.ctl.dataDir, sub))
			}
		}
		if stores, _ := filepath.Glob(filepath.Join(o.ctl.dataDir, "store-*")); len(stores) > 0 {
			return fmt.Errorf("%s holds store data (%s): restore into an empty data dir, the store nodes must start empty", o.ctl.dataDir, strings.Join(stores, ", "))
		}
		cfg := backup.DefaultEtcdRestoreConfig()
		cfg.Backup, cfg.DataDir, cfg.Progress = o.from, filepath.Join(o.ctl.dataDir, "etcd"), stderr
		cfg.ClientURL = fmt.Sprintf("http://127.0.0.1:%d", o.clientPort)
		cfg.PeerURL = fmt.Sprintf("http://127.0.0.1:%d", o.peerPort)
		if err := os.MkdirAll(o.ctl.dataDir, 0o700); err != nil {
			return err
		}
		if _, err := backup.RestoreEtcd(ctx, cfg); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "etcd restored into %s; next: start the cluster (erlmcp up --data-dir %s, same ports), then run restore again to load the sessions\n", cfg.DataDir, o.ctl.dataDir)
		return nil
	}
	eps, err := o.etcdEndpoints()
	if err != nil {
		return err
	}
	cfg := backup.DefaultLoadConfig()
	cfg.EtcdEndpoints, cfg.Prefix, cfg.Backup, cfg.Timeout, cfg.Progress = eps, localcluster.Prefix, o.from, o.timeout, stderr
	start := time.Now()
	n, err := backup.Load(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "sessions restored: %d from %s in %s\n", n, o.from, time.Since(start).Round(time.Millisecond))
	return nil
}

// upRunning says whether an erlmcp up holds dir's lock.
func upRunning(dir string) (bool, error) {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	lock, err := localcluster.LockDataDir(dir)
	if err != nil {
		if strings.Contains(err.Error(), "in use") {
			return true, nil
		}
		return false, err
	}
	lock.Release()
	return false, nil
}
