package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/loadgen"
)

// drScript runs scripts/disaster-recovery.sh against the cluster of
// dataDir and returns its exit code, stdout and stderr.
func drScript(t *testing.T, dataDir string, p ports, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../scripts/disaster-recovery.sh", args...)
	cmd.Env = append(os.Environ(), "ERLMCP_BIN="+binary, "ERLMCP_DATA_DIR="+dataDir,
		fmt.Sprintf("ERLMCP_ETCD_CLIENT_PORT=%d", p.etcdClient), fmt.Sprintf("ERLMCP_ETCD_PEER_PORT=%d", p.etcdPeer))
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("disaster-recovery.sh %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return code, out.String(), errb.String()
}

// counterCall adds 1 to the session's demo counter and returns the value.
func counterCall(ctx context.Context, s *loadgen.Session) (int64, error) {
	res, err := s.Call(ctx, "tools/call", map[string]any{"name": "counter", "arguments": map[string]any{"by": 1}})
	if err != nil {
		return 0, err
	}
	var r struct {
		Structured struct {
			Value int64 `json:"value"`
		} `json:"structuredContent"`
	}
	if err := json.Unmarshal(res.Result, &r); err != nil {
		return 0, fmt.Errorf("counter answer %.200s: %w", res.Result, err)
	}
	return r.Structured.Value, nil
}

// TestDisasterRecovery: on a real `erlmcp up`, disaster-recovery.sh check
// says healthy (exit 0), and degraded (exit 1) naming the store while a
// store node is stopped; secondary, backup and primary each switch the
// active region and verify it; snapshot backs up etcd and the store; after
// the cluster is stopped and its data dir destroyed, restore (etcd, cleaned
// of the old processes' leases), a fresh start and restore again (the
// sessions) bring every session back under its old id with its counter
// value, and only the new processes are members.
func TestDisasterRecovery(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "d")
	p := pickPorts(t)
	c := startUp(t, dataDir, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var report struct {
		Verdict  string   `json:"verdict"`
		Problems []string `json:"problems"`
		Stores   struct {
			Down []string `json:"down"`
		} `json:"stores"`
	}
	checkIs := func(code int, verdict string) {
		t.Helper()
		waitFor(t, 60*time.Second, "check verdict "+verdict, func() error {
			got, out, errOut := drScript(t, dataDir, p, "check", "--json")
			if err := json.Unmarshal([]byte(out), &report); err != nil {
				return fmt.Errorf("check --json (exit %d): %v: %s %s", got, err, out, errOut)
			}
			if got != code || report.Verdict != verdict {
				return fmt.Errorf("exit %d verdict %s %v", got, report.Verdict, report.Problems)
			}
			return nil
		})
	}
	checkIs(0, "healthy")

	// Sessions with counter state, through the front.
	cl := &loadgen.Client{URL: c.mcpURL(), HTTP: loadgen.NewHTTPClient(4, 3*time.Second), Protocol: "2025-11-25"}
	type sess struct {
		s     *loadgen.Session
		value int64
	}
	var sessions []*sess
	for i := range 4 {
		s, err := cl.Initialize(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ss := &sess{s: s}
		for range i + 2 {
			if ss.value, err = counterCall(ctx, s); err != nil {
				t.Fatalf("session %s: %v", s.ID, err)
			}
		}
		sessions = append(sessions, ss)
	}

	for _, step := range []struct{ verb, region string }{{"secondary", "(secondary)"}, {"backup", "(dr)"}, {"primary", "(primary)"}} {
		var code int
		var out, errOut string
		// The control plane refuses a switch to a region whose members its
		// probes have not yet seen healthy (a cluster just started); that
		// refusal says so, and the switch is retried until a deadline.
		waitFor(t, 30*time.Second, "switch to "+step.verb, func() error {
			code, out, errOut = drScript(t, dataDir, p, step.verb)
			if code != 0 && strings.Contains(out+errOut, "do not pass health probes") {
				return fmt.Errorf("exit %d: %s", code, strings.TrimSpace(errOut))
			}
			return nil
		})
		if code != 0 || !strings.Contains(out, step.region) {
			t.Fatalf("disaster-recovery.sh %s: exit %d\n%s\n%s", step.verb, code, out, errOut)
		}
		t.Logf("%s: %s", step.verb, strings.TrimSpace(out))
	}

	// A stopped store node: degraded, naming it.
	var storePID int
	for _, m := range c.members() {
		if m.Role == "store" && m.ID == "store-2" {
			storePID = m.PID
		}
	}
	if storePID == 0 {
		t.Fatal("store-2 not found among the members")
	}
	if err := syscall.Kill(storePID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = syscall.Kill(storePID, syscall.SIGCONT)
		}
	}()
	checkIs(1, "degraded")
	if !strings.Contains(strings.Join(report.Stores.Down, ","), "store-2") {
		t.Fatalf("degraded verdict does not name store-2 as down: %+v", report)
	}
	if err := syscall.Kill(storePID, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	checkIs(0, "healthy")

	backupDir := filepath.Join(t.TempDir(), "backup")
	if code, out, errOut := drScript(t, dataDir, p, "snapshot", backupDir); code != 0 {
		t.Fatalf("snapshot: exit %d\n%s\n%s", code, out, errOut)
	} else {
		t.Logf("snapshot: %s", strings.TrimSpace(out))
	}

	// Disaster: the cluster and its whole data dir are gone.
	c.stop()
	if err := os.RemoveAll(dataDir); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := drScript(t, dataDir, p, "restore", backupDir)
	if code != 0 || !strings.Contains(errOut, "phase etcd") || !strings.Contains(errOut, "leases of the old processes revoked") {
		t.Fatalf("restore (etcd): exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("restore etcd: %s", strings.TrimSpace(errOut))
	c = startUp(t, dataDir, p)
	code, out, errOut = drScript(t, dataDir, p, "restore", backupDir)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("sessions restored: %d", len(sessions))) {
		t.Fatalf("restore (sessions): exit %d\n%s\n%s", code, out, errOut)
	}
	for _, ss := range sessions {
		v, err := counterCall(ctx, ss.s)
		if err != nil {
			t.Fatalf("restored session %s: %v", ss.s.ID, err)
		}
		if v != ss.value+1 {
			t.Fatalf("restored session %s: counter %d after one more call, want %d", ss.s.ID, v, ss.value+1)
		}
	}
	// Only the new processes are members: no key of the old ones survived
	// (each member answers its health probe, one per id).
	seen := map[string]bool{}
	waitFor(t, 30*time.Second, "only live members", func() error {
		clear(seen)
		for _, m := range c.members() {
			if !m.Healthy {
				return fmt.Errorf("member %s/%s (pid %d) is not healthy", m.Role, m.ID, m.PID)
			}
			if seen[m.Role+"/"+m.ID] {
				return fmt.Errorf("member %s/%s listed twice", m.Role, m.ID)
			}
			seen[m.Role+"/"+m.ID] = true
		}
		return nil
	})
	checkIs(0, "healthy")
	c.stop()
}
