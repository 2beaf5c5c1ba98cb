package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erlmcp/erlmcp/internal/loadgen"
	"github.com/erlmcp/erlmcp/internal/loadgen/loadgentest"
)

func loadtest(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var out, errb bytes.Buffer
	code := runLoadtest(context.Background(), args, &out, &errb, lookup)
	return code, out.String(), errb.String()
}

func TestLoadtestUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"bad mix", nil, []string{"--mix", "echo=x"}, "--mix"},
		{"bad header", nil, []string{"--header", "nocolon"}, "--header"},
		{"concurrency above sessions", nil, []string{"--sessions", "2", "--concurrency", "4"}, "above --sessions"},
		{"bad env", map[string]string{"ERLMCP_DURATION": "soon"}, nil, "ERLMCP_DURATION"},
		{"sessionless counter", nil, []string{"--protocol", "2026-07-28", "--mix", "counter=1"}, "needs sessions"},
		{"sse args", nil, []string{"--sse-args", "{"}, "--sse-args"},
		{"stray argument", nil, []string{"http://x/mcp"}, "unexpected argument"},
		{"bad fault", nil, []string{"--fault", "nuke:worker@1s"}, "unknown action"},
		{"fault without a cluster", nil, []string{"--fault", "kill:worker@1s"}, "--data-dir"},
		{"no cluster in the data dir", nil, []string{"--data-dir", "/nonexistent/erlmcp"}, "no erlmcp up cluster"},
		{"bad second url", nil, []string{"--url", "http://a/mcp,ftp://b/mcp"}, "another http(s)"},
		{"negative stall reference", nil, []string{"--stall-reference", "-1s"}, "--stall-reference -1s"},
		{"no reference report", nil, []string{"--stall-reference-from", "/nonexistent/baseline.json"}, "--stall-reference-from"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := loadtest(t, tc.env, tc.args...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Fatalf("code %d stderr %q, want %d and %q", code, stderr, exitUsage, tc.want)
			}
		})
	}
	code, _, stderr := loadtest(t, nil, "--help")
	if code != exitOK || !strings.Contains(stderr, "ERLMCP_MAX_WRITES_LOST") || !strings.Contains(stderr, "--mix") {
		t.Fatalf("--help: code %d\n%s", code, stderr)
	}
}

// TestLoadtestPasses runs against the go-sdk server, configured partly from
// the environment, and reads the JSON report from stdout and the file.
func TestLoadtestPasses(t *testing.T) {
	srv := loadgentest.NewSDKServer(t, loadgentest.SDKOptions{})
	file := filepath.Join(t.TempDir(), "report.json")
	env := map[string]string{"ERLMCP_URL": srv.URL + "/mcp", "ERLMCP_HEADER": "X-Test: 1\nX-Other: 2"}
	code, stdout, stderr := loadtest(t, env, "--sessions", "4", "--concurrency", "4", "--max-requests", "300",
		"--duration", "30s", "--json", "--report-file", file, "--header", "Authorization: Bearer t")
	if code != exitOK {
		t.Fatalf("code %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	var rep loadgen.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, stdout)
	}
	if !rep.Passed || rep.Requests != 300 || rep.URL != srv.URL+"/mcp" || rep.Continuity.CounterAcks == 0 {
		t.Fatalf("report %+v", rep)
	}
	b, err := os.ReadFile(file)
	if err != nil || !json.Valid(b) || !bytes.Contains(b, []byte(`"passed": true`)) {
		t.Fatalf("report file: %v %s", err, b)
	}
	// The file is what a later faulted run takes its stall reference from.
	ref, err := loadgen.ReadReport(file)
	if err != nil {
		t.Fatal(err)
	}
	if ref.SteadyMax() <= 0 || ref.Requests != rep.Requests {
		t.Fatalf("report file read back: steady max %s, %d requests", ref.SteadyMax(), ref.Requests)
	}
}

// TestLoadtestBudgetMissed: a server that loses a session makes the command
// exit 1 and say why, in the table.
func TestLoadtestBudgetMissed(t *testing.T) {
	srv := loadgentest.NewFaulty(t, loadgentest.Fault{Lose404At: 20})
	code, stdout, stderr := loadtest(t, nil, "--url", srv.URL, "--sessions", "2", "--concurrency", "2",
		"--max-requests", "200", "--duration", "30s", "--mix", "counter=1", "--max-errors-pct", "100")
	if code != exitFailure {
		t.Fatalf("code %d, want %d\nstdout %s\nstderr %s", code, exitFailure, stdout, stderr)
	}
	if !strings.Contains(stdout, "FAIL") || !strings.Contains(stdout, "sessions lost 1 above --max-sessions-lost 0") {
		t.Fatalf("table:\n%s", stdout)
	}
}

// TestLoadtestUnreachable: nothing listening is exit 1 with a message.
func TestLoadtestUnreachable(t *testing.T) {
	srv := loadgentest.NewFaulty(t, loadgentest.Fault{})
	url := srv.URL
	srv.Close()
	code, _, stderr := loadtest(t, nil, "--url", url, "--duration", "1s")
	if code != exitFailure || !strings.Contains(stderr, "first initialize") || !strings.Contains(stderr, "conn_refused") {
		t.Fatalf("code %d stderr %s", code, stderr)
	}
}
