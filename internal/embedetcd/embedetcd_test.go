package embedetcd

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func freeURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "http://" + l.Addr().String()
}

func TestStartServeRestartClose(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Name: "e", DataDir: dir, ClientURL: freeURL(t), PeerURL: freeURL(t), ClusterState: "new", TickMs: 10, ElectionMs: 100, StartTimeout: 10 * time.Second}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.ClientURL()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close() // embed's own Close panics on a second call; ours must not.

	// The data survives a restart on the same directory.
	s, err = Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v %v", resp, err)
	}
}

func TestStartFailsOnTakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cfg := Config{Name: "e", DataDir: t.TempDir(), ClientURL: "http://" + l.Addr().String(), PeerURL: freeURL(t), ClusterState: "new", TickMs: 10, ElectionMs: 100}
	if _, err := Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("err = %v, want one naming %s", err, l.Addr())
	}
}

func TestValidate(t *testing.T) {
	good := DefaultConfig(t.TempDir())
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*Config){
		"no name":        func(c *Config) { c.Name = "" },
		"no dir":         func(c *Config) { c.DataDir = "" },
		"no client url":  func(c *Config) { c.ClientURL = "" },
		"short election": func(c *Config) { c.ElectionMs = 2 * c.TickMs },
		"zero tick":      func(c *Config) { c.TickMs = 0 },
		"bad state":      func(c *Config) { c.ClusterState = "maybe" },
	} {
		c := good
		change(&c)
		if c.Validate() == nil {
			t.Errorf("%s: validated", name)
		}
	}
}

func TestLogCoreFiltersAndSamples(t *testing.T) {
	var buf bytes.Buffer // one goroutine logs here, and zapcore.Lock guards it
	var closing atomic.Bool
	lg := zap.New(newLogCore(zapcore.AddSync(&buf), &closing))
	lg.Debug("slow fdatasync")
	lg.Info("serving client traffic insecurely")
	lg.Warn("some warning nobody needs")
	for range 2 * eventsPerSecond {
		lg.Warn("slow fdatasync", zap.Duration("took", time.Second))
	}
	lg.Error("failed to publish local member")
	lg.Info("raft.node: 1 elected leader 1 at term 2")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	count := func(sub string) int {
		n := 0
		for _, l := range lines {
			if strings.Contains(l, sub) {
				n++
			}
		}
		return n
	}
	if n := count("slow fdatasync"); n != eventsPerSecond {
		t.Errorf("slow fdatasync logged %d times in a burst, want %d (sampled)", n, eventsPerSecond)
	}
	if count("failed to publish") != 1 || count("elected leader") != 1 {
		t.Errorf("an error or an event is missing:\n%s", buf.String())
	}
	if len(lines) != eventsPerSecond+2 {
		t.Errorf("got %d lines, want %d:\n%s", len(lines), eventsPerSecond+2, buf.String())
	}
	closing.Store(true)
	before := buf.String()
	lg.Error("listener closed")
	if buf.String() != before {
		t.Errorf("logged after closing: %s", strings.TrimPrefix(buf.String(), before))
	}
}
