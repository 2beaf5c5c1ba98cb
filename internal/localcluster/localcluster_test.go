package localcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// fakeChildEnv makes the test binary act as an erlmcp child: a worker
// registers itself and serves HTTP, the front serves /healthz, the others
// just wait for SIGTERM.
const fakeChildEnv = "ERLMCP_LOCALCLUSTER_FAKE_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(fakeChildEnv) == "" {
		os.Exit(m.Run())
	}
	os.Exit(fakeChild(os.Args[1:]))
}

func fakeChild(args []string) int {
	if len(args) == 0 {
		return 2
	}
	role, flags := args[0], map[string]string{}
	for _, a := range args[1:] {
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		flags[k] = v
	}
	fmt.Printf("pid %d role %s args %s\n", os.Getpid(), role, strings.Join(args[1:], " "))
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	switch role {
	case "worker", "front":
		l, err := net.Listen("tcp", flags["listen"])
		if err != nil {
			fmt.Println("listen:", err)
			return 1
		}
		go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	}
	if role == "worker" {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{flags["etcd-endpoints"]}, DialTimeout: 5 * time.Second})
		if err != nil {
			fmt.Println("etcd:", err)
			return 1
		}
		ttl, _ := time.ParseDuration(flags["lease-ttl"])
		m := membership.Member{Role: role, ID: flags["id"], Addr: flags["listen"], Region: flags["region"], Zone: flags["zone"]}
		reg, err := membership.Register(context.Background(), cli, flags["etcd-prefix"], m, ttl, logging.Discard())
		if err != nil {
			fmt.Println("register:", err)
			return 1
		}
		<-term
		_ = reg.Close(context.Background())
		return 0
	}
	<-term
	return 0
}

// freePorts returns n distinct free loopback ports: all n are held open
// until every one is chosen.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// smallConfig is a one-of-each cluster on free loopback ports.
func smallConfig(t *testing.T) Config {
	c := DefaultConfig()
	c.DataDir = filepath.Join(t.TempDir(), "data")
	// Seven distinct free ports (freePort one at a time can hand out the
	// same port twice, which Plan refuses as an overlap). The store's
	// HTTP port has its own: the default (right after the store's gRPC
	// port) is not reserved and may be taken by an unrelated connection.
	ports := freePorts(t, 7)
	c.Listen = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	c.AdminPortBase, c.WorkerPortBase, c.StorePortBase = ports[1], ports[2], ports[3]
	c.EtcdClientPort, c.EtcdPeerPort = ports[4], ports[5]
	c.StoreHTTPPortBase = ports[6]
	c.Workers, c.Stores, c.ControlPlanes = 1, 1, 1
	c.LeaseTTL = 2 * time.Second
	c.EtcdTickMs, c.EtcdElectionMs = 10, 100
	c.ReadyTimeout = 30 * time.Second
	c.StopTimeout = 5 * time.Second
	c.Executable = "/nonexistent/erlmcp-must-not-run"
	return c
}

func runQuick(t *testing.T, c Config) (string, error) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := Run(ctx, c, &out, logging.Discard())
	return out.String(), err
}

// assertNothingStarted checks a failed Run left no trace of a cluster and
// released the lock.
func assertNothingStarted(t *testing.T, c Config) {
	t.Helper()
	for _, p := range []string{"etcd", "logs", "cluster.json"} {
		if _, err := os.Stat(filepath.Join(c.DataDir, p)); err == nil {
			t.Errorf("%s exists after a failed start", p)
		}
	}
	if _, err := os.Stat(c.DataDir); err == nil {
		l, err := LockDataDir(c.DataDir)
		if err != nil {
			t.Fatalf("lock not released: %v", err)
		}
		l.Release()
	}
}

func TestPortInUse(t *testing.T) {
	c := smallConfig(t)
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", c.WorkerPortBase))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = runQuick(t, c)
	want := fmt.Sprintf("port 127.0.0.1:%d (for worker-1 MCP listener) is not free", c.WorkerPortBase)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Run = %v, want an error containing %q", err, want)
	}
	assertNothingStarted(t, c)
}

func TestEtcdPortInUse(t *testing.T) {
	c := smallConfig(t)
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", c.EtcdClientPort))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = runQuick(t, c)
	if err == nil || !strings.Contains(err.Error(), strconv.Itoa(c.EtcdClientPort)) || !strings.Contains(err.Error(), "etcd client") {
		t.Fatalf("Run = %v, want an error naming the etcd client port", err)
	}
	assertNothingStarted(t, c)
}

func TestDataDirNotCreatable(t *testing.T) {
	c := smallConfig(t)
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c.DataDir = filepath.Join(file, "data")
	_, err := runQuick(t, c)
	if err == nil || !strings.Contains(err.Error(), "data dir "+c.DataDir+" cannot be created") {
		t.Fatalf("Run = %v", err)
	}
}

func TestDataDirNotWritable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes to read-only directories")
	}
	c := smallConfig(t)
	if err := os.MkdirAll(c.DataDir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(c.DataDir, 0o700)
	_, err := runQuick(t, c)
	if err == nil || !strings.Contains(err.Error(), "data dir "+c.DataDir+" is not writable") {
		t.Fatalf("Run = %v", err)
	}
}

func TestDataDirLocked(t *testing.T) {
	c := smallConfig(t)
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	held, err := LockDataDir(c.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	_, err = runQuick(t, c)
	want := fmt.Sprintf("data dir %s is in use by another erlmcp up (pid %d)", c.DataDir, os.Getpid())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Run = %v, want %q", err, want)
	}
	held.Release()
	again, err := LockDataDir(c.DataDir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again.Release()
}

func TestPlanDefaults(t *testing.T) {
	c := DefaultConfig()
	c.DataDir = "/tmp/x"
	p, err := c.Plan()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ch := range p.Children {
		names = append(names, ch.Name)
	}
	want := []string{"cp-1", "cp-2", "store-1", "store-2", "store-3", "worker-1", "worker-2", "worker-3", "front-1"}
	if !slices.Equal(names, want) {
		t.Fatalf("children %v, want %v", names, want)
	}
	byName := map[string][]string{}
	for _, ch := range p.Children {
		byName[ch.Name] = ch.Args
	}
	common := func(id, region string) []string {
		return []string{"--etcd-endpoints=http://127.0.0.1:2379", "--etcd-prefix=/erlmcp/", "--id=" + id,
			"--region=" + region, "--zone=" + region + "a", "--lease-ttl=5s", "--log-level=info", "--log-format=json"}
	}
	check := func(name, sub, region string, extra ...string) {
		t.Helper()
		w := append(append([]string{sub}, common(name, region)...), extra...)
		if !slices.Equal(byName[name], w) {
			t.Fatalf("%s args\n got %q\nwant %q", name, byName[name], w)
		}
	}
	check("cp-1", "controlplane", "us-east-1", "--admin-listen=127.0.0.1:7070", "--admin-token-file=/tmp/x/admin.token", "--replication-mode=raft", "--replication-factor=3", "--actuator=local:/tmp/x/actuator.sock")
	check("cp-2", "controlplane", "eu-west-1", "--admin-listen=127.0.0.1:7071", "--admin-token-file=/tmp/x/admin.token", "--replication-mode=raft", "--replication-factor=3", "--actuator=local:/tmp/x/actuator.sock")
	check("store-3", "store", "ap-southeast-1", "--listen=127.0.0.1:9093", "--http-listen=127.0.0.1:9096", "--data-dir=/tmp/x/store-3")
	check("worker-1", "worker", "us-east-1", "--listen=127.0.0.1:8081")
	check("front-1", "front", "us-east-1", "--listen=127.0.0.1:8080")
	if p.MCPURL != "http://127.0.0.1:8080/mcp" || !slices.Equal(p.AdminURLs, []string{"http://127.0.0.1:7070", "http://127.0.0.1:7071"}) || p.EtcdClientURL != "http://127.0.0.1:2379" {
		t.Fatalf("plan urls %+v", p)
	}
	if len(p.Ports) != 14 {
		t.Fatalf("ports %v", p.Ports)
	}
	// Store HTTP listeners follow the stores' gRPC ports.
	if want := []string{"http://127.0.0.1:9094", "http://127.0.0.1:9095", "http://127.0.0.1:9096"}; !slices.Equal(p.StoreHTTPURLs, want) {
		t.Fatalf("store HTTP URLs %v, want %v", p.StoreHTTPURLs, want)
	}
}

func TestPlanRejectsOverlappingPorts(t *testing.T) {
	c := DefaultConfig()
	c.StorePortBase = 8082 // collides with worker-2
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "port 8082") || !strings.Contains(err.Error(), "worker-2") {
		t.Fatalf("Validate = %v", err)
	}
}

func TestTokenCreatedOnceAndPrivate(t *testing.T) {
	p := filepath.Join(t.TempDir(), "admin.token")
	a, err := LoadOrCreateToken(p)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(a) {
		t.Fatalf("token %q", a)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
	b, err := LoadOrCreateToken(p)
	if err != nil || b != a {
		t.Fatalf("second load %q %v, want the same token", b, err)
	}
}

func TestClusterFileFormat(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cluster.json")
	in := ClusterFile{MCPURL: "http://127.0.0.1:8080/mcp", AdminURLs: []string{"http://127.0.0.1:7070", "http://127.0.0.1:7071"}, EtcdEndpoints: []string{"http://127.0.0.1:2379"}, AdminToken: "tok"}
	if err := WriteClusterFile(p, in); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"mcp_url": "http://127.0.0.1:8080/mcp", "admin_urls": []any{"http://127.0.0.1:7070", "http://127.0.0.1:7071"}, "etcd_endpoints": []any{"http://127.0.0.1:2379"}, "admin_token": "tok"}
	if fmt.Sprint(raw) != fmt.Sprint(want) {
		t.Fatalf("cluster.json\n%s\nwant keys/values %v", b, want)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
}

// TestRunWithFakeChildren runs the whole up lifecycle with the test binary
// standing in for erlmcp: ready, cluster.json, shutdown leaving no child,
// and a restart on the same data dir reusing the token.
func TestRunWithFakeChildren(t *testing.T) {
	t.Setenv(fakeChildEnv, "1")
	c := smallConfig(t)
	c.Executable = os.Args[0]

	run := func() (token string) {
		out := &syncBuffer{}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- Run(ctx, c, out, logging.Discard()) }()
		testcluster.WaitFor(t, 30*time.Second, "up to print ready", func() error {
			select {
			case err := <-done:
				t.Fatalf("Run returned early: %v\n%s", err, out.String())
			default:
			}
			if !strings.Contains(out.String(), "\nready\n") {
				return fmt.Errorf("output so far:\n%s", out.String())
			}
			return nil
		})
		for _, want := range []string{"MCP endpoint:  http://" + c.Listen + "/mcp", "admin API:", "etcd:", "data dir:", "stop:"} {
			if !strings.Contains(out.String(), want) {
				t.Fatalf("output lacks %q:\n%s", want, out.String())
			}
		}
		cf, err := ReadClusterFile(filepath.Join(c.DataDir, "cluster.json"))
		if err != nil {
			t.Fatal(err)
		}
		if cf.MCPURL != "http://"+c.Listen+"/mcp" || len(cf.AdminURLs) != 1 || cf.AdminToken == "" ||
			cf.EtcdEndpoints[0] != fmt.Sprintf("http://127.0.0.1:%d", c.EtcdClientPort) {
			t.Fatalf("cluster file %+v", cf)
		}
		// A second up on the same data dir is refused while this one runs.
		if _, err := runQuick(t, c); err == nil || !strings.Contains(err.Error(), "in use by another erlmcp up") {
			t.Fatalf("second up: %v", err)
		}
		// Ready waits for the front and a worker only; the other children
		// write their pid line when they start, a moment later.
		var pids map[string]int
		testcluster.WaitFor(t, 10*time.Second, "all 4 children started", func() error {
			if pids = childPIDs(t, c); len(pids) != 4 {
				return fmt.Errorf("child pids %v", pids)
			}
			return nil
		})
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run after cancel: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return within 10s of cancel")
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("shutdown took %s", d)
		}
		for name, pid := range pids {
			if syscall.Kill(pid, 0) == nil && !isZombie(pid) {
				t.Fatalf("%s (pid %d) still running after up stopped", name, pid)
			}
		}
		return cf.AdminToken
	}
	first := run()
	// Fresh log files for the second run's pid scan.
	if err := os.RemoveAll(filepath.Join(c.DataDir, "logs")); err != nil {
		t.Fatal(err)
	}
	if second := run(); second != first {
		t.Fatalf("token changed across restarts")
	}
}

// childPIDs reads the pid each fake child printed into its log.
func childPIDs(t *testing.T, c Config) map[string]int {
	out := map[string]int{}
	logs, _ := filepath.Glob(filepath.Join(c.DataDir, "logs", "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		var pid int
		if _, err := fmt.Sscanf(string(b), "pid %d", &pid); err == nil {
			out[strings.TrimSuffix(filepath.Base(l), ".log")] = pid
		}
	}
	return out
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

type syncBuffer = testcluster.SyncBuffer
