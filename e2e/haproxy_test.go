package e2e

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// needTool returns the path of an operations tool (haproxy, promtool,
// prometheus). In CI (CI set) a missing tool fails the test: .ci/run
// installs them, so missing means the check silently stopped running.
// Elsewhere the test is skipped with the package to install.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not found (CI is set, so this check must run): apt-get install %s", name, pkg)
	}
	t.Skipf("%s not found: apt-get install %s to run this test", name, pkg)
	return ""
}

// widePorts is pickPorts with room for the store nodes' HTTP listeners,
// which `erlmcp up` puts right after their gRPC ports.
func widePorts(t *testing.T) (ports, map[int]bool) {
	taken := map[int]bool{}
	return ports{
		front:      freeRun(t, 1, taken),
		adminBase:  freeRun(t, 2, taken),
		workerBase: freeRun(t, 3, taken),
		storeBase:  freeRun(t, 6, taken),
		etcdClient: freeRun(t, 1, taken),
		etcdPeer:   freeRun(t, 1, taken),
	}, taken
}

// process is a helper program (haproxy, prometheus) run for one test; its
// output is kept and shown when the test fails.
type process struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer
	exited chan struct{}
}

func (p *process) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func startProcess(t *testing.T, env []string, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(10 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.exited
			}
		}
		if t.Failed() {
			t.Logf("--- %s output (tail)\n%s", filepath.Base(name), tail(p.output(), 6000))
		}
	})
	return p
}

func haproxyConfig(t *testing.T) string {
	t.Helper()
	cfg, err := filepath.Abs("../deploy/haproxy/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// tryMembers is cluster.members that returns the error instead of failing
// the test, for waits that start while the control planes still come up.
func tryMembers(c *cluster) ([]member, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "ctl", "--data-dir", c.dataDir, "members", "--json").Output()
	if err != nil {
		return nil, fmt.Errorf("ctl members: %w (%s)", err, exitStderr(err))
	}
	var ms []member
	if err := json.Unmarshal(out, &ms); err != nil {
		return nil, fmt.Errorf("ctl members --json: %w\n%s", err, out)
	}
	return ms, nil
}

// TestHAProxyConfigValid: the shipped haproxy.cfg passes `haproxy -c` with
// warnings as errors, both with its defaults (an operator's `erlmcp up` on
// the default ports) and with every address set from the environment.
func TestHAProxyConfigValid(t *testing.T) {
	haproxy := needTool(t, "haproxy", "haproxy")
	cfg := haproxyConfig(t)
	dir := t.TempDir()
	for _, env := range [][]string{
		nil,
		{
			"ERLMCP_HAPROXY_BIND=127.0.0.1:18080", "ERLMCP_HAPROXY_STATS_BIND=127.0.0.1:18404",
			"ERLMCP_HAPROXY_RUNTIME_SOCKET=" + filepath.Join(dir, "admin.sock"),
			"ERLMCP_WORKER_1=10.0.0.1:8080", "ERLMCP_WORKER_2=10.0.0.2:8080", "ERLMCP_WORKER_3=10.0.0.3:8080",
		},
	} {
		cmd := exec.Command(haproxy, "-dW", "-c", "-f", cfg)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "Configuration file is valid") {
			t.Errorf("haproxy -dW -c -f %s with %v: %v\n%s", cfg, env, err, out)
		}
	}
}

// haproxyServers reads the erlmcp_workers backend's server states (UP,
// DOWN, ...) from the stats page's CSV export.
func haproxyServers(statsURL string) (map[string]string, error) {
	resp, err := http.Get(statsURL + "/stats;csv")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("stats: %s", resp.Status)
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(string(body), "# ")))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) < 2 {
		return nil, fmt.Errorf("stats csv: %v (%d rows)", err, len(rows))
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	out := map[string]string{}
	for _, row := range rows[1:] {
		if row[col["pxname"]] == "erlmcp_workers" && strings.HasPrefix(row[col["svname"]], "worker") {
			out[row[col["svname"]]] = row[col["status"]]
		}
	}
	return out, nil
}

// callEcho is one tools/call echo that reports instead of failing the test,
// for load goroutines.
func callEcho(ctx context.Context, s *mcp.ClientSession, text string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": text}})
	if err != nil {
		return err
	}
	if res.IsError || len(res.Content) != 1 {
		return fmt.Errorf("echo %q: %+v", text, res)
	}
	if tc, ok := res.Content[0].(*mcp.TextContent); !ok || tc.Text != text {
		return fmt.Errorf("echo %q returned %#v", text, res.Content[0])
	}
	return nil
}

// loadSession is one go-sdk session calling echo in a loop.
type loadSession struct {
	rec     *workerRecorder
	session *mcp.ClientSession
	mu      sync.Mutex
	ok      int
	errs    []error
	errAt   []time.Time
}

func (l *loadSession) counts() (int, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, len(l.errs)
}

func (l *loadSession) run(ctx context.Context, id int) {
	for i := 0; ctx.Err() == nil; i++ {
		err := callEcho(ctx, l.session, fmt.Sprintf("s%d-%d", id, i))
		if ctx.Err() != nil {
			return // the load was stopped, not failed
		}
		l.mu.Lock()
		if err != nil {
			l.errs = append(l.errs, err)
			l.errAt = append(l.errAt, time.Now())
		} else {
			l.ok++
		}
		l.mu.Unlock()
		if err != nil {
			// A broken session must not spin: pace the retries.
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// TestHAProxyWorkerKill: the shipped haproxy.cfg, run by the real HAProxy,
// in front of an `erlmcp up` cluster's three workers. go-sdk sessions call
// through HAProxy, spread over the workers with no stickiness; one worker
// is SIGKILLed under that load. Only a request in flight on it may fail
// (at most one per session, each a 502 HAProxy logs as aborted by that
// server); every session keeps working, and the restarted worker is back
// in HAProxy's rotation.
func TestHAProxyWorkerKill(t *testing.T) {
	haproxy := needTool(t, "haproxy", "haproxy")
	p, taken := widePorts(t)
	bind := freeRun(t, 1, taken)
	statsPort := freeRun(t, 1, taken)
	c := startUp(t, t.TempDir(), p)

	var workers []member
	waitFor(t, 60*time.Second, "3 healthy workers", func() error {
		workers = workers[:0]
		ms, err := tryMembers(c)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Role == "worker" && m.Healthy {
				workers = append(workers, m)
			}
		}
		if len(workers) != 3 {
			return fmt.Errorf("healthy workers: %+v", workers)
		}
		return nil
	})
	sort.Slice(workers, func(i, j int) bool { return workers[i].ID < workers[j].ID })
	server := map[string]string{} // worker id -> haproxy server name
	env := []string{
		fmt.Sprintf("ERLMCP_HAPROXY_BIND=127.0.0.1:%d", bind),
		fmt.Sprintf("ERLMCP_HAPROXY_STATS_BIND=127.0.0.1:%d", statsPort),
		"ERLMCP_HAPROXY_RUNTIME_SOCKET=" + filepath.Join(t.TempDir(), "admin.sock"),
	}
	for i, w := range workers {
		env = append(env, fmt.Sprintf("ERLMCP_WORKER_%d=%s", i+1, w.Addr))
		server[w.ID] = fmt.Sprintf("worker%d", i+1)
	}
	// -db: stay in the foreground, so the test owns the process.
	hp := startProcess(t, env, haproxy, "-db", "-f", haproxyConfig(t))
	statsURL := fmt.Sprintf("http://127.0.0.1:%d", statsPort)
	mcpURL := fmt.Sprintf("http://127.0.0.1:%d/mcp", bind)

	waitFor(t, 30*time.Second, "HAProxy to see 3 workers UP", func() error {
		select {
		case <-hp.exited:
			t.Fatalf("haproxy exited: %v", hp.cmd.ProcessState)
		default:
		}
		st, err := haproxyServers(statsURL)
		if err != nil {
			return err
		}
		for _, s := range []string{"worker1", "worker2", "worker3"} {
			if st[s] != "UP" {
				return fmt.Errorf("servers %v", st)
			}
		}
		return nil
	})
	// The Prometheus exporter answers on the stats listener.
	resp, err := http.Get(statsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `haproxy_server_status{proxy="erlmcp_workers",server="worker1"`) {
		t.Errorf("HAProxy /metrics lacks haproxy_server_status for the workers:\n%s", tail(string(metrics), 2000))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const nSessions = 4
	load := make([]*loadSession, nSessions)
	for i := range load {
		rec := &workerRecorder{base: http.DefaultTransport}
		client := mcp.NewClient(&mcp.Implementation{Name: "erlmcp-e2e-haproxy", Version: "1"}, nil)
		s, err := client.Connect(ctx, &mcp.StreamableClientTransport{
			Endpoint: mcpURL, HTTPClient: &http.Client{Transport: rec},
		}, &mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"})
		if err != nil {
			t.Fatalf("connect through HAProxy: %v", err)
		}
		load[i] = &loadSession{rec: rec, session: s}
	}
	// Round robin without stickiness: one session's calls land on several
	// workers.
	served := map[string]bool{}
	for i := range 6 {
		echo(ctx, t, load[0].session, fmt.Sprintf("spread %d", i))
		served[load[0].rec.lastWorker()] = true
	}
	if len(served) < 2 {
		t.Errorf("6 calls of one session all served by %v; want HAProxy to spread them", served)
	}

	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, l := range load {
		wg.Add(1)
		go func() { defer wg.Done(); l.run(loadCtx, i) }()
	}
	defer func() { stopLoad(); wg.Wait() }()
	waitFor(t, 60*time.Second, "every session answering under load", func() error {
		for i, l := range load {
			if ok, _ := l.counts(); ok < 5 {
				return fmt.Errorf("session %d: %d calls", i, ok)
			}
		}
		return nil
	})

	victim := load[0].rec.lastWorker()
	victimPID := 0
	for _, w := range workers {
		if w.ID == victim {
			victimPID = w.PID
		}
	}
	if victimPID == 0 {
		t.Fatalf("served-by worker %q is not one of %+v", victim, workers)
	}
	before := make([]int, nSessions)
	for i, l := range load {
		before[i], _ = l.counts()
	}
	killedAt := time.Now()
	if err := syscall.Kill(victimPID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s (pid %d): %v", victim, victimPID, err)
	}
	t.Logf("SIGKILLed %s (pid %d, HAProxy server %s) under load", victim, victimPID, server[victim])

	waitFor(t, 60*time.Second, "20 more answers per session after the kill", func() error {
		for i, l := range load {
			if ok, _ := l.counts(); ok < before[i]+20 {
				return fmt.Errorf("session %d: %d answers since the kill", i, ok-before[i])
			}
		}
		return nil
	})
	// The supervisor restarts the worker on the same port, often before
	// two health checks have failed; so HAProxy marking it DOWN is logged,
	// not required. What is required: it is back in rotation.
	waitFor(t, 60*time.Second, "the killed worker back in membership with a new pid", func() error {
		ms, err := tryMembers(c)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.ID == victim && m.PID != victimPID && m.Healthy {
				return nil
			}
		}
		return fmt.Errorf("%s not back yet", victim)
	})
	waitFor(t, 60*time.Second, "the restarted worker UP in HAProxy", func() error {
		st, err := haproxyServers(statsURL)
		if err != nil {
			return err
		}
		if st[server[victim]] != "UP" {
			return fmt.Errorf("servers %v", st)
		}
		return nil
	})
	stopLoad()
	wg.Wait()
	// Back in rotation: round robin sends it calls again.
	waitFor(t, 60*time.Second, "the restarted worker serving calls through HAProxy", func() error {
		if err := callEcho(ctx, load[0].session, "rotation"); err != nil {
			return err
		}
		if w := load[0].rec.lastWorker(); w != victim {
			return fmt.Errorf("served by %s", w)
		}
		return nil
	})
	if strings.Contains(hp.output(), "Server erlmcp_workers/"+server[victim]+" is DOWN") {
		t.Logf("HAProxy marked %s DOWN before the restart", server[victim])
	} else {
		t.Logf("the worker was restarted before HAProxy's checks marked %s DOWN", server[victim])
	}

	total, failed := 0, 0
	for i, l := range load {
		ok, n := l.counts()
		total += ok + n
		failed += n
		// A session has one request in flight at a time, so the kill can
		// cost it at most that one request.
		if n > 1 {
			t.Errorf("session %d: %d failed calls, want at most 1 (the one in flight on the killed worker): %v", i, n, l.errs)
		}
		for j, at := range l.errAt {
			t.Logf("session %d: call failed %s after the kill: %v", i, at.Sub(killedAt).Round(time.Millisecond), l.errs[j])
		}
		// And the session goes on after the restart as before.
		if err := callEcho(ctx, l.session, fmt.Sprintf("after restart %d", i)); err != nil {
			t.Errorf("session %d after the worker's restart: %v", i, err)
		}
	}
	t.Logf("%d calls through HAProxy, %d failed", total, failed)

	// HAProxy's log agrees: every 5xx it answered was a request the killed
	// worker dropped mid-way (termination flags S*: the server aborted), and
	// there are as many as the clients saw fail.
	aborted := 0
	for _, m := range haproxyLogRE.FindAllStringSubmatch(hp.output(), -1) {
		srv, status, flags := m[1], m[2], m[3]
		if status[0] != '5' {
			continue
		}
		if srv != server[victim] || flags[0] != 'S' {
			t.Errorf("HAProxy answered %s for server %s with termination flags %s: not a request in flight on the killed worker", status, srv, flags)
			continue
		}
		aborted++
	}
	if aborted != failed {
		t.Errorf("HAProxy logged %d requests aborted by the killed worker, clients saw %d failures", aborted, failed)
	}
}

// haproxyLogRE picks server, status and termination flags out of an
// "option httplog" line of the MCP frontend.
var haproxyLogRE = regexp.MustCompile(`erlmcp_mcp erlmcp_workers/(\S+) \S+ (\d{3}) \S+ \S+ \S+ (\S{4}) `)
