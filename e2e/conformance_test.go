package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// conformanceSets are the runs of scripts/conformance.sh; each has its
// expected failures, with reasons, in conformance/baseline-<set>.yml.
var conformanceSets = []string{"active-0.1.16", "req-2025-11-25", "req-2026-07-28", "tasks"}

// TestConformance runs the official MCP conformance suite against the front
// of a real `erlmcp up`, every set against its baseline: a failure not in
// the baseline, or a baseline entry that now passes, fails the test. The
// suite and Node come from npm into $ERLMCP_CACHE_DIR (default <repo>/.cache);
// when they cannot be installed the test fails, it does not skip.
func TestConformance(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "scripts", "conformance.sh")
	cache := os.Getenv("ERLMCP_CACHE_DIR")
	if cache == "" {
		cache = filepath.Join(root, ".cache")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("conformance: bash is required to run scripts/conformance.sh")
	}

	// Workers serve MCP 2026-07-28 (sessionless) by default, as the
	// 2026-07-28 sets need.
	c := startUp(t, t.TempDir(), pickPorts(t))
	defer c.stop()
	c.steady()

	for _, set := range conformanceSets {
		t.Run(set, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", script, c.mcpURL(), set)
			cmd.Env = append(os.Environ(), "ERLMCP_CACHE_DIR="+cache, "NO_COLOR=1")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			var ee *exec.ExitError
			switch {
			case err == nil:
				t.Logf("%s: %s", set, summaryLine(out.String()))
			case errors.As(err, &ee) && ee.ExitCode() == 2:
				t.Fatalf("conformance %s: the suite could not be installed or run (is the npm registry reachable? cache %s):\n%s",
					set, cache, tail(out.String(), 4000))
			default:
				t.Fatalf("conformance %s failed against e2e/conformance/baseline-%s.yml (%v): an unexpected failure, "+
					"or a baseline entry that now passes and must be removed:\n%s", set, set, err, verdict(out.String()))
			}
		})
	}
}

// summaryLine is the suite's last "Total:" line.
func summaryLine(out string) string {
	last := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "Total:") || strings.HasPrefix(l, "Passed:") {
			last = l
		}
	}
	return last
}

// verdict is what a failed run's output says about the baseline: its
// unexpected failures and stale entries, else the output's tail.
func verdict(out string) string {
	var b strings.Builder
	keep := false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "=== conformance"), strings.HasPrefix(l, "Running client scenario"):
			b.WriteString(l + "\n")
		case strings.Contains(l, "Unexpected failures (not in baseline)"), strings.Contains(l, "Stale baseline entries"):
			keep = true
		case strings.TrimSpace(l) == "":
			keep = false
		}
		if keep {
			b.WriteString(l + "\n")
		}
	}
	if b.Len() == 0 {
		return tail(out, 4000)
	}
	return b.String() + "\n--- tail ---\n" + tail(out, 2000)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
