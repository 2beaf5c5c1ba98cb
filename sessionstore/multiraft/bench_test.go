package multiraft

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/sessionstore/internal/proccpu"
)

// BenchmarkPropose measures the engine's write path alone: three nodes in
// this process over loopback gRPC, 64 shards (a replica of each on every
// node), C clients each proposing 256-byte puts to the leader of a shard
// in turn (path=new: leaders send before their own fsync and proposers are
// answered before the apply's fsync, the default; path=legacy: neither, as
// before); a proposal returns once committed by a quorum (fsynced on two
// nodes) and applied on the leader. Run with
//
//	go test -run '^$' -bench BenchmarkPropose -benchtime 2000x ./sessionstore/multiraft/
//
// It reports writes/s, the p50 and p99 latency of one proposal in ms,
// commits/write (WAL group commits on all nodes per write) with their
// ms/commit, apply-commits/write (the appliers' bbolt transactions, not
// fsynced), fsyncs/write (WAL commits plus two per raft.db checkpoint,
// all nodes), cpu-us/write (the process's CPU time: three nodes and their
// transports, per write; unlike latency it hardly depends on what else
// runs on the machine) and disk-KB/write: bytes the process wrote to
// disk (/proc/self/io write_bytes) per write per node.
func BenchmarkPropose(b *testing.B) {
	b.Run("path=new", func(b *testing.B) { benchPropose(b, false) })
	b.Run("path=legacy", func(b *testing.B) { benchPropose(b, true) })
}

func benchPropose(b *testing.B, legacy bool) {
	const shards = 64
	c := newTestCluster(b, 3, func(cfg *Config) {
		// Production ticks: test ticks (10ms) would add CPU noise.
		cfg.TickInterval, cfg.ElectionTicks = 100*time.Millisecond, 10
		cfg.legacyWritePath = legacy
	})
	var all []uint32
	for s := range uint32(shards) {
		all = append(all, s)
	}
	c.bootstrap(all...)
	for _, s := range c.stores() {
		for _, sh := range all {
			_ = c.node(s).Campaign(sh) // speeds up the first elections
		}
	}
	for _, sh := range all {
		c.mustPut(sh, "warm", "1")
	}
	val := strings.Repeat("x", 256)
	for _, clients := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			leaders := map[uint32]*Node{}
			for _, sh := range all {
				leaders[sh] = c.node(c.leader(sh, 30*time.Second))
			}
			var next atomic.Int64
			lat := make([][]time.Duration, clients)
			var failed atomic.Int64
			wb0 := procWriteBytes()
			sum := func() Stats {
				var st Stats
				for _, s := range c.stores() {
					st = st.Add(c.node(s).Stats())
				}
				return st
			}
			st0 := sum()
			cpu0 := proccpu.Used()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for w := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						sh := all[i%shards]
						t0 := time.Now()
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						_, err := leaders[sh].Propose(ctx, sh, putCmd(fmt.Sprint("k", w), val))
						cancel()
						if err != nil {
							failed.Add(1)
							continue
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if f := failed.Load(); f > int64(b.N)/100 {
				b.Fatalf("%d of %d proposals failed", f, b.N)
			}
			merged := slices.Concat(lat...)
			slices.Sort(merged)
			if len(merged) == 0 {
				return
			}
			ms := func(q float64) float64 {
				return float64(merged[int(q*float64(len(merged)-1))]) / float64(time.Millisecond)
			}
			b.ReportMetric(float64(len(merged))/elapsed.Seconds(), "writes/s")
			b.ReportMetric(ms(0.50), "p50-ms")
			b.ReportMetric(ms(0.99), "p99-ms")
			cpu := proccpu.Used() - cpu0
			st1 := sum()
			st1.Writes.Sub(st0.Writes).Report(b.ReportMetric)
			st1.Syncs -= st0.Syncs
			st1.SyncTime -= st0.SyncTime
			st1.ApplyCommits -= st0.ApplyCommits
			st1.Checkpoints -= st0.Checkpoints
			writes := float64(len(merged))
			b.ReportMetric(float64(st1.ApplyCommits)/writes, "apply-commits/write")
			b.ReportMetric(float64(st1.Syncs+2*st1.Checkpoints)/writes, "fsyncs/write")
			b.ReportMetric(float64(cpu)/writes/float64(time.Microsecond), "cpu-us/write")
			if st1.Syncs > 0 {
				b.ReportMetric(float64(st1.Syncs)/float64(len(merged)), "commits/write")
				b.ReportMetric(float64(st1.SyncTime)/float64(st1.Syncs)/float64(time.Millisecond), "ms/commit")
			}
			if wb0 >= 0 {
				b.ReportMetric(float64(procWriteBytes()-wb0)/float64(len(merged))/3/1024, "disk-KB/write")
			}
		})
	}
}

// procWriteBytes is this process's write_bytes from /proc/self/io (bytes
// sent to the block layer), or -1 where it is not available.
func procWriteBytes() int64 {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var v int64
		if _, err := fmt.Sscanf(sc.Text(), "write_bytes: %d", &v); err == nil {
			return v
		}
	}
	return -1
}
