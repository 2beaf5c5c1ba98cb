package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCapacityCommand(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "plan.json")
	var stdout, stderr bytes.Buffer
	if code := runCapacity(context.Background(), []string{"--sample", "--output", out, "--worker-rps", "100"}, &stdout, &stderr, noEnv); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "Recommendations:") {
		t.Errorf("summary: %s", stdout.String())
	}
	var plan struct {
		Params struct {
			WorkerRPS float64 `json:"worker_rps"`
		} `json:"params"`
		Observed json.RawMessage `json:"observed"`
	}
	b, err := os.ReadFile(out)
	if err != nil || json.Unmarshal(b, &plan) != nil || plan.Params.WorkerRPS != 100 {
		t.Fatalf("report %s: %v", b, err)
	}
	if svg, err := os.ReadFile(filepath.Join(dir, "plan.svg")); err != nil || !bytes.HasPrefix(svg, []byte("<svg")) {
		t.Fatalf("chart: %v", err)
	}
	// The report's observed load plans again from a file, here as JSON.
	load := filepath.Join(dir, "load.json")
	if err := os.WriteFile(load, plan.Observed, 0o600); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if code := runCapacity(context.Background(), []string{"--metrics", load, "--json"}, &stdout, &stderr, noEnv); code != exitOK || !json.Valid(stdout.Bytes()) {
		t.Fatalf("from file: exit %d %s", code, stderr.String())
	}

	for name, tc := range map[string]struct {
		args []string
		env  map[string]string
		code int
		msg  string
	}{
		"no source":   {nil, nil, exitUsage, "exactly one of"},
		"two sources": {[]string{"--sample", "--metrics", load}, nil, exitUsage, "exactly one of"},
		"bad param":   {[]string{"--sample", "--target-utilization", "2"}, nil, exitUsage, "target utilization"},
		"bad env":     {[]string{"--sample"}, map[string]string{"ERLMCP_WORKER_RPS": "fast"}, exitUsage, "ERLMCP_WORKER_RPS"},
		"no file":     {[]string{"--metrics", filepath.Join(dir, "nope.json")}, nil, exitFailure, "reading the metrics file"},
		"no prom":     {[]string{"--prometheus", "http://127.0.0.1:1"}, nil, exitFailure, "querying prometheus"},
		"bad output":  {[]string{"--sample", "--output", filepath.Join(dir, "no", "such", "dir.json")}, nil, exitFailure, "--output"},
	} {
		stderr.Reset()
		lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
		if code := runCapacity(context.Background(), tc.args, &stdout, &stderr, lookup); code != tc.code || !strings.Contains(stderr.String(), tc.msg) {
			t.Errorf("%s: exit %d (want %d), stderr %q (want %q)", name, code, tc.code, stderr.String(), tc.msg)
		}
	}
}
