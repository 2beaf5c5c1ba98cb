package membership_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func member(role, id string) membership.Member {
	return membership.Member{Role: role, ID: id, Addr: "127.0.0.1:1", Region: "us-east-1", Zone: "us-east-1a", PID: 42, StartedAt: time.Now().UTC()}
}

func TestRegisterListUpdateClose(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()

	r1, err := membership.Register(ctx, cli, e.Prefix, member(membership.RoleWorker, "w1"), 2*time.Second, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	r2, err := membership.Register(ctx, cli, e.Prefix, member(membership.RoleStore, "s1"), 2*time.Second, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close(ctx)

	// The value is JSON that etcdctl users can read, under the documented key.
	resp, err := cli.Get(ctx, e.Prefix+"members/worker/w1")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get key: %v %v", resp, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(resp.Kvs[0].Value, &raw); err != nil {
		t.Fatalf("value is not JSON: %v", err)
	}
	for _, k := range []string{"role", "id", "addr", "region", "zone", "pid", "started_at", "draining"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("value lacks %q: %s", k, resp.Kvs[0].Value)
		}
	}
	if resp.Kvs[0].Lease != int64(r1.LeaseID()) {
		t.Fatalf("key not under the registration's lease")
	}

	all, err := membership.List(ctx, cli, e.Prefix, "")
	if err != nil || len(all) != 2 || all[0].Role != "store" || all[1].ID != "w1" {
		t.Fatalf("List all = %+v, %v", all, err)
	}
	workers, _ := membership.List(ctx, cli, e.Prefix, membership.RoleWorker)
	if len(workers) != 1 || workers[0].ID != "w1" {
		t.Fatalf("List workers = %+v", workers)
	}

	if err := r1.Update(ctx, func(m *membership.Member) { m.Draining = true; m.Load = 0.5 }); err != nil {
		t.Fatal(err)
	}
	workers, _ = membership.List(ctx, cli, e.Prefix, membership.RoleWorker)
	if !workers[0].Draining || workers[0].Load != 0.5 {
		t.Fatalf("update not visible: %+v", workers[0])
	}

	// Close revokes the lease: the key goes at once, not after the TTL.
	if err := r1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	workers, _ = membership.List(ctx, cli, e.Prefix, membership.RoleWorker)
	if len(workers) != 0 {
		t.Fatalf("closed member still listed: %+v", workers)
	}
}

// A process that stops keeping its lease alive (as after SIGKILL) leaves
// membership within the TTL plus etcd's expiry check.
func TestDeadMemberExpires(t *testing.T) {
	e := testcluster.StartEtcd(t)
	ctx := context.Background()
	// A client of its own, closed to simulate the process dying without Close.
	dying, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := membership.Register(ctx, dying, e.Prefix, member(membership.RoleWorker, "w1"), 2*time.Second, logging.Discard()); err != nil {
		t.Fatal(err)
	}
	observer := e.Client()
	start := time.Now()
	_ = dying.Close()
	testcluster.WaitFor(t, 5*time.Second, "dead member to leave", func() error {
		ms, err := membership.List(ctx, observer, e.Prefix, membership.RoleWorker)
		if err != nil {
			return err
		}
		if len(ms) != 0 {
			return testcluster.Errorf("still listed: %v", ms[0].ID)
		}
		return nil
	})
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("member left after %s, want within TTL 2s + 0.5s check + slack", took)
	}
}

// When its lease is lost while the process lives (revoked here, as after a
// long etcd outage), the registration writes itself again.
func TestReRegisterAfterLeaseLoss(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx := context.Background()
	logger, hook := logtest.NewNullLogger()
	r, err := membership.Register(ctx, cli, e.Prefix, member(membership.RoleStore, "s1"), 2*time.Second, logrus.NewEntry(logger))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	old := r.LeaseID()
	if _, err := cli.Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 5*time.Second, "re-registration", func() error {
		ms, err := membership.List(ctx, cli, e.Prefix, membership.RoleStore)
		if err != nil {
			return err
		}
		if len(ms) != 1 || r.LeaseID() == old {
			return testcluster.Errorf("members %d, lease changed %v", len(ms), r.LeaseID() != old)
		}
		// The key is back before the log line that follows the lookup
		// of the old lease.
		for _, e := range hook.AllEntries() {
			if e.Message == "membership registered again" {
				return nil
			}
		}
		return testcluster.Errorf("registered again, not logged yet")
	})
	// The log names the lost lease, then, once registered again, says
	// etcd no longer had it (not that renewals failed here), which is
	// what tells the two apart when every member loses its lease at once.
	var lost, said []string
	for _, e := range hook.AllEntries() {
		switch e.Message {
		case "membership lease lost; registering again":
			lost = append(lost, fmt.Sprint(e.Data["lease"]))
		case "membership registered again":
			said = append(said, fmt.Sprint(e.Data["etcd_says_of_lost_lease"]))
		}
	}
	if want := fmt.Sprintf("%x", int64(old)); len(lost) != 1 || lost[0] != want {
		t.Errorf("lease-lost log lines name leases %q, want one naming %s", lost, want)
	}
	if len(said) != 1 || !strings.Contains(said[0], "lease not found") {
		t.Fatalf("re-registration log lines say %q of the lost lease, want one saying it was not found in etcd", said)
	}
}

func TestFromKVsSkipsGarbage(t *testing.T) {
	good, _ := json.Marshal(member("worker", "b"))
	good2, _ := json.Marshal(member("worker", "a"))
	ms := membership.FromKVs(map[string][]byte{"k1": good, "k2": []byte("{not json"), "k3": good2})
	if len(ms) != 2 || ms[0].ID != "a" || ms[1].ID != "b" {
		t.Fatalf("FromKVs = %+v", ms)
	}
	if _, err := membership.Register(context.Background(), nil, "/p/", membership.Member{}, time.Second, logging.Discard()); err == nil {
		t.Fatal("Register without role/id succeeded")
	}
}
