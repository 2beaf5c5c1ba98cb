package loadgen

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAdmin serves the admin API reads UpCluster uses, from fixed members
// and shards, checking the bearer token.
type fakeAdmin struct {
	mu      sync.Mutex
	members []Member
	shards  string
	leader  string
	// delay holds every answer back (a slow admin API).
	delay time.Duration
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer tok" {
		http.Error(w, "no", http.StatusUnauthorized)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-time.After(f.delay):
	case <-r.Context().Done():
		return
	}
	switch r.URL.Path {
	case "/v1/members":
		_ = json.NewEncoder(w).Encode(f.members)
	case "/v1/shards":
		fmt.Fprint(w, f.shards)
	case "/v1/leader":
		fmt.Fprintf(w, `{"id":%q}`, f.leader)
	default:
		http.NotFound(w, r)
	}
}

func newFakeUp(t *testing.T, f *fakeAdmin) *UpCluster {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	b, _ := json.Marshal(map[string]any{"mcp_url": "http://127.0.0.1:1/mcp", "front_urls": []string{"http://a/mcp", "http://b/mcp"},
		"admin_urls": []string{"http://127.0.0.1:1", srv.URL}, "admin_token": "tok"})
	if err := os.WriteFile(filepath.Join(dir, "cluster.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	u, err := OpenUpCluster(dir)
	if err != nil {
		t.Fatal(err)
	}
	fronts, err := FrontURLs(dir)
	if err != nil || strings.Join(fronts, " ") != "http://a/mcp http://b/mcp" {
		t.Errorf("FrontURLs = %v, %v", fronts, err)
	}
	return u
}

// TestUpClusterVictims: each target picks the process it names, through an
// admin API whose first URL is down (a dead leader's).
func TestUpClusterVictims(t *testing.T) {
	f := &fakeAdmin{
		members: []Member{
			{Role: "worker", ID: "worker-2", Region: "eu-west-1", PID: 12, Healthy: true},
			{Role: "worker", ID: "worker-1", Region: "us-east-1", PID: 11, Healthy: false},
			{Role: "store", ID: "store-1", Region: "us-east-1", PID: 21, Healthy: true},
			{Role: "store", ID: "store-2", Region: "eu-west-1", PID: 22, Healthy: true},
			{Role: "store", ID: "store-3", Region: "ap-southeast-1", PID: 23, Healthy: true},
			{Role: "controlplane", ID: "cp-1", Region: "us-east-1", PID: 31, Healthy: true},
			{Role: "controlplane", ID: "cp-2", Region: "eu-west-1", PID: 32, Healthy: true},
			{Role: "front", ID: "front-1", Region: "us-east-1", PID: 41, Healthy: true},
		},
		shards: `[{"shard":0,"leader":"store-2","replicas":[{"store":"store-1","role":"voter","lag":0},{"store":"store-2","role":"voter","lag":0}]},
		          {"shard":1,"leader":"store-2","replicas":[{"store":"store-2","role":"voter","lag":0},{"store":"store-1","role":"voter","lag":0}]},
		          {"shard":2,"leader":"store-1","replicas":[{"store":"store-1","role":"voter","lag":0},{"store":"store-2","role":"voter","lag":0}]}]`,
		leader: "cp-2",
	}
	u := newFakeUp(t, f)
	ctx := context.Background()
	for _, tc := range []struct {
		target string
		want   string // ids, comma-separated
	}{
		{TargetWorker, "worker-2"}, // worker-1 is unhealthy
		{TargetFront, "front-1"},
		{TargetStoreLeader, "store-2"},   // leads 2 of 3
		{TargetStoreFollower, "store-1"}, // leads 1; store-3 holds no replica
		{TargetCPLeader, "cp-2"},
		{TargetCPStandby, "cp-1"},
		{"region=us-east-1", "cp-1,front-1,store-1,worker-1"}, // sorted by role, then id
		{"id=store-3", "store-3"},
	} {
		vs, err := u.Victims(ctx, Fault{Target: tc.target})
		if err != nil {
			t.Errorf("%s: %v", tc.target, err)
			continue
		}
		var ids []string
		for _, v := range vs {
			ids = append(ids, v.ID)
		}
		if strings.Join(ids, ",") != tc.want {
			t.Errorf("%s hits %v, want %s", tc.target, ids, tc.want)
		}
	}
	if _, err := u.Victims(ctx, Fault{Target: "region=mars"}); err == nil {
		t.Errorf("region=mars: no error")
	}
	if err := u.Healthy(ctx); err == nil || !strings.Contains(err.Error(), "worker-1") {
		t.Errorf("Healthy with an unhealthy worker = %v", err)
	}
}

func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "gone"
	}
	// pid (comm) S ...
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return "?"
}

// TestUpClusterSignals: stop pauses the real process for the hold and
// resumes it; kill kills it.
func TestUpClusterSignals(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep binary: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() { _ = cmd.Process.Kill() }()
	f := &fakeAdmin{members: []Member{{Role: "worker", ID: "worker-1", PID: cmd.Process.Pid, Healthy: true}}, shards: `[]`, leader: "cp-1"}
	u := newFakeUp(t, f)
	ctx := context.Background()

	stop, _ := ParseFault("stop:worker@0s?hold=700ms")
	done := make(chan error, 1)
	go func() {
		_, err := u.Inject(ctx, stop, t.Logf)
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for procState(cmd.Process.Pid) != "T" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s := procState(cmd.Process.Pid); s != "T" {
		t.Fatalf("process state %s during the hold, want T (stopped)", s)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := procState(cmd.Process.Pid); s == "T" || s == "gone" {
		t.Fatalf("process state %s after the hold, want resumed", s)
	}

	kill, _ := ParseFault("kill:id=worker-1@0s")
	vs, err := u.Inject(ctx, kill, t.Logf)
	if err != nil || len(vs) != 1 || vs[0].PID != cmd.Process.Pid {
		t.Fatalf("kill: %v %v", vs, err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("killed process still running")
	}
}

// TestQuorumsIn: the shards a region holds a majority of the voters of,
// which a stop of that region leaves without a quorum.
func TestQuorumsIn(t *testing.T) {
	members := []Member{
		{Role: "store", ID: "store-1", Region: "us-east-1", PID: 21, Healthy: true},
		{Role: "store", ID: "store-4", Region: "us-east-1", PID: 24, Healthy: true},
		{Role: "store", ID: "store-2", Region: "eu-west-1", PID: 22, Healthy: true},
		{Role: "store", ID: "store-3", Region: "ap-southeast-1", PID: 23, Healthy: true},
	}
	shard := func(n int, replicas ...string) string {
		var rs []string
		for _, r := range replicas {
			store, role, _ := strings.Cut(r, ":")
			if role == "" {
				role = "voter"
			}
			rs = append(rs, fmt.Sprintf(`{"store":%q,"role":%q,"lag":0}`, store, role))
		}
		return fmt.Sprintf(`{"shard":%d,"leader":"store-2","replicas":[%s]}`, n, strings.Join(rs, ","))
	}
	shards := "[" + strings.Join([]string{
		shard(0, "store-1", "store-2", "store-3"),                    // spread
		shard(1, "store-1", "store-4", "store-2"),                    // two of three in us-east-1
		shard(2, "store-1", "store-2", "store-3", "store-4:learner"), // a learner is no voter
		shard(3, "store-4"),                                          // its only voter
	}, ",") + "]"
	u := newFakeUp(t, &fakeAdmin{members: members, shards: shards, leader: "cp-1"})
	got, err := u.quorumsIn(context.Background(), "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[1 3]" {
		t.Errorf("quorumsIn(us-east-1) = %v, want [1 3]", got)
	}
	if got, _ := u.quorumsIn(context.Background(), "eu-west-1"); len(got) != 0 {
		t.Errorf("quorumsIn(eu-west-1) = %v, want none", got)
	}
}

// A process that does not come back in a rolling restart is reported with
// why (not with the deadline that ended the wait), and with the last error
// its own log gives.
func TestWaitBackSaysWhy(t *testing.T) {
	// Slow answers, so the wait's deadline cuts a poll short.
	f := &fakeAdmin{members: []Member{{Role: "store", ID: "store-4", PID: 42, Healthy: true}}, shards: `[]`, leader: "cp-1", delay: 150 * time.Millisecond}
	u := newFakeUp(t, f)
	u.RestartTimeout = 400 * time.Millisecond
	logs := filepath.Join(u.DataDir, "logs")
	if err := os.MkdirAll(logs, 0o700); err != nil {
		t.Fatal(err)
	}
	log := `{"level":"info","msg":"starting"}
{"level":"error","msg":"listen 127.0.0.1:20041: bind: address already in use","node":"store-4"}
{"level":"info","msg":"supervisor will restart"}
`
	if err := os.WriteFile(filepath.Join(logs, "store-4.log"), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	err := u.waitBack(context.Background(), Victim{ID: "store-4", Role: "store", PID: 42})
	if err == nil {
		t.Fatal("waitBack succeeded for a process that never came back")
	}
	for _, want := range []string{"store-4 not back after 400ms", "not registered healthy with a new pid", "bind: address already in use"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "deadline") {
		t.Errorf("error %q reports the wait's own deadline", err)
	}
}

func TestLastLogError(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "text.log")
	_ = os.WriteFile(text, []byte("time=1 level=error msg=first\ntime=2 level=fatal msg=\"data dir locked\"\ntime=3 level=info msg=x\n"), 0o600)
	if got := lastLogError(text); !strings.Contains(got, "data dir locked") {
		t.Errorf("lastLogError(text) = %q", got)
	}
	clean := filepath.Join(dir, "clean.log")
	_ = os.WriteFile(clean, []byte(`{"level":"info","msg":"fine"}`+"\n"), 0o600)
	if got := lastLogError(clean); got != "" {
		t.Errorf("lastLogError(clean) = %q, want none", got)
	}
	if got := lastLogError(filepath.Join(dir, "missing.log")); got != "" {
		t.Errorf("lastLogError(missing) = %q", got)
	}
}
