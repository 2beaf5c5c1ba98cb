package sessionstore_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/testcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkEtcdReference is the yardstick for BenchmarkStore's numbers:
// etcd doing the same three shapes on the same machine in one process,
// first as a 3-member cluster (replicated and fsynced like the store: a
// put is acknowledged after a quorum's WAL fsync), then as one member (the
// figure issue #3 quotes, "~8k fsynced puts/s at 16 clients"). Run with
//
//	go test -run '^$' -bench BenchmarkEtcdReference -benchtime 3s ./sessionstore/
//
// (make bench runs it beside BenchmarkStore through scripts/bench-store.sh).
// The shapes, with BenchmarkStore's payload and client counts:
//
//   - create: a put of a new key;
//   - get: a linearizable get (etcd's default: a ReadIndex round) of one
//     of benchReadSet keys;
//   - cas: a txn comparing the key's version, then putting, each client on
//     its own key.
//
// The members use etcd's own default timings (100 ms heartbeat, 1 s
// election) and fsync; one clientv3 client, as BenchmarkStore uses one store
// client, which spreads its requests over the members (followers forward
// writes to the leader, as etcd's clients see in production). The metrics
// are runConcurrent's, so the two benchmarks' lines compare column by
// column.
func BenchmarkEtcdReference(b *testing.B) {
	for _, members := range []int{3, 1} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			cli := startEtcdCluster(b, members)
			// The open-loop rates only beside the store's shape, 3 members.
			benchEtcdShapes(b, cli, members == 3)
		})
	}
}

func benchEtcdShapes(b *testing.B, cli *clientv3.Client, rates bool) {
	payload := string(bytes.Repeat([]byte("x"), benchPayloadSize))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	readKeys := make([]string, benchReadSet)
	for i := range readKeys {
		readKeys[i] = fmt.Sprintf("/ref/read-%d", i)
		if _, err := cli.Put(ctx, readKeys[i], payload); err != nil {
			b.Fatalf("preload %s: %v", readKeys[i], err)
		}
	}
	var runsMu sync.Mutex
	runs := 0
	ops := []benchOp{
		{"create", func(_ context.Context, _ *testing.B, run, w int) func(context.Context, int) error {
			return func(ctx context.Context, i int) error {
				_, err := cli.Put(ctx, fmt.Sprintf("/ref/c-%d-%d-%d", run, w, i), payload)
				return err
			}
		}},
		{"get", func(_ context.Context, _ *testing.B, _, _ int) func(context.Context, int) error {
			return func(ctx context.Context, i int) error {
				resp, err := cli.Get(ctx, readKeys[i%len(readKeys)])
				if err == nil && len(resp.Kvs) != 1 {
					err = fmt.Errorf("get %s: %d keys, want 1", readKeys[i%len(readKeys)], len(resp.Kvs))
				}
				return err
			}
		}},
		{"cas", func(ctx context.Context, b *testing.B, run, w int) func(context.Context, int) error {
			key := fmt.Sprintf("/ref/cas-%d-%d", run, w)
			if _, err := cli.Put(ctx, key, payload); err != nil {
				b.Fatal(err)
			}
			ver := int64(1)
			return func(ctx context.Context, _ int) error {
				resp, err := cli.Txn(ctx).
					If(clientv3.Compare(clientv3.Version(key), "=", ver)).
					Then(clientv3.OpPut(key, payload)).
					Commit()
				if err != nil {
					return err
				}
				if !resp.Succeeded {
					// Each client owns its key: a lost compare is a bug here.
					return fmt.Errorf("cas %s at version %d lost", key, ver)
				}
				ver++
				return nil
			}
		}},
	}
	for _, op := range ops {
		for _, l := range benchLoads(op.name) {
			if l.rate > 0 && !rates {
				continue
			}
			b.Run(op.name+"/"+l.name, func(b *testing.B) {
				runsMu.Lock()
				runs++
				run := runs
				runsMu.Unlock()
				calls := make([]func(context.Context, int) error, l.workers)
				sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
				defer scancel()
				for w := range calls {
					calls[w] = op.setup(sctx, b, run, w)
				}
				l.run(b, calls)
			})
		}
	}
}

// startEtcdCluster starts members embedded etcd members on loopback, data
// in b.TempDir(), production timings and fsync, and returns a client of
// the leader alone; everything stops when the benchmark ends.
func startEtcdCluster(b *testing.B, members int) *clientv3.Client {
	b.Helper()
	// Production timings: a 100 ms heartbeat, a 1 s election.
	endpoints := testcluster.StartEtcdMembers(b, members, 100, 1000)
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second})
	if err != nil {
		b.Fatalf("etcd client: %v", err)
	}
	b.Cleanup(func() { _ = cli.Close() })
	// A linearizable read answers once the cluster has a leader.
	testcluster.WaitFor(b, time.Minute, fmt.Sprintf("a linearizable read from the %d-member etcd", members), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "/ref/ready")
		return err
	})
	// Then a client of the leader alone, as the store's client goes to
	// each shard's leader: through a follower, every write and every
	// ReadIndex would take one more hop than the store's calls do.
	var leader string
	testcluster.WaitFor(b, time.Minute, "the etcd leader's client URL", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, ep := range endpoints {
			st, err := cli.Status(ctx, ep)
			if err != nil {
				return err
			}
			if st.Leader == st.Header.GetMemberId() {
				leader = ep
				return nil
			}
		}
		return fmt.Errorf("no member says it leads")
	})
	lcli, err := clientv3.New(clientv3.Config{Endpoints: []string{leader}, DialTimeout: 10 * time.Second})
	if err != nil {
		b.Fatalf("etcd client of the leader: %v", err)
	}
	b.Cleanup(func() { _ = lcli.Close() })
	return lcli
}
