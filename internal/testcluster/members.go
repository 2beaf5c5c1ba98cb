package testcluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/embedetcd"
)

// StartEtcdMembers starts an n-member embedded etcd cluster on loopback
// (heartbeat tickMs, election electionMs, data in t.TempDir(), fsync on),
// stops it when the test ends, and returns the members' client URLs. It
// blocks until every member has started: each is ready only once a quorum
// runs, so they start together.
func StartEtcdMembers(t testing.TB, n int, tickMs, electionMs uint) []string {
	t.Helper()
	servers := StartEtcdServers(t, n, tickMs, electionMs)
	urls := make([]string, n)
	for i, s := range servers {
		urls[i] = s.ClientURL()
	}
	return urls
}

// StartEtcdServers is StartEtcdMembers returning the members themselves,
// for a test that stops some of them (Close; the cleanup's second Close is
// harmless).
func StartEtcdServers(t testing.TB, n int, tickMs, electionMs uint) []*embedetcd.Server {
	t.Helper()
	servers := make([]*embedetcd.Server, n)
	cfgs := make([]embedetcd.Config, n)
	initial := make([]string, n)
	addrs := FreeAddrs(t, 2*n)
	for i := range cfgs {
		cfgs[i] = embedetcd.Config{
			Name:         fmt.Sprintf("m%d", i),
			DataDir:      t.TempDir(),
			ClientURL:    "http://" + addrs[2*i],
			PeerURL:      "http://" + addrs[2*i+1],
			ClusterState: "new",
			TickMs:       tickMs,
			ElectionMs:   electionMs,
			StartTimeout: time.Minute,
		}
		initial[i] = cfgs[i].Name + "=" + cfgs[i].PeerURL
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(initial, ",")
		wg.Go(func() {
			s, err := embedetcd.Start(context.Background(), cfgs[i])
			if err != nil {
				errs[i] = fmt.Errorf("member %s: %w", cfgs[i].Name, err)
				return
			}
			servers[i] = s
			t.Cleanup(s.Close)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("start a %d-member etcd: %v", n, err)
	}
	return servers
}
