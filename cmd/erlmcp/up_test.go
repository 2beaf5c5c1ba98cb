package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/localcluster"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

// upArgs gives every port of a one-of-each cluster a free loopback port.
func upArgs(t *testing.T, dataDir string) []string {
	port := func() string {
		_, p, _ := net.SplitHostPort(testcluster.FreeAddr(t))
		return p
	}
	return []string{
		"--data-dir", dataDir,
		"--listen", testcluster.FreeAddr(t),
		"--admin-port-base", port(), "--worker-port-base", port(), "--store-port-base", port(),
		"--etcd-client-port", port(), "--etcd-peer-port", port(),
		"--workers", "1", "--stores", "1", "--controlplanes", "1",
	}
}

func runUp(t *testing.T, args []string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := cmdUp(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUpPortInUse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	args := append(upArgs(t, dir), "--store-port-base", port)
	code, _, stderr := runUp(t, args)
	if code != exitFailure || !strings.Contains(stderr, "port 127.0.0.1:"+port+" (for store-1 gRPC) is not free") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "logs")); err == nil {
		t.Fatal("children were set up despite the port error")
	}
}

func TestUpDataDirLocked(t *testing.T) {
	dir := t.TempDir()
	held, err := localcluster.LockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	code, _, stderr := runUp(t, upArgs(t, dir))
	want := fmt.Sprintf("data dir %s is in use by another erlmcp up (pid %d)", dir, os.Getpid())
	if code != exitFailure || !strings.Contains(stderr, want) {
		t.Fatalf("exit %d, stderr %q, want %q", code, stderr, want)
	}
}

func TestUpDataDirUnusable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runUp(t, upArgs(t, filepath.Join(file, "data")))
	if code != exitFailure || !strings.Contains(stderr, "data dir "+filepath.Join(file, "data")+" cannot be created") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestUpBadFlags(t *testing.T) {
	for _, args := range [][]string{{"--workers", "0"}, {"--lease-ttl", "1s"}, {"--worker-port-base", "9092"}, {"--nope"}} {
		if code, _, stderr := runUp(t, args); code != exitUsage {
			t.Errorf("%v: exit %d (%s), want %d", args, code, stderr, exitUsage)
		}
	}
	if code, _, _ := runUp(t, []string{"--help"}); code != exitOK {
		t.Errorf("--help: exit %d", code)
	}
}

func TestFrontAndEtcdFlags(t *testing.T) {
	var out, errb bytes.Buffer
	ctx := context.Background()
	if code := cmdFront(ctx, []string{"--listen", "nonsense"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "--listen") {
		t.Fatalf("front: exit %d, %s", code, errb.String())
	}
	errb.Reset()
	if code := cmdEtcd(ctx, []string{"--cluster-state", "maybe"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "cluster state") {
		t.Fatalf("etcd: exit %d, %s", code, errb.String())
	}
}

func TestEtcdRunsUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := "http://" + testcluster.FreeAddr(t)
	args := []string{"--data-dir", t.TempDir(), "--client-url", client, "--peer-url", "http://" + testcluster.FreeAddr(t), "--tick-ms", "10", "--election-ms", "100", "--log-format", "text"}
	var errb upSyncBuffer
	done := make(chan int, 1)
	go func() { done <- cmdEtcd(ctx, args, &bytes.Buffer{}, &errb) }()
	testcluster.WaitFor(t, 20*time.Second, "etcd ready", func() error {
		select {
		case code := <-done:
			t.Fatalf("etcd exited %d: %s", code, errb.String())
		default:
		}
		if !strings.Contains(errb.String(), "etcd ready") {
			return fmt.Errorf("log: %s", errb.String())
		}
		return nil
	})
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("etcd did not stop")
	}
}

type upSyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *upSyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *upSyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
