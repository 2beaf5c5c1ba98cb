// Command storeprobe times the session-store operations one erlmcp worker
// makes per MCP request, against a running cluster (erlmcp up), through the
// same store client the worker uses. It answers "where does a tools/call's
// latency go" without touching product code:
//
//	storeprobe --etcd http://127.0.0.1:2379 --n 300 --c 1
//
// Each operation kind runs n times spread over c goroutines, each on its own
// session; the report gives p50/p99 per kind, plus the store sequence of a
// tracked tools/call (Get touch, ReadEvents, PutState, long poll started
// and cancelled, DeleteState) as the worker runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/sessionstore/client"
)

func main() {
	etcd := flag.String("etcd", "http://127.0.0.1:2379", "etcd endpoint of the cluster (loopback)")
	prefix := flag.String("prefix", "/erlmcp/", "erlmcp etcd key prefix")
	n := flag.Int("n", 300, "operations per kind")
	c := flag.Int("c", 1, "concurrent goroutines (one session each)")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cli, err := etcdclient.New(ctx, etcdclient.DefaultConfig(*etcd))
	if err != nil {
		fail(err)
	}
	defer cli.Close()
	sc, err := client.New(ctx, client.Config{Etcd: cli, Prefix: *prefix})
	if err != nil {
		fail(err)
	}
	defer sc.Close()
	if err := sc.Ready(ctx); err != nil {
		fail(err)
	}

	sids := make([]string, *c)
	for i := range sids {
		sids[i] = fmt.Sprintf("probe-%d-%d", time.Now().UnixNano(), i)
		if _, err := sc.Create(ctx, sids[i], []byte(`{}`), time.Hour); err != nil {
			fail(err)
		}
	}
	defer func() {
		for _, s := range sids {
			_ = sc.Delete(context.Background(), s)
		}
	}()

	kinds := []struct {
		name string
		op   func(ctx context.Context, sid string, i int) error
	}{
		{"Get (read, ReadIndex)", func(ctx context.Context, sid string, _ int) error {
			_, err := sc.Get(ctx, sid, false)
			return err
		}},
		{"Get touch (Raft write)", func(ctx context.Context, sid string, _ int) error {
			_, err := sc.Get(ctx, sid, true)
			return err
		}},
		{"ReadEvents wait=0 (ReadIndex)", func(ctx context.Context, sid string, _ int) error {
			_, err := sc.ReadEvents(ctx, sid, "ctl", 0, 1, 0)
			return err
		}},
		{"PutState (Raft write)", func(ctx context.Context, sid string, i int) error {
			_, err := sc.PutState(ctx, sid, fmt.Sprintf("k%d", i), []byte(`{"w":"x"}`), nil)
			return err
		}},
		{"DeleteState (Raft write)", func(ctx context.Context, sid string, i int) error {
			return sc.DeleteState(ctx, sid, fmt.Sprintf("k%d", i))
		}},
		{"AppendEvents (Raft write)", func(ctx context.Context, sid string, _ int) error {
			_, err := sc.AppendEvents(ctx, sid, "s", []byte(`{}`))
			return err
		}},
		{"long poll started+cancelled", func(ctx context.Context, sid string, _ int) error {
			pctx, pcancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				_, _ = sc.ReadEvents(pctx, sid, "ctl", 1<<40, 32, 2*time.Second)
				close(done)
			}()
			time.Sleep(time.Millisecond)
			pcancel()
			<-done
			return nil
		}},
		{"tools/call store sequence", func(ctx context.Context, sid string, i int) error {
			if _, err := sc.Get(ctx, sid, true); err != nil {
				return err
			}
			st, err := sc.ReadEvents(ctx, sid, "ctl", 0, 1, 0)
			if err != nil {
				return err
			}
			key := fmt.Sprintf("inflight/%d", i)
			if _, err := sc.PutState(ctx, sid, key, []byte(`{"worker":"probe"}`), nil); err != nil {
				return err
			}
			pctx, pcancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				_, _ = sc.ReadEvents(pctx, sid, "ctl", st.LastSeq, 32, 2*time.Second)
				close(done)
			}()
			pcancel()
			<-done
			return sc.DeleteState(ctx, sid, key)
		}},
	}

	fmt.Printf("%-32s %8s %8s %8s %8s\n", "operation", "ops/s", "p50 ms", "p99 ms", "errors")
	for _, k := range kinds {
		lat := make([]time.Duration, 0, *n)
		var mu sync.Mutex
		var wg sync.WaitGroup
		errs := 0
		per := *n / *c
		start := time.Now()
		for g := 0; g < *c; g++ {
			wg.Go(func() {
				for i := 0; i < per; i++ {
					t := time.Now()
					octx, ocancel := context.WithTimeout(ctx, 5*time.Second)
					err := k.op(octx, sids[g], g*per+i)
					ocancel()
					d := time.Since(t)
					mu.Lock()
					if err != nil {
						errs++
					} else {
						lat = append(lat, d)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		el := time.Since(start)
		slices.Sort(lat)
		pct := func(p float64) float64 {
			if len(lat) == 0 {
				return 0
			}
			return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
		}
		fmt.Printf("%-32s %8.0f %8.2f %8.2f %8d\n", k.name, float64(len(lat))/el.Seconds(), pct(0.50), pct(0.99), errs)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "storeprobe:", err)
	os.Exit(1)
}
