package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/loadgen/loadgentest"
)

func testConfig(url string) Config {
	c := DefaultConfig()
	c.URL = url + "/mcp"
	c.Mix = DefaultMix(c.Protocol)
	c.Duration = time.Second
	c.Timeout = 5 * time.Second
	return c
}

func mustRun(t *testing.T, cfg Config) (Report, string) {
	t.Helper()
	var progress bytes.Buffer
	r, err := Run(context.Background(), cfg, &progress)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var table bytes.Buffer
	if err := r.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("progress:\n%s\nreport:\n%s", progress.String(), table.String())
	return r, progress.String()
}

func wantClean(t *testing.T, r Report) {
	t.Helper()
	if !r.Passed || len(r.Violations) != 0 {
		t.Errorf("passed %v violations %v", r.Passed, r.Violations)
	}
	if r.Errors.Total != 0 || r.Continuity.SessionsLost != 0 || r.Continuity.WritesLost != 0 || r.Continuity.Skipped != 0 {
		t.Errorf("errors %+v continuity %+v", r.Errors, r.Continuity)
	}
	if r.Uptime.Pct != 100 || r.Continuity.FailoverMax != 0 {
		t.Errorf("uptime %v failover %s", r.Uptime.Pct, r.Continuity.FailoverMax)
	}
}

// TestRunAgainstGoSDK drives the default mix at concurrency 16 for 2 s
// against the official go-sdk's Streamable HTTP handler (streamed answers).
func TestRunAgainstGoSDK(t *testing.T) {
	srv := loadgentest.NewSDKServer(t, loadgentest.SDKOptions{})
	cfg := testConfig(srv.URL)
	cfg.Duration = 2 * time.Second
	cfg.Ramp = 200 * time.Millisecond
	r, progress := mustRun(t, cfg)
	wantClean(t, r)
	if r.Requests < 50 || r.Ops[OpCounter].Count < 5 || r.Ops[OpEcho].Count < 5 || r.Ops[OpInit].Count != 16 ||
		r.Ops[OpInit].Count+r.Ops[OpList].Count+r.Ops[OpEcho].Count+r.Ops[OpCounter].Count != r.Requests {
		t.Errorf("requests %d ops %+v", r.Requests, r.Ops)
	}
	if !r.Continuity.Checked || r.Continuity.CounterAcks != r.Ops[OpCounter].Count {
		t.Errorf("continuity %+v", r.Continuity)
	}
	if r.Latency.P50 <= 0 || r.Latency.P99 < r.Latency.P50 || r.Latency.Max < r.Latency.P99 || r.RPS <= 0 {
		t.Errorf("latency %+v rps %v", r.Latency, r.RPS)
	}
	if r.Sessions.Initialized != 16 || r.Sessions.Lost != 0 {
		t.Errorf("sessions %+v", r.Sessions)
	}
	if !strings.Contains(progress, "loadtest    1s  rps") {
		t.Errorf("no progress line for the first second:\n%s", progress)
	}
	// the JSON form round-trips with its schema name
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil || m["schema"] != ReportSchema || m["passed"] != true {
		t.Fatalf("JSON: %v %s", err, buf.String())
	}
	for _, k := range []string{"requests", "rps", "latency_ms", "errors", "continuity", "uptime", "sessions", "ops", "violations"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
}

// TestRunChurnStreamsAndResume covers DELETE + re-initialize, progress
// streams and resumption with GET + Last-Event-ID, at a fixed rate.
func TestRunChurnStreamsAndResume(t *testing.T) {
	srv := loadgentest.NewSDKServer(t, loadgentest.SDKOptions{SlowSteps: 3, SlowStep: 5 * time.Millisecond})
	cfg := testConfig(srv.URL)
	cfg.Sessions, cfg.Concurrency = 8, 8
	cfg.Rate = 300
	cfg.Mix = Mix{OpEcho: 3, OpCounter: 3, OpSSE: 1, OpResume: 1, OpDelete: 1}
	cfg.SSETool = "slow"
	r, _ := mustRun(t, cfg)
	wantClean(t, r)
	if r.Ops[OpDelete].Count == 0 || r.Sessions.Deleted != r.Ops[OpDelete].Count || r.Sessions.Initialized < r.Sessions.Deleted {
		t.Errorf("churn: ops %+v sessions %+v", r.Ops[OpDelete], r.Sessions)
	}
	if r.Ops[OpSSE].Count == 0 || r.Streams.ProgressNotifications == 0 {
		t.Errorf("sse: %+v streams %+v", r.Ops[OpSSE], r.Streams)
	}
	if r.Ops[OpResume].Count == 0 || r.Streams.Resumes == 0 {
		t.Errorf("resume: %+v streams %+v", r.Ops[OpResume], r.Streams)
	}
	if r.Requests > 330 {
		t.Errorf("rate 300/s for 1 s ran %d operations", r.Requests)
	}
}

// TestRunSessionless speaks 2026-07-28 (no initialize, _meta per request)
// to the go-sdk in stateless mode, answering in JSON.
func TestRunSessionless(t *testing.T) {
	srv := loadgentest.NewSDKServer(t, loadgentest.SDKOptions{Stateless: true, JSONResponse: true})
	cfg := testConfig(srv.URL)
	cfg.Protocol = Protocol20260728
	cfg.Mix = DefaultMix(cfg.Protocol)
	cfg.Sessions, cfg.Concurrency = 4, 4
	cfg.MaxRequests = 200
	cfg.Duration = 20 * time.Second // the count ends the run
	r, _ := mustRun(t, cfg)
	wantClean(t, r)
	if r.Requests != 200 || r.Ops[OpInit].Count != 0 || r.Continuity.Checked {
		t.Errorf("requests %d ops %+v checked %v", r.Requests, r.Ops, r.Continuity.Checked)
	}
}

// TestRunMissingCounterTool: a server without the counter tool is reported
// as such and fails the run, rather than counting errors.
func TestRunMissingCounterTool(t *testing.T) {
	srv := loadgentest.NewSDKServer(t, loadgentest.SDKOptions{NoCounter: true})
	cfg := testConfig(srv.URL)
	cfg.Sessions, cfg.Concurrency = 2, 2
	cfg.MaxRequests = 50
	cfg.Duration = 20 * time.Second // the count ends the run
	var progress bytes.Buffer
	r, err := Run(context.Background(), cfg, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if r.Passed || len(r.ToolsMissing) != 1 || r.ToolsMissing[0] != "counter" || r.Errors.Total != 0 ||
		r.Ops[OpCounter].Count != 0 || r.Continuity.Checked || !strings.Contains(strings.Join(r.Violations, "\n"), `no tool "counter"`) {
		t.Fatalf("report %+v", r)
	}
	if !strings.Contains(progress.String(), `no tool "counter"`) {
		t.Errorf("no warning on progress: %s", progress.String())
	}
	cfg.Mix = Mix{OpCounter: 1}
	if _, err := Run(context.Background(), cfg, nil); err == nil || !strings.Contains(err.Error(), "nothing to run") {
		t.Fatalf("counter-only mix against a server without it: %v", err)
	}
}

// TestRunFaults runs against a server that breaks continuity on purpose;
// each fault must show in its own counter and fail the budgets.
func TestRunFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  loadgentest.Fault
		struck string
		check  func(*testing.T, Report)
	}{
		{"counter goes back", loadgentest.Fault{GoBackAt: 40}, "goback", func(t *testing.T, r Report) {
			if r.Continuity.WritesLost != 2 || r.Continuity.WritesLostEvents != 1 || r.Continuity.SessionsLost != 0 {
				t.Errorf("continuity %+v", r.Continuity)
			}
		}},
		{"counter skips", loadgentest.Fault{SkipAt: 40, SSE: true}, "skip", func(t *testing.T, r Report) {
			if r.Continuity.Skipped != 1 || r.Continuity.WritesLost != 0 || r.Continuity.SessionsLost != 0 {
				t.Errorf("continuity %+v", r.Continuity)
			}
		}},
		{"counter resets", loadgentest.Fault{ResetAt: 40}, "reset", func(t *testing.T, r Report) {
			if r.Continuity.SessionsLost != 1 || r.Continuity.SessionsLostByReason["counter_reset"] != 1 || r.Continuity.WritesLost != 0 {
				t.Errorf("continuity %+v", r.Continuity)
			}
		}},
		{"session answered 404", loadgentest.Fault{Lose404At: 40}, "404", func(t *testing.T, r Report) {
			if r.Continuity.SessionsLost != 1 || r.Continuity.SessionsLostByReason["http_404"] != 1 || r.Errors.ByKind["http_404"] != 1 ||
				r.Sessions.Initialized != 5 || r.Continuity.SlotsWithGaps != 1 || r.Continuity.FailoverMax <= 0 || r.Uptime.Pct == 100 {
				t.Errorf("errors %+v sessions %+v continuity %+v uptime %+v", r.Errors, r.Sessions, r.Continuity, r.Uptime)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := loadgentest.NewFaulty(t, tc.fault)
			cfg := testConfig(srv.URL)
			cfg.URL = srv.URL
			cfg.Sessions, cfg.Concurrency = 4, 4
			cfg.Mix = Mix{OpCounter: 3, OpEcho: 1}
			cfg.MaxRequests = 400
			cfg.Duration = 20 * time.Second // the count ends the run
			cfg.Budgets.MaxErrorsPct = 100
			r, _ := mustRun(t, cfg)
			if !srv.Struck(tc.struck) {
				t.Fatalf("the fault %q never struck", tc.struck)
			}
			if r.Passed || len(r.Violations) == 0 {
				t.Errorf("a run with a %s passed", tc.name)
			}
			tc.check(t, r)
		})
	}
}

// TestRunInterrupted: cancelling the context ends the run early and says so.
func TestRunInterrupted(t *testing.T) {
	srv := loadgentest.NewSDKServer(t, loadgentest.SDKOptions{JSONResponse: true})
	cfg := testConfig(srv.URL)
	cfg.Duration = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	var progress syncBuffer
	progress.onWrite = cancel // stop at the first progress line
	r, err := Run(ctx, cfg, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Interrupted || r.Passed || r.Elapsed > 60 || r.Errors.Total != 0 {
		t.Fatalf("interrupted %v passed %v elapsed %v errors %+v", r.Interrupted, r.Passed, r.Elapsed, r.Errors)
	}
}

// syncBuffer calls onWrite after each write.
type syncBuffer struct {
	bytes.Buffer
	onWrite func()
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	n, err := b.Buffer.Write(p)
	if b.onWrite != nil {
		b.onWrite()
	}
	return n, err
}

func TestRefusedBackoff(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var b time.Duration
	var seen []time.Duration
	for i := 0; i < 8; i++ {
		refusedBackoff(ctx, "conn_refused", &b)
		seen = append(seen, b)
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 50, 50}
	for i := range want {
		if seen[i] != want[i]*time.Millisecond {
			t.Fatalf("backoffs %v, want %v ms", seen, want)
		}
	}
	if !refusedBackoff(ctx, "http_503", &b) || b != 0 {
		t.Fatalf("other kinds reset the wait: %s", b)
	}
	if !refusedBackoff(ctx, "", &b) || b != 0 {
		t.Fatalf("success resets the wait: %s", b)
	}
}
