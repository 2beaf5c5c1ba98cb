package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/loadgen"
)

// haCluster is an `erlmcp up` started for the HA tests, with every port in
// one run of free loopback ports from base (the layout of
// scripts/ha-load-test.sh).
type haCluster struct {
	dataDir string
	base    int
	cmd     *exec.Cmd
	mu      sync.Mutex
	out     strings.Builder
	exited  chan struct{}
	up      *loadgen.UpCluster
}

func (c *haCluster) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func (c *haCluster) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

// startHAUp starts `erlmcp up` with args after the port flags and env added
// to the environment, waits for it to be ready and steady, and stops it
// (SIGTERM, then SIGKILL) when the test ends.
func startHAUp(t *testing.T, env []string, args ...string) *haCluster {
	t.Helper()
	c := &haCluster{dataDir: haDataDir(t), base: freeRun(t, 80, map[int]bool{}), exited: make(chan struct{})}
	b := c.base
	all := append([]string{"up", "--data-dir", c.dataDir,
		"--listen", fmt.Sprintf("127.0.0.1:%d", b), "--front-port-base", strconv.Itoa(b + 1),
		"--admin-port-base", strconv.Itoa(b + 10), "--worker-port-base", strconv.Itoa(b + 20),
		"--store-port-base", strconv.Itoa(b + 30), "--store-http-port-base", strconv.Itoa(b + 40),
		"--etcd-client-port", strconv.Itoa(b + 50), "--etcd-peer-port", strconv.Itoa(b + 51),
		"--store-proxy-port-base", strconv.Itoa(b + 60)}, args...)
	c.cmd = exec.Command(binary, all...)
	c.cmd.Env = append(os.Environ(), env...)
	if level := os.Getenv("ERLMCP_HA_LOG_LEVEL"); level != "" {
		c.cmd.Env = append(c.cmd.Env, "ERLMCP_LOG_LEVEL="+level) // the last one counts
	}
	c.cmd.Stderr = c
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start erlmcp up: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			fmt.Fprintln(c, sc.Text())
			if sc.Text() == "ready" {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(30 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
		if t.Failed() {
			t.Logf("erlmcp up output:\n%s", tail(c.output(), 60))
		}
	})
	select {
	case <-ready:
	case <-c.exited:
		t.Fatalf("erlmcp up exited before ready:\n%s", c.output())
	case <-time.After(3 * time.Minute):
		t.Fatalf("erlmcp up not ready after 3m:\n%s", c.output())
	}
	up, err := loadgen.OpenUpCluster(c.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	c.up = up
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := up.WaitHealthy(ctx, 3*time.Minute); err != nil {
		t.Fatalf("cluster not steady: %v", err)
	}
	return c
}

// haEnv is the environment of a cluster for the HA tests: failure
// detection in seconds, so a scenario takes seconds. ERLMCP_HA_LOG_LEVEL
// overrides its log level (startHAUp); at debug the workers log every
// request's timing (store calls, settle wait, queueing), to trace a
// stall in a scenario's report to where its time went.
var haEnv = []string{
	"ERLMCP_LOG_LEVEL=info",
	"ERLMCP_PROBE_INTERVAL=1s",
	"ERLMCP_REGION_FAIL_AFTER=3",
	"ERLMCP_REGION_PROBE_WINDOW=4",
}

// haDataDir is the cluster's data dir: a new directory under
// ERLMCP_HA_KEEP_DIR, kept after the test with the processes' logs (in
// its logs/) and the scenarios' reports (in reports/), or a temporary one.
func haDataDir(t *testing.T) string {
	keep := os.Getenv("ERLMCP_HA_KEEP_DIR")
	if keep == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(keep, 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(keep, "ha-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster data, logs and reports kept in %s", dir)
	return dir
}

// haSeed is ERLMCP_HA_SEED, or a new one each run (logged for replay).
func haSeed(t *testing.T) string {
	if s := os.Getenv("ERLMCP_HA_SEED"); s != "" {
		return s
	}
	return strconv.FormatInt(time.Now().UnixNano()%1_000_000_007, 10)
}

// TestHALoadScenarios runs every scenario of scripts/ha-load-test.sh, each
// a subtest, against one `erlmcp up` (4 stores, 2 fronts, 3 etcd member
// processes, store fault proxies) while the load runs, with the issue's
// budgets; the script prints each verdict. A scenario always fails the
// test when it breaks the data budgets (a session or an
// acknowledged write lost, a skipped increment: a counter write applied
// that the client never sent), when a fault was not injected or when no
// load was served. Every other miss the script reports (failover time per
// fault, p95 under steady load, client errors beyond those in flight on
// the faulty processes or outside any fault) fails it only with
// ERLMCP_HA_STRICT=1 (make chaos); otherwise it
// is logged as MISSED, so make test on a shared 2-core machine is a
// data-safety gate that still shows every figure. The stopped region must
// be failed over (a history entry) before it comes back, always: 20 s of
// hold leave room for the worst case, a region holding the control-plane
// leader and the etcd leader (the etcd election, then the leader's lease
// renewed to a full TTL, then the standby's term; 12-13 s at load 30).
// ERLMCP_HA_LONG=1 runs the long version.
func TestHALoadScenarios(t *testing.T) {
	seed := haSeed(t)
	long := os.Getenv("ERLMCP_HA_LONG") == "1"
	strict := os.Getenv("ERLMCP_HA_STRICT") == "1"
	c := startHAUp(t, haEnv, "--stores", "4", "--fronts", "2", "--etcd-members", "3", "--store-fault-proxies")
	t.Logf("seed %s (replay with ERLMCP_HA_SEED=%s); cluster in %s", seed, seed, c.dataDir)

	phase, regionHold := "3", "20s"
	if long {
		phase, regionHold = "20", "40s"
	}
	script, err := filepath.Abs("../scripts/ha-load-test.sh")
	if err != nil {
		t.Fatal(err)
	}
	// The baseline's slowest steady answer is the stall reference of the
	// faulted scenarios after it (loadtest --stall-reference): their own
	// fault-free lead-in is a few seconds.
	var stallRef time.Duration
	for _, sc := range []string{"baseline", "worker_failure", "store_failure", "store_follower_failure",
		"controlplane_failure", "etcd_failure", "front_failure", "pause", "partition", "rolling_restart", "region_failure"} {
		t.Run(sc, func(t *testing.T) {
			reports := t.TempDir()
			if os.Getenv("ERLMCP_HA_KEEP_DIR") != "" {
				reports = filepath.Join(c.dataDir, "reports")
			}
			cmd := exec.Command("bash", script, sc)
			cmd.Env = append(os.Environ(), "ERLMCP_BIN="+binary, "HA_DATA_DIR="+c.dataDir, "HA_REPORT_DIR="+reports,
				"HA_SEED="+seed, "HA_PHASE="+phase, "HA_REGION_HOLD="+regionHold)
			if stallRef > 0 {
				cmd.Env = append(cmd.Env, "HA_STALL_REFERENCE="+stallRef.String())
			}
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("running %s: %v", script, err)
			}
			t.Logf("seed %s, exit %d:\n%s", seed, code, out)
			rep := readReport(t, filepath.Join(reports, sc+".json"))
			if rep == nil {
				t.Fatalf("no report written (exit %d)", code)
			}
			if sc == "baseline" {
				stallRef = rep.SteadyMax()
			}
			for _, v := range checkSafety(rep) {
				t.Errorf("seed %s: %s", seed, v)
			}
			missed := func(format string, a ...any) {
				if strict {
					t.Errorf("seed %s: budget missed: "+format, append([]any{seed}, a...)...)
				} else {
					t.Logf("MISSED (availability budget; fatal with ERLMCP_HA_STRICT=1): "+format, a...)
				}
			}
			for _, v := range rep.Violations {
				missed("%s", v)
			}
			if (code == 0) != (len(rep.Violations) == 0) {
				t.Errorf("seed %s: script exit %d but the report lists violations %v", seed, code, rep.Violations)
			}
			if sc == "region_failure" {
				if err := regionFailedOver(t, c, rep); err != nil {
					t.Errorf("seed %s: %v", seed, err)
				}
			}
			if t.Failed() {
				t.Logf("recorded history: report %s, fault log %s", filepath.Join(reports, sc+".json"), filepath.Join(reports, sc+".log"))
				printHistory(t, c)
			}
		})
	}
}

// readReport reads a loadtest report file, nil when there is none.
func readReport(t *testing.T, path string) *loadgen.Report {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var r loadgen.Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("report %s: %v", path, err)
	}
	return &r
}

// checkSafety lists what the run broke of the budgets that hold on any
// machine, however slow: no session or acknowledged write lost, every
// fault injected, load served.
func checkSafety(r *loadgen.Report) []string {
	var v []string
	if r.Requests == 0 {
		v = append(v, "no operation completed")
	}
	if r.Continuity.SessionsLost != 0 {
		v = append(v, fmt.Sprintf("%d sessions lost %v", r.Continuity.SessionsLost, r.Continuity.SessionsLostByReason))
	}
	if r.Continuity.WritesLost != 0 {
		v = append(v, fmt.Sprintf("acknowledged writes lost %d", r.Continuity.WritesLost))
	}
	if r.Continuity.Skipped != 0 {
		v = append(v, fmt.Sprintf("counter increments skipped %d (a write applied that the client never sent)", r.Continuity.Skipped))
	}
	if !r.Continuity.Checked {
		v = append(v, "continuity not checked: no counter operation ran")
	}
	for _, f := range r.Faults {
		if f.Error != "" || f.InjectedAtS == 0 && f.DoneAtS == 0 {
			v = append(v, fmt.Sprintf("fault %s not injected: %s", f.Spec, f.Error))
		}
	}
	return v
}

// regionFailedOver: after every process of the active region was stopped,
// the control plane failed it over to another region and wrote a history
// entry saying so (waited for up to 30 s after the load).
func regionFailedOver(t *testing.T, c *haCluster, rep *loadgen.Report) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var hs []struct {
		Kind, From, To, Outcome, Reason string
		Start, End                      time.Time
	}
	if len(rep.Faults) != 1 || len(rep.Faults[0].Victims) == 0 {
		t.Fatalf("no region fault in the report: %+v", rep.Faults)
	}
	region := rep.Faults[0].Victims[0].Region
	var last error
	for ctx.Err() == nil {
		hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
		last = c.up.Get(hctx, "/v1/history", &hs)
		hcancel()
		if last == nil {
			for _, h := range hs {
				if h.Kind == "region_failover" && h.From == region {
					injected := rep.StartedAt.Add(time.Duration(rep.Faults[0].InjectedAtS * float64(time.Second)))
					// Where the clients' failover time went: the control
					// plane's detection (to Start) and its actions (to End),
					// beside what the clients saw.
					t.Logf("region %s failed over to %s (%s): control plane started %s and ended %s after the stop; clients unserved at most %.0fms; reason %q",
						h.From, h.To, h.Outcome, h.Start.Sub(injected).Round(time.Millisecond), h.End.Sub(injected).Round(time.Millisecond),
						rep.Faults[0].FailoverMS, h.Reason)
					return nil
				}
			}
			last = fmt.Errorf("history has no region_failover from %s: %+v", region, hs)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return fmt.Errorf("region %s not failed over: %w", region, last)
}

func printHistory(t *testing.T, c *haCluster) {
	out, err := exec.Command(binary, "ctl", "--data-dir", c.dataDir, "history").CombinedOutput()
	t.Logf("ctl history (err %v):\n%s", err, out)
}
