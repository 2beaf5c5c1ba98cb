// Command preload fills a running erlmcp cluster's session store with idle
// sessions, so scripts/bench.sh can measure request latency against 10k,
// 100k and 1M stored sessions. It writes through the product's store client
// (the path a worker's initialize takes: one quorum-acknowledged create per
// session) with records shaped like a worker's, so the store holds what it
// would hold in production:
//
//	preload --etcd http://127.0.0.1:2379 --n 90000 --c 128
//
// A progress line goes to stderr every second; the last line on stdout is a
// JSON summary {"created":N,"seconds":S,"per_second":R}. Exit status 1 when
// any create fails after the client's own retries, 2 on bad flags.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/sessionstore/client"
)

// record is a session as a worker stores it after initialize (see
// worker/store.go sessionRecord): about 330 bytes of JSON.
const record = `{"v":1,"protocol_version":"2025-11-25",` +
	`"client_capabilities":{"roots":{"listChanged":true},"sampling":{},"elicitation":{"form":{},"url":{}}},` +
	`"client_info":{"name":"erlmcp-preload","version":"1.0.0"},` +
	`"server_capabilities":{"logging":{},"prompts":{"listChanged":true},"resources":{"subscribe":true,"listChanged":true},"tools":{"listChanged":true},"completions":{}},` +
	`"initialized":true,"log_level":"","created_by":"preload"}`

func main() {
	etcd := flag.String("etcd", "http://127.0.0.1:2379", "etcd endpoint of the cluster")
	prefix := flag.String("prefix", "/erlmcp/", "erlmcp etcd key prefix")
	n := flag.Int("n", 10000, "sessions to create")
	c := flag.Int("c", 128, "concurrent creates")
	ttl := flag.Duration("ttl", 24*time.Hour, "idle TTL of the created sessions (long enough to outlive the bench)")
	flag.Parse()
	if *n < 0 || *c < 1 || *ttl <= 0 {
		fmt.Fprintln(os.Stderr, "preload: --n must be >= 0, --c >= 1 and --ttl > 0")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
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
	rctx, rcancel := context.WithTimeout(ctx, time.Minute)
	defer rcancel()
	if err := sc.Ready(rctx); err != nil {
		fail(fmt.Errorf("store not ready: %w", err))
	}

	var next, done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	start := time.Now()
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	finished := make(chan struct{})
	go func() {
		last := int64(0)
		for {
			select {
			case <-finished:
				return
			case <-progress.C:
				d := done.Load()
				fmt.Fprintf(os.Stderr, "preload %6.0fs  %d/%d sessions  %d/s\n", time.Since(start).Seconds(), d, *n, d-last)
				last = d
			}
		}
	}()
	var wg sync.WaitGroup
	for range *c {
		wg.Go(func() {
			for next.Add(1) <= int64(*n) && ctx.Err() == nil {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := sc.Create(cctx, newID(), []byte(record), *ttl)
				cancel()
				if err != nil {
					errOnce.Do(func() { firstErr = err; stop() })
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	close(finished)
	secs := time.Since(start).Seconds()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		fail(fmt.Errorf("after %d sessions: %w", done.Load(), firstErr))
	}
	out, _ := json.Marshal(map[string]any{"created": done.Load(), "seconds": secs, "per_second": float64(done.Load()) / secs})
	fmt.Println(string(out))
}

// newID makes a session id the way a worker does: 128 random bits.
func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "preload:", err)
	os.Exit(1)
}
