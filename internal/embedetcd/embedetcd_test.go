package embedetcd

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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
