package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/front"
	"github.com/erlmcp/erlmcp/internal/localactuator"
	"github.com/erlmcp/erlmcp/internal/localcluster"
	"github.com/erlmcp/erlmcp/internal/membership"
)

const ctlDeployUsage = `Usage: erlmcp ctl deploy COMMAND [flags]

The steps of a zero-downtime worker deploy on an ` + "`erlmcp up`" + ` cluster;
scripts/zero-downtime-deploy.sh strings them together. Workers are
started and stopped through up's local actuator (<data-dir>/actuator.sock);
the traffic split is the etcd key <prefix>deploy/traffic, which every front
watches.

Commands:
  status [--json | --plain]
      workers by version, the traffic split, the binary scale-ups start;
      --plain prints one record a line for scripts:
        traffic VERSION|- WEIGHT
        release VERSION|- PATH
        worker ID VERSION|- PATH|- DRAINING
  start --binary PATH --version V [--count N]
      start N more workers from the erlmcp binary at PATH, recorded in
      membership as version V; waits until each is registered and ready,
      then prints their names, one a line
  stop (--version V | --except-version V | NAME...)
      stop those workers: each gets SIGTERM and drains first
  traffic (--version V --weight W | --clear)
      send W percent (0..100) of requests to workers of version V and the
      rest to the others; --clear spreads over every worker again. Waits
      until every front applies it
  release (--binary PATH --version V | --clear)
      make later scale-ups and heals start PATH as V (--clear: up's own)
  gate --version V [--window D] [--max-error-rate F] [--max-p95 D]
       [--min-requests N] [--max-wait D]
      read the /metrics of every worker of version V over the window; pass
      (exit 0) when the share of 5xx answers is at most F and the p95
      latency at most D, fail (exit 1) otherwise. A window with fewer than
      N requests is extended up to --max-wait, then fails: no evidence is
      not a pass

Common flags:
  --data-dir DIR          (env ERLMCP_DATA_DIR, default ./.erlmcp)
  --etcd-endpoints URLS   (env ERLMCP_ETCD_ENDPOINTS; default from cluster.json)
  --etcd-prefix PREFIX    (env ERLMCP_ETCD_PREFIX, default /erlmcp/)
  --timeout D             bound on waits (default 60s)

Exit codes: 0 ok (gate passed); 1 failed (gate missed, unreachable,
timeout); 2 bad usage.
`

// deployOptions are the flags of every `ctl deploy` command.
type deployOptions struct {
	dataDir, endpoints, prefix string
	binary, version, except    string
	count, weight, minRequests int
	clear, json, weightSet     bool
	plain                      bool
	timeout, window, maxWait   time.Duration
	maxP95                     time.Duration
	maxErrorRate               float64
	names                      []string
}

func runCtlDeploy(ctx context.Context, args []string, dataDir string, dataDirSet bool, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) == 0 {
			fmt.Fprint(stderr, ctlDeployUsage)
			return exitUsage
		}
		fmt.Fprint(stdout, ctlDeployUsage)
		return exitOK
	}
	cmd := args[0]
	o := deployOptions{dataDir: dataDir, prefix: localcluster.Prefix, count: 1, timeout: 60 * time.Second,
		window: 10 * time.Second, maxWait: 60 * time.Second, maxP95: 500 * time.Millisecond, maxErrorRate: 0.01, minRequests: 20}
	fs := flag.NewFlagSet("ctl deploy "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.dataDir, "data-dir", o.dataDir, "")
	fs.StringVar(&o.endpoints, "etcd-endpoints", "", "")
	fs.StringVar(&o.prefix, "etcd-prefix", o.prefix, "")
	fs.StringVar(&o.binary, "binary", "", "")
	fs.StringVar(&o.version, "version", "", "")
	fs.StringVar(&o.except, "except-version", "", "")
	fs.IntVar(&o.count, "count", o.count, "")
	fs.IntVar(&o.weight, "weight", 0, "")
	fs.IntVar(&o.minRequests, "min-requests", o.minRequests, "")
	fs.BoolVar(&o.clear, "clear", false, "")
	fs.BoolVar(&o.json, "json", false, "")
	fs.BoolVar(&o.plain, "plain", false, "")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "")
	fs.DurationVar(&o.window, "window", o.window, "")
	fs.DurationVar(&o.maxWait, "max-wait", o.maxWait, "")
	fs.DurationVar(&o.maxP95, "max-p95", o.maxP95, "")
	fs.Float64Var(&o.maxErrorRate, "max-error-rate", o.maxErrorRate, "")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, ctlDeployUsage)
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp ctl deploy %s: %v\n\n%s", cmd, err, ctlDeployUsage)
		return exitUsage
	}
	set := map[string]bool{"data-dir": dataDirSet}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, dst := range map[string]*string{"data-dir": &o.dataDir, "etcd-endpoints": &o.endpoints, "etcd-prefix": &o.prefix} {
		if v, ok := lookup(config.EnvName(name)); ok && !set[name] {
			*dst = v
		}
	}
	o.names, o.weightSet = fs.Args(), set["weight"]
	if err := o.validate(cmd); err != nil {
		fmt.Fprintf(stderr, "erlmcp ctl deploy %s: %v\n", cmd, err)
		return exitUsage
	}
	if err := o.run(ctx, cmd, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "erlmcp ctl deploy %s: %v\n", cmd, err)
		return exitFailure
	}
	return exitOK
}

func (o *deployOptions) validate(cmd string) error {
	if !strings.HasPrefix(o.prefix, "/") || !strings.HasSuffix(o.prefix, "/") {
		return fmt.Errorf("--etcd-prefix %q: must start and end with '/'", o.prefix)
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %s: must be positive", o.timeout)
	}
	needVersion := func() error {
		if o.version == "" {
			return errors.New("--version is required")
		}
		return nil
	}
	switch cmd {
	case "status":
	case "start":
		if o.binary == "" {
			return errors.New("--binary is required")
		}
		if o.count < 1 {
			return fmt.Errorf("--count %d: want 1 or more", o.count)
		}
		return needVersion()
	case "stop":
		n := 0
		for _, b := range []bool{o.version != "", o.except != "", len(o.names) > 0} {
			if b {
				n++
			}
		}
		if n != 1 {
			return errors.New("name the workers with exactly one of --version V, --except-version V or worker names")
		}
	case "traffic":
		if o.clear {
			if o.version != "" || o.weightSet {
				return errors.New("--clear takes no --version or --weight")
			}
			return nil
		}
		if !o.weightSet {
			return errors.New("--weight is required (or --clear)")
		}
		if err := (front.Traffic{Version: o.version, Weight: o.weight}).Validate(); err != nil {
			return err
		}
		return needVersion()
	case "release":
		if o.clear {
			return nil
		}
		if o.binary == "" {
			return errors.New("--binary is required (or --clear)")
		}
		return needVersion()
	case "gate":
		switch {
		case o.window <= 0:
			return fmt.Errorf("--window %s: must be positive", o.window)
		case o.maxWait < o.window:
			return fmt.Errorf("--max-wait %s: must be at least --window %s", o.maxWait, o.window)
		case o.maxErrorRate < 0 || o.maxErrorRate > 1:
			return fmt.Errorf("--max-error-rate %g: want 0..1", o.maxErrorRate)
		case o.maxP95 <= 0:
			return fmt.Errorf("--max-p95 %s: must be positive", o.maxP95)
		case o.minRequests < 1:
			return fmt.Errorf("--min-requests %d: want 1 or more", o.minRequests)
		}
		return needVersion()
	default:
		return fmt.Errorf("unknown command %q (want status, start, stop, traffic, release or gate)", cmd)
	}
	return nil
}

// deployEnv is what the commands talk to.
type deployEnv struct {
	o   *deployOptions
	cli *clientv3.Client
	act *localactuator.Client
	hc  *http.Client
}

func (o *deployOptions) run(ctx context.Context, cmd string, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout+o.maxWait)
	defer cancel()
	e := &deployEnv{o: o, hc: &http.Client{Timeout: 5 * time.Second}}
	cf, cfErr := localcluster.ReadClusterFile(filepath.Join(o.dataDir, clusterJSONName))
	eps := config.Common{EtcdEndpoints: o.endpoints}.Endpoints()
	if o.endpoints == "" {
		if cfErr != nil {
			return fmt.Errorf("no --etcd-endpoints and no local cluster: %w", cfErr)
		}
		eps = cf.EtcdEndpoints
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("etcd %v: %w", eps, err)
	}
	defer cli.Close()
	e.cli = cli
	if cfErr == nil {
		e.act = localactuator.NewClient(filepath.Join(o.dataDir, "actuator.sock"), cf.AdminToken)
	}
	needAct := func() error {
		if e.act == nil {
			return fmt.Errorf("%s needs the local actuator of `erlmcp up`, found through %s: %w", cmd, filepath.Join(o.dataDir, clusterJSONName), cfErr)
		}
		return nil
	}
	switch cmd {
	case "status":
		return e.status(ctx, stdout)
	case "start":
		if err := needAct(); err != nil {
			return err
		}
		return e.start(ctx, stdout)
	case "stop":
		if err := needAct(); err != nil {
			return err
		}
		return e.stop(ctx, stdout)
	case "traffic":
		return e.traffic(ctx, stdout)
	case "release":
		if err := needAct(); err != nil {
			return err
		}
		rel := localactuator.Release{Pool: membership.RoleWorker}
		if !o.clear {
			abs, err := filepath.Abs(o.binary)
			if err != nil {
				return err
			}
			rel.Path, rel.Version = abs, o.version
		}
		if err := e.act.SetRelease(ctx, rel); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "worker release: %s\n", dash(rel.Version+" "+rel.Path))
		return nil
	case "gate":
		return e.gate(ctx, stdout, stderr)
	}
	return nil
}

func (e *deployEnv) workers(ctx context.Context) ([]membership.Member, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ms, err := membership.List(lctx, e.cli, e.o.prefix, membership.RoleWorker)
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	return ms, nil
}

func (e *deployEnv) getTraffic(ctx context.Context) (front.Traffic, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := e.cli.Get(lctx, front.TrafficKey(e.o.prefix))
	if err != nil {
		return front.Traffic{}, fmt.Errorf("read traffic split: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return front.Traffic{}, nil
	}
	return front.ParseTraffic(resp.Kvs[0].Value)
}

// deployStatus is the JSON of `ctl deploy status --json`.
type deployStatus struct {
	Traffic  front.Traffic          `json:"traffic"`
	Versions map[string]int         `json:"versions"`
	Workers  []deployWorker         `json:"workers"`
	Release  *localactuator.Release `json:"release,omitempty"`
}

type deployWorker struct {
	ID       string `json:"id"`
	Version  string `json:"version"`
	Addr     string `json:"addr"`
	Draining bool   `json:"draining"`
	Path     string `json:"path,omitempty"`
}

func (e *deployEnv) status(ctx context.Context, stdout io.Writer) error {
	ms, err := e.workers(ctx)
	if err != nil {
		return err
	}
	tr, err := e.getTraffic(ctx)
	if err != nil {
		return err
	}
	st := deployStatus{Traffic: tr, Versions: map[string]int{}, Workers: []deployWorker{}}
	paths := map[string]string{}
	if e.act != nil {
		if ps, err := e.act.Processes(ctx, membership.RoleWorker); err == nil {
			for _, p := range ps {
				paths[p.Name] = p.Path
			}
		}
		if rel, err := e.act.Release(ctx, membership.RoleWorker); err == nil {
			st.Release = &rel
		}
	}
	for _, m := range ms {
		st.Versions[m.Version]++
		st.Workers = append(st.Workers, deployWorker{ID: m.ID, Version: m.Version, Addr: m.Addr, Draining: m.Draining, Path: paths[m.ID]})
	}
	if e.o.json {
		return printJSON(stdout, st)
	}
	if e.o.plain {
		// One record a line for scripts: no jq needed.
		fmt.Fprintf(stdout, "traffic %s %d\n", dash(tr.Version), tr.Weight)
		if st.Release != nil {
			fmt.Fprintf(stdout, "release %s %s\n", dash(st.Release.Version), dash(st.Release.Path))
		}
		for _, w := range st.Workers {
			fmt.Fprintf(stdout, "worker %s %s %s %t\n", w.ID, dash(w.Version), dash(w.Path), w.Draining)
		}
		return nil
	}
	if tr.Version == "" {
		fmt.Fprintln(stdout, "traffic: every worker alike (no split)")
	} else {
		fmt.Fprintf(stdout, "traffic: %d%% to version %s, the rest to the others\n", tr.Weight, tr.Version)
	}
	vs := make([]string, 0, len(st.Versions))
	for v := range st.Versions {
		vs = append(vs, v)
	}
	sort.Strings(vs)
	for _, v := range vs {
		var ids []string
		for _, w := range st.Workers {
			if w.Version == v {
				ids = append(ids, w.ID)
			}
		}
		fmt.Fprintf(stdout, "version %s: %d workers (%s)\n", v, st.Versions[v], strings.Join(ids, " "))
	}
	if st.Release != nil {
		fmt.Fprintf(stdout, "release for scale-ups: %s\n", dash(strings.TrimSpace(st.Release.Version+" "+st.Release.Path)))
	}
	return nil
}

func (e *deployEnv) start(ctx context.Context, stdout io.Writer) error {
	abs, err := filepath.Abs(e.o.binary)
	if err != nil {
		return err
	}
	res, err := e.act.Start(ctx, localactuator.StartRequest{Pool: membership.RoleWorker, Count: e.o.count, Path: abs, Version: e.o.version})
	if err != nil {
		return err
	}
	// Started is not serving: wait for each to register with the new
	// version and answer /readyz, or traffic shifted to it would fail.
	want := map[string]bool{}
	for _, n := range res.Started {
		want[n] = true
	}
	deadline := time.Now().Add(e.o.timeout)
	for {
		ready, why := 0, ""
		ms, err := e.workers(ctx)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if !want[m.ID] {
				continue
			}
			if m.Version != e.o.version {
				why = fmt.Sprintf("%s registered version %q, not %q (does %s take %s?)", m.ID, m.Version, e.o.version, abs, localactuator.VersionFlag)
				continue
			}
			if err := e.ready(ctx, m); err != nil {
				why = err.Error()
				continue
			}
			ready++
		}
		if ready == len(want) {
			break
		}
		if time.Now().After(deadline) {
			if why == "" {
				why = "not registered in membership; see their logs"
			}
			return fmt.Errorf("%d of %d new workers (%s) ready after %s: %s", ready, len(want), strings.Join(res.Started, " "), e.o.timeout, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	for _, n := range res.Started {
		fmt.Fprintln(stdout, n)
	}
	return nil
}

func memberHTTP(m membership.Member) string {
	if m.HTTPAddr != "" {
		return "http://" + strings.TrimPrefix(m.HTTPAddr, "http://")
	}
	return "http://" + strings.TrimPrefix(m.Addr, "http://")
}

func (e *deployEnv) ready(ctx context.Context, m membership.Member) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, memberHTTP(m)+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s /readyz: %w", m.ID, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s /readyz: %s", m.ID, resp.Status)
	}
	return nil
}

func (e *deployEnv) stop(ctx context.Context, stdout io.Writer) error {
	names := e.o.names
	if len(names) == 0 {
		ms, err := e.workers(ctx)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if e.o.version != "" && m.Version == e.o.version || e.o.except != "" && m.Version != e.o.except {
				names = append(names, m.ID)
			}
		}
		if len(names) == 0 {
			fmt.Fprintln(stdout, "no worker to stop")
			return nil
		}
	}
	if err := e.act.Stop(ctx, names); err != nil {
		return err
	}
	for _, n := range names {
		fmt.Fprintln(stdout, n)
	}
	return nil
}

func (e *deployEnv) traffic(ctx context.Context, stdout io.Writer) error {
	key := front.TrafficKey(e.o.prefix)
	want := front.Traffic{}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	var err error
	if e.o.clear {
		_, err = e.cli.Delete(lctx, key)
	} else {
		want = front.Traffic{Version: e.o.version, Weight: e.o.weight, At: time.Now().UTC()}
		b, _ := json.Marshal(want)
		_, err = e.cli.Put(lctx, key, string(b))
	}
	cancel()
	if err != nil {
		return fmt.Errorf("write traffic split: %w", err)
	}
	// Every front applies it from its watch; wait until each says so, so
	// the gate that follows measures the new split, not the old one.
	deadline := time.Now().Add(e.o.timeout)
	for {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		fronts, err := membership.List(lctx, e.cli, e.o.prefix, membership.RoleFront)
		cancel()
		if err != nil {
			return fmt.Errorf("list fronts: %w", err)
		}
		var behind []string
		for _, f := range fronts {
			got, err := e.frontTraffic(ctx, f)
			if err != nil || got.Version != want.Version || got.Weight != want.Weight {
				behind = append(behind, fmt.Sprintf("%s (%+v, %v)", f.ID, got, err))
			}
		}
		if len(behind) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("split written, but fronts have not applied it after %s: %s", e.o.timeout, strings.Join(behind, "; "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if want.Version == "" {
		fmt.Fprintln(stdout, "traffic: every worker alike")
	} else {
		fmt.Fprintf(stdout, "traffic: %d%% to version %s\n", want.Weight, want.Version)
	}
	return nil
}

func (e *deployEnv) frontTraffic(ctx context.Context, f membership.Member) (front.Traffic, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, memberHTTP(f)+"/healthz", nil)
	if err != nil {
		return front.Traffic{}, err
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return front.Traffic{}, err
	}
	defer resp.Body.Close()
	var h struct {
		Traffic front.Traffic `json:"traffic"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&h); err != nil {
		return front.Traffic{}, fmt.Errorf("front %s /healthz: %w", f.ID, err)
	}
	return h.Traffic, nil
}

// workerCounts is one scrape of the gate's workers, summed.
type workerCounts struct {
	requests, errors float64
	buckets          map[float64]float64 // upper bound → cumulative count
}

func (e *deployEnv) scrape(ctx context.Context, ms []membership.Member) (map[string]workerCounts, error) {
	out := map[string]workerCounts{}
	for _, m := range ms {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, memberHTTP(m)+"/metrics", nil)
		if err != nil {
			return nil, err
		}
		resp, err := e.hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("scrape %s: %w", m.ID, err)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, 8<<20))
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("scrape %s: %w", m.ID, err)
		}
		c := workerCounts{buckets: map[float64]float64{}}
		if f := fams["erlmcp_worker_requests_total"]; f != nil {
			for _, mm := range f.GetMetric() {
				v := mm.GetCounter().GetValue()
				c.requests += v
				if strings.HasPrefix(labelOf(mm, "code"), "5") {
					c.errors += v
				}
			}
		}
		if f := fams["erlmcp_worker_request_duration_seconds"]; f != nil {
			for _, mm := range f.GetMetric() {
				h := mm.GetHistogram()
				for _, b := range h.GetBucket() {
					if !math.IsInf(b.GetUpperBound(), 1) { // +Inf is the sample count, added below
						c.buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
					}
				}
				c.buckets[math.Inf(1)] += float64(h.GetSampleCount())
			}
		}
		out[m.ID+"@"+m.StartedAt.String()] = c
	}
	return out, nil
}

func labelOf(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// gateDelta sums what changed between two scrapes over the workers seen in
// both (a restarted worker's counters start again and would go negative).
func gateDelta(before, after map[string]workerCounts) workerCounts {
	d := workerCounts{buckets: map[float64]float64{}}
	for k, a := range after {
		b, ok := before[k]
		if !ok {
			continue
		}
		d.requests += a.requests - b.requests
		d.errors += a.errors - b.errors
		for ub, n := range a.buckets {
			d.buckets[ub] += n - b.buckets[ub]
		}
	}
	return d
}

// quantile estimates the q-quantile from cumulative buckets the way
// Prometheus' histogram_quantile does: linear within the bucket.
func quantile(q float64, buckets map[float64]float64) float64 {
	ubs := make([]float64, 0, len(buckets))
	for ub := range buckets {
		ubs = append(ubs, ub)
	}
	sort.Float64s(ubs)
	if len(ubs) == 0 {
		return math.NaN()
	}
	total := buckets[ubs[len(ubs)-1]]
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	prevUB, prevN := 0.0, 0.0
	for _, ub := range ubs {
		n := buckets[ub]
		if n >= rank {
			if math.IsInf(ub, 1) {
				return prevUB // beyond the highest finite bound: report it
			}
			if n == prevN {
				return ub
			}
			return prevUB + (ub-prevUB)*(rank-prevN)/(n-prevN)
		}
		prevUB, prevN = ub, n
	}
	return prevUB
}

func (e *deployEnv) gate(ctx context.Context, stdout, stderr io.Writer) error {
	o := e.o
	ms, err := e.workers(ctx)
	if err != nil {
		return err
	}
	var targets []membership.Member
	for _, m := range ms {
		if m.Version == o.version {
			targets = append(targets, m)
		}
	}
	if len(targets) == 0 {
		return fmt.Errorf("gate: no worker of version %s is registered", o.version)
	}
	before, err := e.scrape(ctx, targets)
	if err != nil {
		return fmt.Errorf("gate: %w", err)
	}
	start := time.Now()
	var d workerCounts
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(o.window - time.Since(start)%o.window):
		}
		after, err := e.scrape(ctx, targets)
		if err != nil {
			return fmt.Errorf("gate: %w", err)
		}
		d = gateDelta(before, after)
		if d.requests >= float64(o.minRequests) {
			break
		}
		if time.Since(start) >= o.maxWait {
			return fmt.Errorf("gate: only %.0f requests reached version %s in %s (want %d); no evidence is not a pass", d.requests, o.version, time.Since(start).Round(time.Second), o.minRequests)
		}
		fmt.Fprintf(stderr, "gate: %.0f requests so far on version %s, waiting for %d\n", d.requests, o.version, o.minRequests)
	}
	rate := d.errors / d.requests
	p95 := quantile(0.95, d.buckets)
	verdict := fmt.Sprintf("version %s over %s: %.0f requests, error rate %.4f (max %.4f), p95 %s (max %s)",
		o.version, time.Since(start).Round(100*time.Millisecond), d.requests, rate, o.maxErrorRate, time.Duration(p95*float64(time.Second)).Round(100*time.Microsecond), o.maxP95)
	var miss []string
	if rate > o.maxErrorRate {
		miss = append(miss, "error rate")
	}
	if math.IsNaN(p95) || p95 > o.maxP95.Seconds() {
		miss = append(miss, "p95")
	}
	if len(miss) > 0 {
		return fmt.Errorf("gate missed (%s): %s", strings.Join(miss, ", "), verdict)
	}
	fmt.Fprintf(stdout, "gate passed: %s\n", verdict)
	return nil
}
