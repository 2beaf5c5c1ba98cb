// Package testcluster starts the pieces of an erlmcp cluster inside a test
// process: an embedded etcd on fast ticks and loopback ports, clients for
// it, and free ports. Role packages assemble their own nodes on top of it
// (internal imports no role).
package testcluster

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/embedetcd"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Etcd is a single-member embedded etcd for one test.
type Etcd struct {
	Server   *embedetcd.Server
	Endpoint string
	// Prefix is the key prefix tests use; each test has its own etcd, so it
	// need not differ between tests.
	Prefix string
	t      testing.TB
}

// StartEtcd starts an etcd member on loopback with 10 ms ticks and a 100 ms
// election timeout (so 1 s leases are honoured) in t.TempDir(), and stops it
// when the test ends.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	cfg := embedetcd.Config{
		Name:         "test",
		DataDir:      t.TempDir(),
		ClientURL:    "http://" + FreeAddr(t),
		PeerURL:      "http://" + FreeAddr(t),
		ClusterState: "new",
		TickMs:       10,
		ElectionMs:   100,
		StartTimeout: 20 * time.Second,
	}
	s, err := embedetcd.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(s.Close)
	return &Etcd{Server: s, Endpoint: cfg.ClientURL, Prefix: "/erlmcp-test/", t: t}
}

// Client returns a new etcd client, closed when the test ends.
func (e *Etcd) Client() *clientv3.Client {
	e.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		e.t.Fatalf("etcd client: %v", err)
	}
	e.t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// FreeAddr returns a loopback host:port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// FreeAddrs returns n distinct free loopback addresses. Each listener is
// held open until all n are chosen: closed one at a time, the kernel may
// hand the same port out twice.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		defer l.Close()
		addrs[i] = l.Addr().String()
	}
	return addrs
}

// WaitFor polls cond every 10 ms until it returns nil or timeout passes,
// then fails the test with cond's last error.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Errorf is fmt.Errorf, for WaitFor conditions.
var Errorf = fmt.Errorf
