package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/internal/localcluster"
	"github.com/erlmcp/erlmcp/internal/membership"
)

const ctlTargetsUsage = `Usage: erlmcp ctl prometheus-targets [flags]

Writes Prometheus file_sd targets (JSON) for every member that serves
/metrics, read from etcd membership: workers (their MCP address), control
planes (their admin address), store nodes (their HTTP address; a store that
registered none is left out). Each target is labelled role, node, region and
zone, which is what deploy/monitoring/prometheus.yml and its rules expect.

Without --etcd-endpoints (env ERLMCP_ETCD_ENDPOINTS) the endpoints come from
<data-dir>/cluster.json, which ` + "`erlmcp up`" + ` writes.

Flags:
  --data-dir DIR          (env ERLMCP_DATA_DIR, default ./.erlmcp)
  --etcd-endpoints URLS   (env ERLMCP_ETCD_ENDPOINTS) comma-separated
  --etcd-prefix PREFIX    (env ERLMCP_ETCD_PREFIX, default /erlmcp/)
  --output FILE           write FILE atomically instead of printing (Prometheus
                          re-reads a file_sd file when it is replaced)
  --watch DURATION        with --output: rewrite FILE every DURATION until
                          interrupted (0: write once)

Exit codes: 0 ok; 1 failed (etcd unreachable, file not writable); 2 bad usage.
`

// targetsOptions are the prometheus-targets flags.
type targetsOptions struct {
	dataDir, endpoints, prefix, output string
	watch                              time.Duration
}

// fileSDGroup is one entry of a Prometheus file_sd file.
type fileSDGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// runCtlTargets runs `ctl prometheus-targets`. It talks to etcd, not to the
// admin API: the admin API's member list has no store HTTP addresses, and
// discovery must keep working while no control plane is up.
func runCtlTargets(ctx context.Context, args []string, dataDir string, dataDirSet bool, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	opts := targetsOptions{dataDir: dataDir, prefix: localcluster.Prefix}
	fs := flag.NewFlagSet("ctl prometheus-targets", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&opts.dataDir, "data-dir", opts.dataDir, "")
	fs.StringVar(&opts.endpoints, "etcd-endpoints", "", "")
	fs.StringVar(&opts.prefix, "etcd-prefix", opts.prefix, "")
	fs.StringVar(&opts.output, "output", "", "")
	fs.DurationVar(&opts.watch, "watch", 0, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, ctlTargetsUsage)
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp ctl prometheus-targets: %v\n\n%s", err, ctlTargetsUsage)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "erlmcp ctl prometheus-targets: unexpected argument %q\n\n%s", fs.Arg(0), ctlTargetsUsage)
		return exitUsage
	}
	set := map[string]bool{"data-dir": dataDirSet}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, dst := range map[string]*string{"data-dir": &opts.dataDir, "etcd-endpoints": &opts.endpoints, "etcd-prefix": &opts.prefix} {
		if v, ok := lookup(config.EnvName(name)); ok && !set[name] {
			*dst = v
		}
	}
	if err := opts.validate(); err != nil {
		fmt.Fprintf(stderr, "erlmcp ctl prometheus-targets: %v\n", err)
		return exitUsage
	}
	if err := writeTargets(ctx, opts, stdout); err != nil {
		fmt.Fprintf(stderr, "erlmcp ctl prometheus-targets: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func (o targetsOptions) validate() error {
	switch {
	case o.watch < 0:
		return fmt.Errorf("--watch %s: want 0 or more", o.watch)
	case o.watch > 0 && o.output == "":
		return fmt.Errorf("--watch needs --output")
	case !strings.HasPrefix(o.prefix, "/") || !strings.HasSuffix(o.prefix, "/"):
		return fmt.Errorf("--etcd-prefix %q: must start and end with '/'", o.prefix)
	}
	return nil
}

func writeTargets(ctx context.Context, opts targetsOptions, stdout io.Writer) error {
	endpoints, err := targetEndpoints(opts)
	if err != nil {
		return err
	}
	cli, err := etcdclient.New(ctx, etcdclient.DefaultConfig(endpoints...))
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ms, err := membership.List(lctx, cli, opts.prefix, "")
		cancel()
		if err != nil {
			return fmt.Errorf("etcd %v: %w", endpoints, err)
		}
		b, err := json.MarshalIndent(fileSDTargets(ms), "", "  ")
		if err != nil {
			return err
		}
		b = append(b, '\n')
		if opts.output == "" {
			_, err := stdout.Write(b)
			return err
		}
		if err := replaceFile(opts.output, b); err != nil {
			return err
		}
		if opts.watch == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil // interrupted: the last file written stays valid
		case <-time.After(opts.watch):
		}
	}
}

func targetEndpoints(opts targetsOptions) ([]string, error) {
	if opts.endpoints != "" {
		c := config.Common{EtcdEndpoints: opts.endpoints}
		if eps := c.Endpoints(); len(eps) > 0 {
			return eps, nil
		}
		return nil, fmt.Errorf("--etcd-endpoints %q names no endpoint", opts.endpoints)
	}
	path := filepath.Join(opts.dataDir, clusterJSONName)
	cf, err := localcluster.ReadClusterFile(path)
	if err != nil {
		return nil, fmt.Errorf("no --etcd-endpoints and no local cluster: %w", err)
	}
	if len(cf.EtcdEndpoints) == 0 {
		return nil, fmt.Errorf("%s lists no etcd_endpoints; pass --etcd-endpoints", path)
	}
	return cf.EtcdEndpoints, nil
}

// fileSDTargets turns members into one file_sd group each, sorted by role
// and id so the file only changes when membership does.
func fileSDTargets(ms []membership.Member) []fileSDGroup {
	out := []fileSDGroup{} // an empty file must still be a JSON array
	for _, m := range ms {
		addr := ""
		switch m.Role {
		case membership.RoleWorker, membership.RoleControlPlane:
			addr = m.Addr
			if m.HTTPAddr != "" {
				addr = m.HTTPAddr
			}
		case membership.RoleStore:
			addr = m.HTTPAddr // Addr is gRPC, which has no /metrics
		}
		if addr == "" {
			continue
		}
		out = append(out, fileSDGroup{
			Targets: []string{addr},
			Labels:  map[string]string{"role": m.Role, "node": m.ID, "region": m.Region, "zone": m.Zone},
		})
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Labels, out[j].Labels
		if a["role"] != b["role"] {
			return a["role"] < b["role"]
		}
		return a["node"] < b["node"]
	})
	return out
}

// replaceFile writes data to path through a temporary file and a rename, so
// Prometheus never reads a half-written file.
func replaceFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
