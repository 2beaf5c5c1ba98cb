package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// seenWorkers records every worker that served an MCP POST.
type seenWorkers struct {
	mu   sync.Mutex
	seen map[string]int
	base http.RoundTripper
}

func (s *seenWorkers) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.base.RoundTrip(r)
	if err == nil && r.Method == http.MethodPost {
		if id := resp.Header.Get("X-Erlmcp-Worker"); id != "" {
			s.mu.Lock()
			s.seen[id]++
			s.mu.Unlock()
		}
	}
	return resp, err
}

func (s *seenWorkers) servedBy(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[id]
}

// ctlJSON runs `erlmcp ctl --data-dir D <args> --json` into v.
func (c *cluster) ctlJSON(v any, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, append(append([]string{"ctl", "--data-dir", c.dataDir}, args...), "--json")...).Output()
	if err != nil {
		return fmt.Errorf("ctl %v: %v (%s)", args, err, exitStderr(err))
	}
	return json.Unmarshal(out, v)
}

type autohealView struct {
	Paused  bool `json:"paused"`
	Desired *struct {
		Count     int       `json:"count"`
		Direction string    `json:"direction"`
		Reasons   []string  `json:"reasons"`
		At        time.Time `json:"at"`
	} `json:"desired"`
	Actuator string `json:"actuator"`
}

type historyEntry struct {
	Kind    string    `json:"kind"`
	Node    string    `json:"node"`
	Action  string    `json:"action"`
	Reason  string    `json:"reason"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Outcome string    `json:"outcome"`
}

func healthyWorkers(ms []member) []member {
	var out []member
	for _, m := range ms {
		if m.Role == "worker" && m.Healthy {
			out = append(out, m)
		}
	}
	return out
}

// TestUpScalesOnLoadDrainsOnScaleDownAndHealsStuckWorker runs `erlmcp up`
// with one worker, load-based scaling on (short windows and cooldowns by
// ERLMCP_* variables, which the control planes read as their flags) and the
// local actuator: under load workers are added and serve; when the load is
// gone they are removed after the cooldown, each drained first, while a
// client keeps calling without a single failure; then a SIGSTOPped
// (stuck) worker is restarted by autoheal and the restart is in history.
func TestUpScalesOnLoadDrainsOnScaleDownAndHealsStuckWorker(t *testing.T) {
	for k, v := range map[string]string{
		"ERLMCP_WORKERS":                 "1",
		"ERLMCP_AUTOSCALE":               "true",
		"ERLMCP_SCALE_MIN":               "1",
		"ERLMCP_SCALE_MAX":               "3",
		"ERLMCP_SCALE_WINDOW":            "2s",
		"ERLMCP_SCALE_UP_RPS":            "10",
		"ERLMCP_SCALE_DOWN_RPS":          "4",
		"ERLMCP_SCALE_UP_P95":            "0s",
		"ERLMCP_SCALE_UP_CPU":            "0",
		"ERLMCP_SCALE_UP_SESSIONS":       "0",
		"ERLMCP_SCALE_UP_COOLDOWN":       "0s",
		"ERLMCP_SCALE_DOWN_COOLDOWN":     "6s",
		"ERLMCP_AUTOHEAL_INTERVAL":       "500ms",
		"ERLMCP_AUTOHEAL_PROBE_TIMEOUT":  "2s",
		"ERLMCP_AUTOHEAL_FAIL_AFTER":     "3",
		"ERLMCP_AUTOHEAL_WINDOW":         "4",
		"ERLMCP_AUTOHEAL_START_GRACE":    "3s",
		"ERLMCP_AUTOHEAL_LEASE_GRACE":    "10s",
		"ERLMCP_AUTOHEAL_ATTEMPT_WINDOW": "1m",
	} {
		t.Setenv(k, v)
	}
	dataDir := t.TempDir()
	c := startUp(t, dataDir, pickPorts(t))
	testStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var av autohealView
	if err := c.ctlJSON(&av, "autoheal"); err != nil || av.Actuator != "local" {
		t.Fatalf("ctl autoheal: %+v, %v; want the local actuator", av, err)
	}

	rec := &seenWorkers{seen: map[string]int{}, base: http.DefaultTransport}
	dial := func() (*mcp.ClientSession, error) {
		client := mcp.NewClient(&mcp.Implementation{Name: "erlmcp-e2e-scale", Version: "1"}, nil)
		return client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: c.mcpURL(), HTTPClient: &http.Client{Transport: rec}},
			&mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"})
	}
	connect := func() *mcp.ClientSession {
		s, err := dial()
		if err != nil {
			t.Fatalf("connect through the front: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	// "ready" means a worker registered; the shards may still be placed.
	waitFor(t, 60*time.Second, "a session through the front", func() error {
		s, err := dial()
		if err == nil {
			_ = s.Close()
		}
		return err
	})
	var calls, failures atomic.Int64
	var failMu sync.Mutex
	var failMsgs []string
	call := func(s *mcp.ClientSession, text string) {
		res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": text}})
		calls.Add(1)
		if err == nil && (res.IsError || len(res.Content) != 1) {
			err = fmt.Errorf("bad result %+v", res)
		}
		if err != nil && ctx.Err() == nil {
			failures.Add(1)
			failMu.Lock()
			failMsgs = append(failMsgs, err.Error())
			failMu.Unlock()
		}
	}

	// Phase 1: load well above 10 requests/s per worker.
	heavy, stopHeavy := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range 6 {
		s := connect()
		wg.Go(func() {
			for n := 0; heavy.Err() == nil; n++ {
				call(s, fmt.Sprintf("heavy-%d-%d", i, n))
			}
		})
	}
	waitFor(t, 45*time.Second, "workers added under load and serving", func() error {
		if err := c.ctlJSON(&av, "autoheal"); err != nil {
			return err
		}
		hw := healthyWorkers(c.members())
		served := 0
		for _, m := range hw {
			if m.ID != "worker-1" && rec.servedBy(m.ID) > 0 {
				served++
			}
		}
		if av.Desired == nil || av.Desired.Count < 2 || len(hw) < 2 || served < 1 {
			return fmt.Errorf("desired %+v, healthy workers %d, added workers that served %d", av.Desired, len(hw), served)
		}
		return nil
	})
	scaledUp := time.Since(testStart)
	t.Logf("scaled up to %d (%v) after %s; calls so far %d", av.Desired.Count, av.Desired.Reasons, scaledUp.Round(time.Millisecond), calls.Load())

	// Phase 2: the load goes; one client keeps calling about 3 times a
	// second (below the scale-down threshold of one worker) and must see no
	// failure while workers are drained and removed.
	stopHeavy()
	wg.Wait()
	// The last growth: the down cooldown counts from it.
	if err := c.ctlJSON(&av, "autoheal"); err != nil || av.Desired == nil || av.Desired.Direction != "up" {
		t.Fatalf("ctl autoheal after the load: %+v, %v; want the last decision up", av.Desired, err)
	}
	grownAt := av.Desired.At
	trickle, stopTrickle := context.WithCancel(ctx)
	defer stopTrickle()
	s := connect()
	var tw sync.WaitGroup
	tw.Go(func() {
		for n := 0; trickle.Err() == nil; n++ {
			call(s, fmt.Sprintf("trickle-%d", n))
			time.Sleep(300 * time.Millisecond)
		}
	})
	loadGone := time.Now()
	waitFor(t, 45*time.Second, "pool back to one worker after the cooldown", func() error {
		if err := c.ctlJSON(&av, "autoheal"); err != nil {
			return err
		}
		ws := 0
		for _, m := range c.members() {
			if m.Role == "worker" {
				ws++
			}
		}
		if av.Desired == nil || av.Desired.Count != 1 || ws != 1 {
			return fmt.Errorf("desired %+v, registered workers %d", av.Desired, ws)
		}
		return nil
	})
	scaledDown := time.Since(loadGone)
	// A few more calls on the remaining worker, then stop.
	before := calls.Load()
	waitFor(t, 20*time.Second, "calls continue after the scale-down", func() error {
		if calls.Load() < before+3 {
			return errors.New("waiting for calls")
		}
		return nil
	})
	stopTrickle()
	tw.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d calls failed (none may fail during a drained scale-down): %s", n, calls.Load(), strings.Join(failMsgs, "; "))
	}
	if d := av.Desired.At.Sub(grownAt); d < 6*time.Second {
		t.Errorf("shrank %s after the last growth; the down cooldown is 6s", d)
	}
	t.Logf("scaled down to 1 worker %s after the load went; %d calls, 0 failed", scaledDown.Round(time.Millisecond), calls.Load())
	// Every removed worker drained: it got SIGTERM, not SIGKILL.
	logs, _ := filepath.Glob(filepath.Join(dataDir, "logs", "worker-*.log"))
	registered := map[string]bool{}
	for _, m := range c.members() {
		registered[m.ID] = true
	}
	drained := 0
	for _, l := range logs {
		id := strings.TrimSuffix(filepath.Base(l), ".log")
		if registered[id] {
			continue
		}
		b, _ := os.ReadFile(l)
		if !strings.Contains(string(b), "worker draining") || !strings.Contains(string(b), "worker stopped") {
			t.Errorf("removed %s did not drain and stop cleanly; log tail: %s", id, tail(string(b), 1500))
		}
		drained++
	}
	if drained < 1 {
		t.Errorf("no removed worker's log found among %v", logs)
	}
	var hist []historyEntry
	if err := c.ctlJSON(&hist, "history"); err != nil {
		t.Fatal(err)
	}
	var ups, downs int
	for _, h := range hist {
		if h.Kind == "scale" && h.Outcome == "succeeded" {
			switch h.Action {
			case "scale_up":
				ups++
			case "scale_down":
				downs++
			}
		}
	}
	if ups == 0 || downs == 0 {
		t.Errorf("history has %d scale_up and %d scale_down entries that succeeded, want both: %+v", ups, downs, hist)
	}

	// Phase 3: the last worker is SIGSTOPped: it still accepts connections
	// but answers nothing, and its lease keepalive stops with it. Autoheal
	// restarts it: stuck (probes) or lease lost (the process runs but is
	// not registered), whichever it sees first.
	hw := healthyWorkers(c.members())
	if len(hw) != 1 {
		t.Fatalf("healthy workers %+v, want 1", hw)
	}
	victim := hw[0]
	if err := syscall.Kill(victim.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(victim.PID, syscall.SIGCONT) }()
	stopped := time.Now()
	var heal historyEntry
	waitFor(t, 40*time.Second, "the stuck worker restarted by autoheal", func() error {
		if err := c.ctlJSON(&hist, "history"); err != nil {
			return err
		}
		heal = historyEntry{}
		for _, h := range hist {
			if h.Kind == "heal" && h.Node == victim.ID && h.Action == "restart" && h.Outcome == "succeeded" {
				heal = h
				break
			}
		}
		if heal.Kind == "" {
			return errors.New("no heal entry yet")
		}
		for _, m := range healthyWorkers(c.members()) {
			if m.ID == victim.ID && m.PID != victim.PID {
				return nil
			}
		}
		return fmt.Errorf("heal recorded (%s) but %s not back with a new pid yet", heal.Reason, victim.ID)
	})
	if !strings.Contains(heal.Reason, "stuck") && !strings.Contains(heal.Reason, "lease lost") || heal.End.Before(heal.Start) {
		t.Errorf("heal entry %+v: want a stuck or lease lost reason and end after start", heal)
	}
	t.Logf("stuck %s restarted by autoheal %s after SIGSTOP (reason: %s)", victim.ID, time.Since(stopped).Round(time.Millisecond), heal.Reason)
	// The restarted worker serves.
	s2 := connect()
	call(s2, "after-heal")
	if n := failures.Load(); n > 0 {
		t.Fatalf("call after heal failed: %s", strings.Join(failMsgs, "; "))
	}
	c.stop()
}
