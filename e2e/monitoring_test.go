package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

func monitoringDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../deploy/monitoring")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPrometheusRules: promtool accepts both Prometheus configs and the rule
// files, the rule unit tests pass, and every alert has a unit test in which
// it fires and one in which it stays quiet.
func TestPrometheusRules(t *testing.T) {
	promtool := needTool(t, "promtool", "prometheus")
	dir := monitoringDir(t)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	rules, _ := filepath.Glob(filepath.Join(dir, "rules", "*.yml"))
	tests, _ := filepath.Glob(filepath.Join(dir, "tests", "*.yml"))
	if len(rules) == 0 || len(tests) == 0 {
		t.Fatalf("no rule files (%v) or rule tests (%v) under %s", rules, tests, dir)
	}
	run(append([]string{"check", "rules"}, rules...)...)
	run("check", "config", "prometheus.yml")
	run(append([]string{"test", "rules"}, tests...)...)

	// Debian's Prometheus is built without Kubernetes discovery, so the
	// Kubernetes config is checked with its discovery block swapped for a
	// static target: everything else (relabelling regexes, rule files) is
	// checked as shipped.
	k8s, err := os.ReadFile(filepath.Join(dir, "prometheus-kubernetes.yml"))
	if err != nil {
		t.Fatal(err)
	}
	const sd = "    kubernetes_sd_configs:\n      - role: pod\n"
	if strings.Count(string(k8s), sd) != 1 {
		t.Fatalf("prometheus-kubernetes.yml: want exactly one %q block", sd)
	}
	tmp := t.TempDir()
	swapped := strings.Replace(string(k8s), sd, "    static_configs:\n      - targets: ['127.0.0.1:9']\n", 1)
	if err := os.WriteFile(filepath.Join(tmp, "prometheus-kubernetes.yml"), []byte(swapped), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "rules"), filepath.Join(tmp, "rules")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(promtool, "check", "config", "prometheus-kubernetes.yml")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check config prometheus-kubernetes.yml (static targets for kubernetes_sd): %v\n%s", err, out)
	}

	// Every alert has a firing and a quiet case.
	alerts := map[string]bool{}
	alertRE := regexp.MustCompile(`^\s*- alert: (\S+)`)
	for _, f := range rules {
		for _, line := range readLines(t, f) {
			if m := alertRE.FindStringSubmatch(line); m != nil {
				alerts[m[1]] = true
			}
		}
	}
	if len(alerts) < 10 {
		t.Fatalf("found only %d alerts in %v", len(alerts), rules)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	nameRE := regexp.MustCompile(`^\s*alertname: (\S+)`)
	for _, f := range tests {
		name := ""
		for _, line := range readLines(t, f) {
			if m := nameRE.FindStringSubmatch(line); m != nil {
				name = m[1]
				continue
			}
			if name == "" || !strings.Contains(line, "exp_alerts:") {
				continue
			}
			if strings.HasSuffix(strings.TrimSpace(line), "[]") {
				quiet[name] = true
			} else {
				fires[name] = true
			}
			name = ""
		}
	}
	for a := range alerts {
		if !fires[a] {
			t.Errorf("alert %s has no promtool test in which it fires", a)
		}
		if !quiet[a] {
			t.Errorf("alert %s has no promtool test in which it stays quiet", a)
		}
	}
	for a := range fires {
		if !alerts[a] {
			t.Errorf("rule tests expect alert %s, which no rule file defines", a)
		}
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// promQuery runs an instant query and returns the result's series count.
// A query Prometheus cannot parse or evaluate is a permanent error.
func promQuery(ctx context.Context, base, expr string) (n int, permanent bool, err error) {
	u := base + "/api/v1/query?query=" + url.QueryEscape(expr)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, true, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	var body struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string            `json:"resultType"`
			Result     []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, false, fmt.Errorf("decode answer: %w", err)
	}
	if body.Status != "success" {
		return 0, body.ErrorType == "bad_data", fmt.Errorf("%s: %s", body.ErrorType, body.Error)
	}
	if body.Data.ResultType == "scalar" {
		return 1, false, nil
	}
	return len(body.Data.Result), false, nil
}

// dashboardQueries returns every target expression of every panel
// (including panels inside collapsed rows), keyed "panel title / refId".
func dashboardQueries(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var dash struct {
		UID    string            `json:"uid"`
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if dash.UID != "erlmcp-ha-dashboard" {
		t.Errorf("dashboard uid %q, want erlmcp-ha-dashboard", dash.UID)
	}
	out := map[string]string{}
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: panel: %v", path, err)
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				key := p.Title + " / " + tg.RefID
				if _, dup := out[key]; dup || strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q: duplicate refId or empty expr %q", p.Title, tg.RefID)
				}
				out[key] = tg.Expr
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	return out
}

// Grafana template variables, as the test evaluates them: all regions and
// a rate window that covers several 1 s scrapes.
var dashboardVars = strings.NewReplacer(
	"$__rate_interval", "15s",
	"$__interval", "5s",
	"$__range", "5m",
	"$region", ".*",
)

// TestGrafanaDashboardQueries: the real Prometheus (the shipped
// prometheus.yml and rules, 1 s intervals, targets written by `erlmcp ctl
// prometheus-targets`) scrapes a live `erlmcp up` cluster under load; every
// target of every dashboard panel must parse and return data through the
// HTTP API, and so must the seed's SLA series. Then a region failover makes
// the failover-time series real and fires ErlmcpFailoverHappened.
func TestGrafanaDashboardQueries(t *testing.T) {
	prometheus := needTool(t, "prometheus", "prometheus")
	dir := monitoringDir(t)
	queries := dashboardQueries(t, filepath.Join(dir, "grafana-ha-dashboard.json"))

	// GOMEMLIMIT gives every process a memory limit, which
	// erlmcp_memory_utilization measures against (as Kubernetes sets it).
	t.Setenv("GOMEMLIMIT", "2GiB")
	p, taken := widePorts(t)
	promPort := freeRun(t, 1, taken)
	dataDir := t.TempDir()
	c := startUp(t, dataDir, p)

	// Targets from etcd membership, as an operator's cron or --watch would.
	tmp := t.TempDir()
	sdDir := filepath.Join(tmp, "sd")
	if err := os.Mkdir(sdDir, 0o755); err != nil {
		t.Fatal(err)
	}
	targets := filepath.Join(sdDir, "erlmcp.json")
	var groups []fileSDTarget
	waitFor(t, 60*time.Second, "prometheus-targets to list 3 workers, 3 stores, 2 control planes", func() error {
		out, err := exec.Command(binary, "ctl", "prometheus-targets", "--data-dir", dataDir, "--output", targets).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctl prometheus-targets: %v: %s", err, out)
		}
		b, err := os.ReadFile(targets)
		if err != nil {
			return err
		}
		groups = nil
		if err := json.Unmarshal(b, &groups); err != nil {
			return fmt.Errorf("%s: %w", targets, err)
		}
		roles := map[string]int{}
		for _, g := range groups {
			roles[g.Labels["role"]]++
			if len(g.Targets) != 1 || g.Labels["node"] == "" || g.Labels["region"] == "" || g.Labels["zone"] == "" {
				return fmt.Errorf("incomplete target group %+v", g)
			}
		}
		if roles["worker"] != 3 || roles["store"] != 3 || roles["controlplane"] != 2 || len(groups) != 8 {
			return fmt.Errorf("targets by role %v", roles)
		}
		return nil
	})
	if err := os.WriteFile(filepath.Join(sdDir, "haproxy.json"), []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// The shipped prometheus.yml with test intervals and the target dir.
	cfg, err := os.ReadFile(filepath.Join(dir, "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(cfg)
	for _, r := range [][2]string{
		{"scrape_interval: 15s", "scrape_interval: 1s"},
		{"scrape_timeout: 10s", "scrape_timeout: 1s"},
		{"evaluation_interval: 15s", "evaluation_interval: 1s"},
		{"refresh_interval: 30s", "refresh_interval: 1s"},
		{"/etc/prometheus/erlmcp/", sdDir + "/"},
	} {
		if !strings.Contains(text, r[0]) {
			t.Fatalf("prometheus.yml no longer contains %q; update this test", r[0])
		}
		text = strings.ReplaceAll(text, r[0], r[1])
	}
	if err := os.WriteFile(filepath.Join(tmp, "prometheus.yml"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "rules"), filepath.Join(tmp, "rules")); err != nil {
		t.Fatal(err)
	}
	promURL := fmt.Sprintf("http://127.0.0.1:%d", promPort)
	prom := startProcess(t, nil, prometheus,
		"--config.file="+filepath.Join(tmp, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(tmp, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", promPort),
		"--log.level=warn")

	// Load: go-sdk sessions calling echo until the test ends.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopLoad(); wg.Wait() }()
	var sessions []*loadSession
	for range 2 {
		client := mcp.NewClient(&mcp.Implementation{Name: "erlmcp-e2e-monitoring", Version: "1"}, nil)
		s, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: c.mcpURL()},
			&mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"})
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		sessions = append(sessions, &loadSession{session: s})
	}
	for i, l := range sessions {
		wg.Add(1)
		go func() { defer wg.Done(); l.run(loadCtx, i) }()
	}

	waitFor(t, 60*time.Second, "Prometheus scraping all 8 erlmcp targets", func() error {
		select {
		case <-prom.exited:
			t.Fatalf("prometheus exited: %v", prom.cmd.ProcessState)
		default:
		}
		n, _, err := promQuery(ctx, promURL, `count(up{job="erlmcp"} == 1)`)
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("no erlmcp target up yet")
		}
		var all struct {
			Data struct {
				ActiveTargets []struct {
					Labels    map[string]string `json:"labels"`
					Health    string            `json:"health"`
					LastError string            `json:"lastError"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		resp, err := http.Get(promURL + "/api/v1/targets?state=active")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
			return err
		}
		up := 0
		var bad []string
		for _, tg := range all.Data.ActiveTargets {
			if tg.Health == "up" {
				up++
			} else {
				bad = append(bad, fmt.Sprintf("%s/%s: %s %s", tg.Labels["role"], tg.Labels["node"], tg.Health, tg.LastError))
			}
		}
		if up != 8 {
			return fmt.Errorf("%d targets up; others: %v", up, bad)
		}
		return nil
	})

	// The seed's SLA names, then every panel query. Rates need a few
	// scrapes, so a query may be empty for a while; one that does not
	// parse fails at once.
	seed := map[string]string{}
	for _, name := range []string{"erlmcp_uptime", "erlmcp_response_time_p95", "erlmcp_error_rate",
		"erlmcp_cpu_utilization", "erlmcp_memory_utilization"} {
		seed["seed series / "+name] = name
	}
	seed["seed series / erlmcp_session_failover_time"] = "erlmcp_session_failover_time or vector(0)"
	all := map[string]string{}
	for k, v := range queries {
		expr := dashboardVars.Replace(v)
		if strings.Contains(expr, "$") {
			t.Errorf("%s: template variable the test does not know: %s", k, v)
			continue
		}
		all[k] = expr
	}
	for k, v := range seed {
		all[k] = v
	}
	var pending []string
	deadline := time.Now().Add(90 * time.Second)
	for {
		pending = pending[:0]
		for k, expr := range all {
			n, permanent, err := promQuery(ctx, promURL, expr)
			switch {
			case permanent:
				t.Fatalf("%s: Prometheus rejects %q: %v", k, expr, err)
			case err != nil:
				pending = append(pending, fmt.Sprintf("%s: %v", k, err))
			case n == 0:
				pending = append(pending, fmt.Sprintf("%s: no data for %s", k, expr))
			}
		}
		if len(pending) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	sort.Strings(pending)
	for _, p := range pending {
		t.Errorf("%s", p)
	}
	if t.Failed() {
		return
	}

	// A real failover (by the admin API, as an operator would): the
	// failover-time series appears and ErlmcpFailoverHappened fires from
	// the control plane's real counters.
	out, err := exec.Command(binary, "ctl", "--data-dir", dataDir, "regions", "--json").Output()
	if err != nil {
		t.Fatalf("ctl regions: %v (%s)", err, exitStderr(err))
	}
	var regions []struct{ Name, State string }
	if err := json.Unmarshal(out, &regions); err != nil {
		t.Fatalf("ctl regions --json: %v\n%s", err, out)
	}
	active := ""
	for _, r := range regions {
		if r.State == "active" {
			active = r.Name
		}
	}
	if active == "" {
		t.Fatalf("no active region in %s", out)
	}
	if out, err := exec.Command(binary, "ctl", "--data-dir", dataDir, "region", "failover", active).CombinedOutput(); err != nil {
		t.Fatalf("ctl region failover %s: %v\n%s", active, err, out)
	}
	for _, expr := range []string{
		"erlmcp_session_failover_time",
		`ALERTS{alertname="ErlmcpFailoverHappened",alertstate="firing"}`,
	} {
		waitFor(t, 60*time.Second, expr+" after a failover", func() error {
			n, _, err := promQuery(ctx, promURL, expr)
			if err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("no data")
			}
			return nil
		})
	}

	ok, failed := 0, 0
	for i, l := range sessions {
		o, f := l.counts()
		ok, failed = ok+o, failed+f
		l.mu.Lock()
		for j, err := range l.errs {
			if j == 3 {
				break
			}
			t.Logf("load session %d: call failed at %s: %v", i, l.errAt[j].Format(time.TimeOnly), err)
		}
		l.mu.Unlock()
	}
	t.Logf("%d queries (%d panel targets) returned data; load: %d calls, %d failed", len(all)-len(pending), len(queries), ok, failed)
	if ok == 0 {
		t.Errorf("the load made no successful call")
	}
}

// fileSDTarget is one group of a Prometheus file_sd file.
type fileSDTarget struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}
