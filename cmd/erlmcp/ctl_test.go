package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/controlplane"
	"github.com/erlmcp/erlmcp/internal/localcluster"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

func noEnv(string) (string, bool) { return "", false }

func ctl(t *testing.T, lookup func(string) (string, bool), args ...string) (int, string, string) {
	t.Helper()
	if lookup == nil {
		lookup = noEnv
	}
	var out, errb bytes.Buffer
	code := runCtl(context.Background(), args, &out, &errb, lookup)
	return code, out.String(), errb.String()
}

func startTestControlPlane(t *testing.T) (*controlplane.ControlPlane, *testcluster.Etcd) {
	t.Helper()
	e := testcluster.StartEtcd(t)
	cfg := controlplane.DefaultConfig()
	cfg.Common.ID = "cp-1"
	cfg.Common.EtcdEndpoints = e.Endpoint
	cfg.Common.Prefix = e.Prefix
	cfg.Common.LeaseTTL = 2 * time.Second
	cfg.AdminListen = "127.0.0.1:0"
	cfg.AdminToken = "tok"
	cfg.ElectionTTL = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cp, err := controlplane.Start(ctx, cfg, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Close)
	testcluster.WaitFor(t, 5*time.Second, "leader", func() error {
		if !cp.IsLeader() {
			return testcluster.Errorf("not leader yet")
		}
		return nil
	})
	return cp, e
}

func TestCtlAgainstControlPlane(t *testing.T) {
	cp, _ := startTestControlPlane(t)
	dir := t.TempDir()
	dead := "http://" + testcluster.FreeAddr(t)
	err := localcluster.WriteClusterFile(filepath.Join(dir, clusterJSONName),
		localcluster.ClusterFile{MCPURL: "http://127.0.0.1:1/mcp", AdminURLs: []string{dead, cp.AdminURL()}, AdminToken: "tok"})
	if err != nil {
		t.Fatal(err)
	}

	// members --json: the first URL is dead, the second answers.
	code, out, errs := ctl(t, nil, "--data-dir", dir, "members", "--json")
	if code != exitOK {
		t.Fatalf("members --json: exit %d, stderr %s", code, errs)
	}
	var ms []controlplane.MemberStatus
	if err := json.Unmarshal([]byte(out), &ms); err != nil {
		t.Fatalf("members --json output does not decode: %v\n%s", err, out)
	}
	if len(ms) != 1 || ms[0].Role != "controlplane" || ms[0].ID != "cp-1" || !ms[0].Healthy || ms[0].Addr != cp.AdminAddr() {
		t.Fatalf("members = %+v", ms)
	}

	// Table, with the data dir from the environment and flags after the command.
	env := func(k string) (string, bool) {
		if k == envDataDir {
			return dir, true
		}
		return "", false
	}
	code, out, errs = ctl(t, env, "members")
	if code != exitOK || !strings.HasPrefix(out, "ROLE") || !strings.Contains(strings.Fields(strings.SplitN(out, "\n", 2)[0])[6], "HEALTHY") ||
		!strings.Contains(out, "cp-1") || !strings.Contains(out, "yes") {
		t.Fatalf("members table: exit %d\n%s\nstderr %s", code, out, errs)
	}

	code, out, errs = ctl(t, nil, "leader", "--admin-url", cp.AdminURL(), "--token", "tok")
	if code != exitOK || !strings.Contains(out, "cp-1") || !strings.Contains(out, cp.AdminAddr()) {
		t.Fatalf("leader: exit %d\n%s\nstderr %s", code, out, errs)
	}
	testcluster.WaitFor(t, 5*time.Second, "cluster created", func() error {
		code, out, errs = ctl(t, env, "cluster")
		if code != exitOK || !strings.Contains(out, "shard count 64") {
			return testcluster.Errorf("cluster: exit %d %s %s", code, out, errs)
		}
		return nil
	})
	if !strings.Contains(out, "SHARD") {
		t.Fatalf("cluster output lacks the shard table:\n%s", out)
	}

	// A wrong token is named as such.
	code, _, errs = ctl(t, nil, "--data-dir", dir, "--token", "bad", "leader")
	if code != exitFailure || !strings.Contains(errs, "rejected the token") {
		t.Fatalf("bad token: exit %d, stderr %s", code, errs)
	}
	// Token from the environment.
	tokEnv := func(k string) (string, bool) {
		if k == envAdminToken {
			return "tok", true
		}
		if k == envAdminURL {
			return cp.AdminURL(), true
		}
		return "", false
	}
	if code, _, errs = ctl(t, tokEnv, "--data-dir", t.TempDir(), "leader"); code != exitOK {
		t.Fatalf("leader with env url and token: exit %d, stderr %s", code, errs)
	}
}

func TestCtlErrors(t *testing.T) {
	empty := t.TempDir()
	code, _, errs := ctl(t, nil, "--data-dir", empty, "members")
	abs, _ := filepath.Abs(empty)
	if code != exitFailure || !strings.Contains(errs, "no local cluster at "+abs) || !strings.Contains(errs, "erlmcp up") {
		t.Fatalf("missing cluster.json: exit %d, stderr %s", code, errs)
	}

	a, b := "http://"+testcluster.FreeAddr(t), "http://"+testcluster.FreeAddr(t)
	code, _, errs = ctl(t, nil, "--admin-url", a+","+b, "--token", "x", "members")
	if code != exitFailure || !strings.Contains(errs, a) || !strings.Contains(errs, b) {
		t.Fatalf("unreachable: exit %d, stderr %s", code, errs)
	}

	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"--bogus", "members"},
		{"members", "--bogus"},
		{"members", "extra"},
		{"--data-dir", empty, "--admin-url", a, "members"}, // no token anywhere
	} {
		if code, _, errs := ctl(t, nil, args...); code != exitUsage {
			t.Errorf("ctl %q: exit %d, want %d (stderr %s)", args, code, exitUsage, errs)
		}
	}

	code, out, _ := ctl(t, nil, "--help")
	for _, want := range []string{"members", "leader", "cluster", "--admin-url", "ERLMCP_ADMIN_URL", "--token", "ERLMCP_ADMIN_TOKEN", "--data-dir", "ERLMCP_DATA_DIR", "--json", "cluster.json"} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Fatalf("ctl --help (exit %d) lacks %q:\n%s", code, want, out)
		}
	}
	code, out, _ = ctl(t, nil, "members", "--help")
	for _, want := range []string{"ROLE ID ADDR REGION ZONE PID HEALTHY", "--json", "--admin-url", "--token", "--data-dir"} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Fatalf("ctl members --help (exit %d) lacks %q:\n%s", code, want, out)
		}
	}
}

func TestCmdControlPlaneUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := cmdControlPlane(context.Background(), []string{"--help"}, &out, &errb); code != exitOK {
		t.Fatalf("--help: exit %d", code)
	}
	for _, want := range []string{"--admin-listen", "--admin-token", "--admin-token-file", "--shard-count", "--replication-factor", "--election-ttl", "--placement-settle", "ERLMCP_ADMIN_TOKEN"} {
		if !strings.Contains(errb.String(), want) {
			t.Fatalf("--help lacks %q:\n%s", want, errb.String())
		}
	}
	t.Setenv("ERLMCP_ADMIN_TOKEN", "")
	os.Unsetenv("ERLMCP_ADMIN_TOKEN")
	errb.Reset()
	if code := cmdControlPlane(context.Background(), []string{"--id", "cp"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "no admin token") {
		t.Fatalf("no token: exit %d, stderr %s", code, errb.String())
	}
	errb.Reset()
	if code := cmdControlPlane(context.Background(), []string{"--id", "cp", "--admin-token", "t", "--shard-count", "0"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "--shard-count") {
		t.Fatalf("bad shard count: exit %d, stderr %s", code, errb.String())
	}
}

// adminEnv is the environment of a ctl that talks to cp with its token.
func adminEnv(cp *controlplane.ControlPlane) func(string) (string, bool) {
	return func(k string) (string, bool) {
		switch k {
		case envAdminURL:
			return cp.AdminURL(), true
		case envAdminToken:
			return "tok", true
		}
		return "", false
	}
}

func TestCtlRegionsShardsHistoryOps(t *testing.T) {
	cp, _ := startTestControlPlane(t)
	env := adminEnv(cp)
	// The leader registers its own region ("local") as primary and active.
	var out, errs string
	var code int
	testcluster.WaitFor(t, 5*time.Second, "region registered", func() error {
		code, out, errs = ctl(t, env, "regions")
		if code != exitOK || !strings.Contains(out, "local") || !strings.Contains(out, "active") {
			return testcluster.Errorf("regions: exit %d %s %s", code, out, errs)
		}
		return nil
	})
	if !strings.HasPrefix(out, "NAME") {
		t.Fatalf("regions table:\n%s", out)
	}
	// One region: nowhere to fail over to (409, exit 1, message says why).
	code, _, errs = ctl(t, env, "region", "failover", "local")
	if code != exitFailure || !strings.Contains(errs, "no region to fail over to") {
		t.Fatalf("region failover: exit %d, stderr %s", code, errs)
	}
	code, _, errs = ctl(t, env, "region", "failback", "mars")
	if code != exitFailure || !strings.Contains(errs, "regions are: local") {
		t.Fatalf("unknown region: exit %d, stderr %s", code, errs)
	}
	// Failback to the active region is a recorded no-op.
	code, out, errs = ctl(t, env, "region", "failback", "local", "--json")
	var h controlplane.HistoryEntry
	if code != exitOK || json.Unmarshal([]byte(out), &h) != nil || h.Outcome != "noop" || h.Kind != controlplane.HistoryManualFailback {
		t.Fatalf("region failback --json: exit %d\n%s\nstderr %s", code, out, errs)
	}
	code, out, errs = ctl(t, env, "history")
	if code != exitOK || !strings.Contains(out, "manual_failback") || !strings.Contains(out, "noop") {
		t.Fatalf("history: exit %d\n%s\nstderr %s", code, out, errs)
	}
	for _, c := range []string{"shards", "ops"} {
		if code, out, errs = ctl(t, env, c, "--json"); code != exitOK || !strings.HasPrefix(out, "[") {
			t.Fatalf("%s --json: exit %d\n%s\nstderr %s", c, code, out, errs)
		}
		if code, out, errs = ctl(t, env, c); code != exitOK {
			t.Fatalf("%s: exit %d\n%s\nstderr %s", c, code, out, errs)
		}
	}
	for _, args := range [][]string{{"region"}, {"region", "failover"}, {"region", "explode", "local"}, {"regions", "extra"}} {
		if code, _, errs := ctl(t, env, args...); code != exitUsage {
			t.Errorf("ctl %q: exit %d, want %d (stderr %s)", args, code, exitUsage, errs)
		}
	}
}
