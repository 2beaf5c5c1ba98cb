// Package e2e runs the real erlmcp binary as separate processes and talks to
// it as clients do. What only a real SIGKILL and a real process tree show is
// tested here; everything else is tested in-process in the packages.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
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
	"github.com/erlmcp/erlmcp/internal/localcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "erlmcp-e2e-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "erlmcp")
	build := exec.Command("go", "build", "-o", binary, "../cmd/erlmcp")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building erlmcp failed:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ports is one cluster's port plan; every port is on loopback and was free
// when chosen.
type ports struct {
	front, adminBase, workerBase, storeBase, etcdClient, etcdPeer int
}

func (p ports) args() []string {
	return []string{
		"--listen", fmt.Sprintf("127.0.0.1:%d", p.front),
		"--admin-port-base", strconv.Itoa(p.adminBase),
		"--worker-port-base", strconv.Itoa(p.workerBase),
		"--store-port-base", strconv.Itoa(p.storeBase),
		"--etcd-client-port", strconv.Itoa(p.etcdClient),
		"--etcd-peer-port", strconv.Itoa(p.etcdPeer),
	}
}

// freeRun returns the first port of n consecutive free loopback ports,
// below the kernel's ephemeral range: a port in that range that is free
// while a process of the cluster restarts can become the local port of
// any outgoing connection meanwhile, and the restarted process then fails
// to bind it (a store node stayed down for 100 s so in a rolling restart).
func freeRun(t *testing.T, n int, taken map[int]bool) int {
	t.Helper()
	limit := ephemeralLow(t)
	for base := 10000 + os.Getpid()%max((limit-10000)/2, 1); base+n <= limit; base += n + 7 {
		ok := true
		for p := base; p < base+n && ok; p++ {
			if taken[p] {
				ok = false
				break
			}
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			for p := base; p < base+n; p++ {
				taken[p] = true
			}
			return base
		}
	}
	t.Fatalf("no run of %d free ports below %d (the ephemeral range)", n, limit)
	return 0
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768
// when it cannot be read).
func ephemeralLow(t *testing.T) int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil || lo < 12000 {
		t.Fatalf("ephemeral port range %q: want its low end at 12000 or above, so test clusters can listen below it", strings.TrimSpace(string(b)))
	}
	return lo
}

func pickPorts(t *testing.T) ports {
	taken := map[int]bool{}
	return ports{
		front:      freeRun(t, 1, taken),
		adminBase:  freeRun(t, 2, taken),
		workerBase: freeRun(t, 3, taken),
		storeBase:  freeRun(t, 3, taken),
		etcdClient: freeRun(t, 1, taken),
		etcdPeer:   freeRun(t, 1, taken),
	}
}

// cluster is a running `erlmcp up`.
type cluster struct {
	t       *testing.T
	cmd     *exec.Cmd
	dataDir string
	ports   ports
	mu      sync.Mutex
	out     bytes.Buffer
	exited  chan struct{}
}

func startUp(t *testing.T, dataDir string, p ports) *cluster {
	t.Helper()
	c := &cluster{t: t, dataDir: dataDir, ports: p, exited: make(chan struct{})}
	args := append([]string{"up", "--data-dir", dataDir}, p.args()...)
	c.cmd = exec.Command(binary, args...)
	c.cmd.Env = append(os.Environ(), "ERLMCP_LOG_LEVEL=info")
	stdout, _ := c.cmd.StdoutPipe()
	c.cmd.Stderr = &lockedWriter{c}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.out.WriteString(line + "\n")
			c.mu.Unlock()
			// The ready line itself: other lines mention /readyz.
			if strings.HasPrefix(strings.ToLower(strings.TrimSpace(line)), "ready") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			_ = c.cmd.Process.Signal(syscall.SIGKILL)
			<-c.exited
		}
		if t.Failed() {
			t.Logf("erlmcp up output:\n%s", c.output())
			logs, _ := filepath.Glob(filepath.Join(dataDir, "logs", "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				if len(b) > 4000 {
					b = b[len(b)-4000:]
				}
				t.Logf("--- %s (tail)\n%s", l, b)
			}
		}
	})
	select {
	case <-ready:
	case <-c.exited:
		t.Fatalf("erlmcp up exited before ready: %v\n%s", c.cmd.ProcessState, c.output())
	case <-time.After(90 * time.Second):
		t.Fatalf("erlmcp up not ready after 90s\n%s", c.output())
	}
	return c
}

type lockedWriter struct{ c *cluster }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.c.out.Write(p)
}

func (c *cluster) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

func (c *cluster) mcpURL() string { return fmt.Sprintf("http://127.0.0.1:%d/mcp", c.ports.front) }

// stop sends SIGTERM and requires the whole process tree to be gone within
// 10 s.
func (c *cluster) stop() {
	c.t.Helper()
	start := time.Now()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		c.t.Fatal(err)
	}
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		c.t.Fatalf("erlmcp up still running 10s after SIGTERM")
	}
	if code := c.cmd.ProcessState.ExitCode(); code != 0 {
		c.t.Errorf("erlmcp up exited %d after SIGTERM, want 0", code)
	}
	if left := c.leftovers(); len(left) > 0 {
		c.t.Fatalf("processes left behind after %s: %v", time.Since(start), left)
	}
}

// leftovers lists live processes of this cluster: any process whose command
// line names this cluster's etcd endpoint or data dir.
func (c *cluster) leftovers() []string {
	marks := []string{fmt.Sprintf("127.0.0.1:%d", c.ports.etcdClient), c.dataDir}
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil && strings.Contains(string(st), ") Z ") {
			continue // a zombie is already dead
		}
		cmdline := strings.ReplaceAll(string(b), "\x00", " ")
		for _, m := range marks {
			if strings.Contains(cmdline, m) && pid != os.Getpid() {
				out = append(out, fmt.Sprintf("%d: %s", pid, cmdline))
				break
			}
		}
	}
	return out
}

type member struct {
	Role    string `json:"role"`
	ID      string `json:"id"`
	Addr    string `json:"addr"`
	Region  string `json:"region"`
	Zone    string `json:"zone"`
	PID     int    `json:"pid"`
	Healthy bool   `json:"healthy"`
}

// members runs `erlmcp ctl --data-dir D members --json`.
func (c *cluster) members() []member {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "ctl", "--data-dir", c.dataDir, "members", "--json").Output()
	if err != nil {
		c.t.Fatalf("ctl members: %v (%s)", err, exitStderr(err))
	}
	var ms []member
	if err := json.Unmarshal(out, &ms); err != nil {
		c.t.Fatalf("ctl members --json output is not a member array: %v\n%s", err, out)
	}
	return ms
}

// steady waits until the cluster is steady: "ready" only means the front
// answers and one worker registered, while a test that sends MCP traffic
// with no error budget needs every member healthy and every shard placed,
// led and caught up (loadgen.UpCluster.Healthy).
func (c *cluster) steady() {
	c.t.Helper()
	up, err := loadgen.OpenUpCluster(c.dataDir)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := up.WaitHealthy(context.Background(), 2*time.Minute); err != nil {
		c.t.Fatalf("cluster not steady after 2m: %v", err)
	}
}

// etcdClient is a client of the etcd of the erlmcp up cluster in dataDir
// (endpoints from its cluster.json), closed when the test ends.
func etcdClient(t *testing.T, dataDir string) (*clientv3.Client, localcluster.ClusterFile) {
	t.Helper()
	cf, err := localcluster.ReadClusterFile(filepath.Join(dataDir, "cluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cf.EtcdEndpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli, cf
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: still not true after %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rawCall POSTs one JSON-RPC request with a session id and returns the HTTP
// status, the serving worker and the decoded body.
func rawCall(t *testing.T, url, session, method string, params any) (int, string, map[string]any) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Mcp-Session-Id", session)
	req.Header.Set("MCP-Protocol-Version", "2025-11-25")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		for _, line := range strings.Split(string(b), "\n") {
			if d, ok := strings.CutPrefix(line, "data:"); ok && strings.TrimSpace(d) != "" {
				_ = json.Unmarshal([]byte(strings.TrimSpace(d)), &m)
			}
		}
	} else {
		_ = json.Unmarshal(b, &m)
	}
	return resp.StatusCode, resp.Header.Get("X-Erlmcp-Worker"), m
}
