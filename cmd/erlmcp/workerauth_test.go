package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWorkerAuthFlags: a tokens file that does not load stops worker and
// up before anything starts, naming the flag.
func TestWorkerAuthFlags(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-tokens")
	if code, _, stderr := runUp(t, []string{"--worker-auth-tokens", missing}); code != exitUsage || !strings.Contains(stderr, "--worker-auth-tokens") {
		t.Errorf("up: exit %d (%s), want %d naming --worker-auth-tokens", code, stderr, exitUsage)
	}
	for _, args := range [][]string{{"--auth-tokens", missing}, {"--auth-principal-header", "bad header"}, {"--sweep-delay", "1s"}} {
		var out, errb bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		code := cmdWorker(ctx, args, &out, &errb)
		cancel()
		if code != exitUsage || !strings.Contains(errb.String(), args[0]) {
			t.Errorf("worker %v: exit %d (%s), want %d naming %s", args, code, errb.String(), exitUsage, args[0])
		}
	}
}
