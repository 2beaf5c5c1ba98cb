package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// workerRecorder remembers which worker served the last MCP request, from
// the X-Erlmcp-Worker header every worker sets.
type workerRecorder struct {
	mu   sync.Mutex
	last string
	base http.RoundTripper
}

func (w *workerRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := w.base.RoundTrip(r)
	if err == nil && r.Method == http.MethodPost {
		if id := resp.Header.Get("X-Erlmcp-Worker"); id != "" {
			w.mu.Lock()
			w.last = id
			w.mu.Unlock()
		}
	}
	return resp, err
}

func (w *workerRecorder) lastWorker() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

func echo(ctx context.Context, t *testing.T, s *mcp.ClientSession, text string) {
	t.Helper()
	res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": text}})
	if err != nil {
		t.Fatalf("tools/call echo %q: %v", text, err)
	}
	if res.IsError || len(res.Content) != 1 {
		t.Fatalf("tools/call echo %q: %+v", text, res)
	}
	tc, ok := res.Content[0].(*mcp.TextContent)
	if !ok || tc.Text != text {
		t.Fatalf("tools/call echo %q returned %#v", text, res.Content[0])
	}
}

// TestUpSurvivesWorkerKill is the foundation's end-to-end promise: a real
// `erlmcp up`, an official go-sdk client through the front, the worker that
// served the last call SIGKILLed, the same session answering, the worker
// restarted by the supervisor, a clean SIGTERM shutdown, and a second `up`
// on the same data dir serving the same session.
func TestUpSurvivesWorkerKill(t *testing.T) {
	dataDir := t.TempDir()
	p := pickPorts(t)
	c := startUp(t, dataDir, p)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Membership: every role registered, spread over the three regions.
	var ms []member
	waitFor(t, 30*time.Second, "all 2+3+3+1 members healthy", func() error {
		ms = c.members()
		count := map[string]int{}
		for _, m := range ms {
			if m.Healthy {
				count[m.Role]++
			}
		}
		if count["controlplane"] != 2 || count["store"] != 3 || count["worker"] != 3 || count["front"] != 1 {
			return fmt.Errorf("healthy members by role: %v", count)
		}
		return nil
	})
	regions := map[string]bool{}
	for _, m := range ms {
		regions[m.Region] = true
		if m.PID <= 0 || m.Addr == "" || m.Zone == "" {
			t.Errorf("member without pid/addr/zone: %+v", m)
		}
	}
	for _, r := range []string{"us-east-1", "eu-west-1", "ap-southeast-1"} {
		if !regions[r] {
			t.Errorf("no member in region %s: %+v", r, ms)
		}
	}

	// The operator's smoke script works against the cluster as shipped.
	if out, err := exec.Command("bash", "../scripts/mcp-smoke.sh", c.mcpURL(), "4").CombinedOutput(); err != nil || !strings.Contains(string(out), "ok: 4 calls") {
		t.Errorf("scripts/mcp-smoke.sh: %v\n%s", err, out)
	}

	rec := &workerRecorder{base: http.DefaultTransport}
	client := mcp.NewClient(&mcp.Implementation{Name: "erlmcp-e2e", Version: "1"}, nil)
	session, err := client.Connect(ctx, &mcp.StreamableClientTransport{
		Endpoint:   c.mcpURL(),
		HTTPClient: &http.Client{Transport: rec},
	}, &mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"}) // a session is what this test follows
	if err != nil {
		t.Fatalf("connect through the front: %v", err)
	}
	sessionID := session.ID()
	if sessionID == "" {
		t.Fatal("no session id issued")
	}
	tools, err := session.ListTools(ctx, nil)
	if err != nil {
		t.Fatalf("tools/list: %v", err)
	}
	found := false
	for _, tool := range tools.Tools {
		found = found || tool.Name == "echo"
	}
	if !found {
		t.Fatalf("tools/list lacks echo: %+v", tools.Tools)
	}
	// Round robin with no stickiness: several calls land on several workers,
	// all serving the one session from the store.
	served := map[string]bool{}
	for i := range 6 {
		echo(ctx, t, session, fmt.Sprintf("hello %d", i))
		served[rec.lastWorker()] = true
	}
	if len(served) < 2 {
		t.Errorf("6 calls were all served by %v; want the front to spread them", served)
	}

	// SIGKILL the worker that served the last call.
	victim := rec.lastWorker()
	victimPID := 0
	for _, m := range c.members() {
		if m.Role == "worker" && m.ID == victim {
			victimPID = m.PID
		}
	}
	if victimPID == 0 {
		t.Fatalf("served-by worker %q not in membership", victim)
	}
	if err := syscall.Kill(victimPID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s (pid %d): %v", victim, victimPID, err)
	}
	// Kill returns before the kernel has torn the process down; a request
	// the front writes meanwhile to its open socket is one in flight on
	// the killed worker. Wait until it is dead (gone, or a zombie not yet
	// reaped by the supervisor): from then on no request may fail.
	waitFor(t, 10*time.Second, "killed worker to exit", func() error {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", victimPID))
		if err != nil {
			return nil // reaped
		}
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return nil
		}
		return fmt.Errorf("pid %d still running", victimPID)
	})
	// The same session keeps answering, with no error, right away.
	for i := range 10 {
		echo(ctx, t, session, fmt.Sprintf("after kill %d", i))
	}

	// The supervisor restarts the worker: it re-registers with a new pid.
	waitFor(t, 30*time.Second, "killed worker back with a new pid", func() error {
		for _, m := range c.members() {
			if m.Role == "worker" && m.ID == victim && m.PID != victimPID && m.Healthy {
				return nil
			}
		}
		return fmt.Errorf("%s not back yet", victim)
	})
	if !strings.Contains(c.output()+readLogs(dataDir), "restart") {
		t.Errorf("no restart logged by the supervisor")
	}
	echo(ctx, t, session, "after restart")
	// Not session.Close(): that DELETEs the session, and the session must
	// outlive the cluster's restart below.

	c.stop()

	// A second up on the same data dir: same cluster, same session.
	c2 := startUp(t, dataDir, p)
	waitFor(t, 30*time.Second, "the old session to answer after restart", func() error {
		code, _, body := rawCall(t, c2.mcpURL(), sessionID, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{"text": "again"}})
		if code != http.StatusOK {
			return fmt.Errorf("status %d body %v", code, body)
		}
		if !strings.Contains(fmt.Sprint(body["result"]), "again") {
			return fmt.Errorf("unexpected body %v", body)
		}
		return nil
	})
	c2.stop()
}

// A second `up` on a data dir in use, or with a port taken, fails with a
// clear error and starts nothing.
func TestUpRefusesBusyDataDirAndPort(t *testing.T) {
	dataDir := t.TempDir()
	p := pickPorts(t)
	c := startUp(t, dataDir, p)

	p2 := pickPorts(t)
	out, err := exec.Command(binary, append([]string{"up", "--data-dir", dataDir}, p2.args()...)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") {
		t.Errorf("second up on a busy data dir: err=%v output:\n%s", err, out)
	}

	// Every port of the first cluster is taken; a fresh data dir on them fails.
	other := t.TempDir()
	out, err = exec.Command(binary, append([]string{"up", "--data-dir", other}, p.args()...)...).CombinedOutput()
	namesPort := false
	for _, port := range []int{p.front, p.adminBase, p.workerBase, p.storeBase, p.etcdClient, p.etcdPeer} {
		namesPort = namesPort || strings.Contains(string(out), fmt.Sprint(port))
	}
	if err == nil || !namesPort {
		t.Errorf("up on taken ports: want an error naming a taken port; err=%v output:\n%s", err, out)
	}
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 0 {
		t.Errorf("exit code 0 on failure")
	}
	c.stop()
}

func readLogs(dataDir string) string {
	var b strings.Builder
	ents, _ := os.ReadDir(dataDir + "/logs")
	for _, e := range ents {
		data, _ := os.ReadFile(dataDir + "/logs/" + e.Name())
		b.Write(data)
	}
	return b.String()
}
