package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/loadgen"
)

const deployScript = "../scripts/zero-downtime-deploy.sh"

// runDeploy runs the deploy script against c and returns its exit code and
// output. The gates are loose on latency (a shared 2-core CI box answers
// slowly) and strict on errors, which is what the bad release trips.
func runDeploy(t *testing.T, c *cluster, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args = append(args, "--data-dir", c.dataDir, "--erlmcp", binary,
		"--window", "2s", "--min-requests", "5", "--max-wait", "30s", "--max-p95", "5s", "--max-error-rate", "0.01")
	cmd := exec.CommandContext(ctx, "bash", append([]string{deployScript}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	default:
		t.Fatalf("deploy %v: %v\n%s", args, err, out.String())
		return -1, ""
	}
}

// underLoad runs fn while loadgen drives sessions with counters through the
// front, and returns the load's report: the load starts before fn and ends
// a moment after it, so every step of a deploy happens under load.
func underLoad(t *testing.T, c *cluster, fn func()) loadgen.Report {
	t.Helper()
	cfg := loadgen.DefaultConfig()
	cfg.URL = c.mcpURL()
	cfg.Sessions, cfg.Concurrency = 6, 6
	cfg.Rate = 30
	cfg.Duration = 5 * time.Minute // cut short below
	cfg.Timeout = 10 * time.Second
	cfg.Mix = loadgen.Mix{loadgen.OpEcho: 5, loadgen.OpCounter: 4, loadgen.OpList: 1}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		rep loadgen.Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := loadgen.Run(ctx, cfg, nil)
		done <- result{rep, err}
	}()
	// Let every slot open its session before the deploy starts, and keep
	// the load on a moment after it ends (a fixed pause is fine here: it
	// only widens the window under load, nothing waits on it).
	time.Sleep(time.Second)
	fn()
	time.Sleep(time.Second)
	cancel()
	r := <-done
	if r.err != nil {
		t.Fatalf("load: %v", r.err)
	}
	return r.rep
}

// versions returns the worker versions registered now, e.g. map[v2:3].
func versions(t *testing.T, c *cluster) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "ctl", "deploy", "status", "--plain", "--data-dir", c.dataDir).Output()
	if err != nil {
		t.Fatalf("ctl deploy status: %v (%s)", err, exitStderr(err))
	}
	got := map[string]int{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 5 && f[0] == "worker" && f[4] == "false" {
			got[f[2]]++
		}
		if len(f) == 3 && f[0] == "traffic" && f[1] != "-" {
			t.Fatalf("a traffic split is left behind: %s", l)
		}
	}
	return got
}

func checkLoad(t *testing.T, what string, rep loadgen.Report, maxErrors int64) {
	t.Helper()
	t.Logf("%s: %d requests, %d errors %v, sessions lost %d, writes lost %d, skipped %d, counter acks %d",
		what, rep.Requests, rep.Errors.Total, rep.Errors.ByKind, rep.Continuity.SessionsLost, rep.Continuity.WritesLost, rep.Continuity.Skipped, rep.Continuity.CounterAcks)
	if rep.Requests < 100 || rep.Continuity.CounterAcks < 20 {
		t.Errorf("%s: too little load to prove anything: %d requests, %d counter acks", what, rep.Requests, rep.Continuity.CounterAcks)
	}
	if rep.Errors.Total > maxErrors {
		t.Errorf("%s: %d client errors, want at most %d: %v", what, rep.Errors.Total, maxErrors, rep.Errors.Samples)
	}
	if rep.Continuity.SessionsLost != 0 || rep.Sessions.Lost != 0 || rep.Continuity.WritesLost != 0 || rep.Continuity.Skipped != 0 {
		t.Errorf("%s: sessions lost %d/%d, writes lost %d, skipped %d; want 0", what, rep.Continuity.SessionsLost, rep.Sessions.Lost, rep.Continuity.WritesLost, rep.Continuity.Skipped)
	}
}

// TestZeroDowntimeDeploy: on one `erlmcp up` cluster under continuous load,
// a canary (dev → v2) and a blue-green (v2 → v3) finish with 0 client
// errors and 0 sessions lost; then a broken release (every session store
// call of its workers times out) is rolled back by the canary gate on its
// own, the old workers serving throughout and no session lost; and
// --rollback takes the cluster back to v2, again with 0 errors; and a
// restarted up runs v2.
func TestZeroDowntimeDeploy(t *testing.T) {
	dataDir, p := t.TempDir(), pickPorts(t)
	c := startUp(t, dataDir, p)
	rel := filepath.Join(c.dataDir, "releases")
	for _, v := range []string{"v2", "v3", "v4-bad"} {
		if err := os.MkdirAll(filepath.Join(rel, v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []string{"v2", "v3"} {
		if err := os.Symlink(binary, filepath.Join(rel, v, "erlmcp")); err != nil {
			t.Fatal(err)
		}
	}
	// The bad release: the same binary with a store-call budget nothing can
	// meet, so its workers start and pass /readyz but answer 503.
	bad := fmt.Sprintf("#!/bin/sh\nexec %q \"$@\" --request-timeout=1ns\n", binary)
	if err := os.WriteFile(filepath.Join(rel, "v4-bad", "erlmcp"), []byte(bad), 0o755); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "3 workers of version dev", func() error {
		if v := versions(t, c); v["dev"] != 3 || len(v) != 1 {
			return fmt.Errorf("versions %v", v)
		}
		return nil
	})
	c.steady()

	var code int
	var out string
	rep := underLoad(t, c, func() { code, out = runDeploy(t, c, "v2", "--canary") })
	t.Logf("canary:\n%s", out)
	if code != 0 || !strings.Contains(out, "traffic: 10% to v2") || !strings.Contains(out, "traffic: 50% to v2") {
		t.Fatalf("canary exited %d, want 0 through the 10%% and 50%% steps", code)
	}
	if v := versions(t, c); v["v2"] != 3 || len(v) != 1 {
		t.Fatalf("after the canary: versions %v, want only 3 of v2", v)
	}
	checkLoad(t, "canary", rep, 0)

	rep = underLoad(t, c, func() { code, out = runDeploy(t, c, "v3", "--bluegreen") })
	t.Logf("blue-green:\n%s", out)
	if code != 0 || !strings.Contains(out, "traffic: 100% to v3") || strings.Contains(out, "traffic: 10% to v3") {
		t.Fatalf("blue-green exited %d, want 0 with one switch", code)
	}
	if v := versions(t, c); v["v3"] != 3 || len(v) != 1 {
		t.Fatalf("after the blue-green: versions %v, want only 3 of v3", v)
	}
	checkLoad(t, "blue-green", rep, 0)

	// The bad canary's 10 % meets 503s until the gate pulls it: those are
	// the only errors allowed, and they must be few.
	rep = underLoad(t, c, func() { code, out = runDeploy(t, c, "v4-bad") })
	t.Logf("bad canary:\n%s", out)
	if code != 1 || !strings.Contains(out, "gate missed (error rate)") || !strings.Contains(out, "rolled back: v3 serves all traffic") {
		t.Fatalf("bad canary exited %d, want 1 after an error-rate miss and a rollback", code)
	}
	if v := versions(t, c); v["v3"] != 3 || len(v) != 1 {
		t.Fatalf("after the rollback: versions %v, want only the 3 v3 workers", v)
	}
	checkLoad(t, "bad canary", rep, rep.Requests/10+5)
	for kind := range rep.Errors.ByKind {
		if kind != "http_503" {
			t.Errorf("bad canary: client error of kind %s; only the bad workers' 503s are expected", kind)
		}
	}

	// --rollback undoes the last deploy that finished (v2 → v3), not the
	// one that rolled itself back.
	rep = underLoad(t, c, func() { code, out = runDeploy(t, c, "--rollback") })
	t.Logf("rollback:\n%s", out)
	if code != 0 || !strings.Contains(out, "rollback: v3 -> v2") {
		t.Fatalf("rollback exited %d, want 0 going back to v2", code)
	}
	if v := versions(t, c); v["v2"] != 3 || len(v) != 1 {
		t.Fatalf("after --rollback: versions %v, want only 3 of v2", v)
	}
	checkLoad(t, "rollback", rep, 0)

	// A restarted up starts its workers from the release the last deploy
	// left (kept in the data dir), not from its own binary.
	c.stop()
	c = startUp(t, dataDir, p)
	waitFor(t, 60*time.Second, "3 workers of version v2 after a restart of up", func() error {
		if v := versions(t, c); v["v2"] != 3 || len(v) != 1 {
			return fmt.Errorf("versions %v", v)
		}
		return nil
	})
}

// TestZeroDowntimeDeployUsageAndKubernetesPlan: exit codes for bad usage and
// a missing cluster, and the kubectl plans --dry-run prints (no API server
// runs here, so the plan is what can be checked).
func TestZeroDowntimeDeployUsageAndKubernetesPlan(t *testing.T) {
	run := func(args ...string) (int, string) {
		cmd := exec.Command("bash", append([]string{deployScript}, args...)...)
		cmd.Env = append(os.Environ(), "KUBECTL=kubectl", "ERLMCP_ETCD_ENDPOINTS=")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := run("--help"); code != 0 || !strings.Contains(out, "Exit codes:") {
		t.Fatalf("--help: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{{}, {"v2", "--bogus"}, {"--rollback", "v2"}, {"v2", "--steps", "10 50"}, {"v 2"}, {"v2", "--dry-run"}} {
		if code, out := run(args...); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)\n%s", args, code, out)
		}
	}
	if code, out := run("v2", "--data-dir", t.TempDir(), "--erlmcp", binary); code != 3 || !strings.Contains(out, "no erlmcp up cluster") {
		t.Errorf("no cluster: exit %d, want 3\n%s", code, out)
	}

	code, out := run("v2", "--kubernetes", "--dry-run", "--namespace", "prod", "--image", "ghcr.io/acme/erlmcp", "--count", "4")
	if code != 0 {
		t.Fatalf("canary plan: exit %d\n%s", code, out)
	}
	plan := commands(out)
	for _, want := range []string{
		"kubectl -n prod get deployment/erlmcp-worker -o yaml | sed",
		"kubectl -n prod set env deployment/erlmcp-worker-canary ERLMCP_VERSION_LABEL=v2",
		"kubectl -n prod scale deployment/erlmcp-worker-canary --replicas=1", // 10% of 4
		"kubectl -n prod scale deployment/erlmcp-worker-canary --replicas=2", // 50% of 4
		"erlmcp ctl deploy gate --etcd-endpoints",                            // gated steps
		"kubectl -n prod set image deployment/erlmcp-worker worker=ghcr.io/acme/erlmcp:v2",
		"kubectl -n prod rollout status deployment/erlmcp-worker --timeout=10m",
		"kubectl -n prod delete deployment/erlmcp-worker-canary --ignore-not-found",
	} {
		if !containsPrefix(plan, want) {
			t.Errorf("canary plan lacks %q:\n%s", want, out)
		}
	}
	if n := countPrefix(plan, "erlmcp ctl deploy gate"); n != 3 {
		t.Errorf("canary plan has %d gates, want 3 (10%%, 50%%, 100%%)", n)
	}
	if strings.Contains(out, "kubectl -n prod patch service") {
		t.Errorf("a canary must not touch the Service selector:\n%s", out)
	}

	code, out = run("v3", "--bluegreen", "--kubernetes", "--dry-run", "--image", "erlmcp")
	if code != 0 {
		t.Fatalf("blue-green plan: exit %d\n%s", code, out)
	}
	plan = commands(out)
	switchAt, gateAt, setImageAt := indexPrefix(plan, `kubectl -n erlmcp patch service/erlmcp-worker -p '{"spec":{"selector":{"erlmcp.io/track":"green"}}}'`),
		indexPrefix(plan, "erlmcp ctl deploy gate"), indexPrefix(plan, "kubectl -n erlmcp set image deployment/erlmcp-worker worker=erlmcp:v3")
	if switchAt < 0 || gateAt < switchAt || setImageAt < gateAt {
		t.Errorf("blue-green plan must switch the Service to green, gate, then roll blue (at %d, %d, %d):\n%s", switchAt, gateAt, setImageAt, out)
	}
	if !strings.Contains(out, "erlmcp.io/track: green") {
		t.Errorf("green pods are not labelled for the Service switch:\n%s", out)
	}

	code, out = run("--rollback", "--kubernetes", "--dry-run")
	if code != 0 || !containsPrefix(commands(out), "kubectl -n erlmcp rollout undo deployment/erlmcp-worker") {
		t.Errorf("rollback plan: exit %d\n%s", code, out)
	}
}

// commands are the "+ " lines of a plan.
func commands(out string) []string {
	var cs []string
	for _, l := range strings.Split(out, "\n") {
		if c, ok := strings.CutPrefix(l, "+ "); ok {
			cs = append(cs, c)
		}
	}
	return cs
}

func indexPrefix(cs []string, p string) int {
	for i, c := range cs {
		if strings.HasPrefix(c, p) {
			return i
		}
	}
	return -1
}

func containsPrefix(cs []string, p string) bool { return indexPrefix(cs, p) >= 0 }

func countPrefix(cs []string, p string) int {
	n := 0
	for _, c := range cs {
		if strings.HasPrefix(c, p) {
			n++
		}
	}
	return n
}
