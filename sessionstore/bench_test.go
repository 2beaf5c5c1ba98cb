package sessionstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/gcfloor"
	"github.com/erlmcp/erlmcp/sessionstore"
	"github.com/erlmcp/erlmcp/sessionstore/client"
	"github.com/erlmcp/erlmcp/sessionstore/internal/proccpu"
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
)

// Store benchmarks: three store nodes in this process, every shard a Raft
// group of three replicas (one per node), the real client over gRPC on
// loopback, so each write is a Raft proposal acknowledged after a quorum's
// fsync and each read a lease read on the shard leader (or a ReadIndex
// round when the lease has run out). Run with
//
//	go test -run '^$' -bench BenchmarkStore -benchtime 3s ./sessionstore/
//
// (make bench runs it through scripts/bench-store.sh). Every sub-benchmark
// reports ops/s and the p50 and p99 latency of one call in ms, measured
// by the calling goroutine, as C concurrent clients would see them, and
// cpu-us/op: the CPU time of this process (three store nodes, the client,
// etcd's client side) per call, which unlike latency hardly depends on
// what else runs on the machine, net-cpu-us/op the same less the idle
// cluster's CPU over the run's wall time, and the engine's syncs, apply
// transactions, raft.db pages those wrote, sends and messages per call
// (summed over the nodes), and sched-us: how long, on average, a goroutine
// of the process waited for a P once runnable (runtime/metrics), which is
// what most of a call's latency beyond its fsyncs is on a small machine.

const (
	benchShards      = 64
	benchPayloadSize = 256
	benchReadSet     = 1024
)

var benchClients = []int{1, 16, 64}

// benchRates are the open-loop rates, in calls per second, each op runs at
// after its closed loops (runAtRate), from well below the machine's
// capacity to near it; benchRateWorkers calls run at most at once.
var benchRates = map[string][]int{
	"create": {250, 500, 1000, 2000},
	"cas":    {250, 500, 1000, 2000},
	"get":    {1000, 5000, 10000},
}

const benchRateWorkers = 64

// benchLoad is one way of driving an op: a closed loop of workers clients,
// or an open loop at rate calls per second.
type benchLoad struct {
	name    string
	workers int
	rate    int
}

func benchLoads(op string) []benchLoad {
	var ls []benchLoad
	for _, c := range benchClients {
		ls = append(ls, benchLoad{name: fmt.Sprintf("clients=%d", c), workers: c})
	}
	for _, r := range benchRates[op] {
		ls = append(ls, benchLoad{name: fmt.Sprintf("rate=%d", r), workers: benchRateWorkers, rate: r})
	}
	return ls
}

func (l benchLoad) run(b *testing.B, calls []func(context.Context, int) error) {
	if l.rate > 0 {
		runAtRate(b, float64(l.rate), calls)
	} else {
		runConcurrent(b, l.workers, calls)
	}
}

// useStoreGC gives the process, until b ends, the GC target `erlmcp store`
// runs with: its defaults, or ERLMCP_GC_PERCENT and ERLMCP_GC_MIN_HEAP_MIB
// when set. It is process-wide, so in the benchmarks it covers the three
// nodes and the client together: one heap floor where three processes
// would have one each.
func useStoreGC(b *testing.B) {
	cfg := sessionstore.DefaultConfig()
	if v, err := strconv.Atoi(os.Getenv("ERLMCP_GC_PERCENT")); err == nil {
		cfg.GCPercent = v
	}
	if v, err := strconv.Atoi(os.Getenv("ERLMCP_GC_MIN_HEAP_MIB")); err == nil {
		cfg.GCMinHeapMiB = v
	}
	prev := debug.SetGCPercent(cfg.GCPercent)
	stop, err := gcfloor.StartMiB(cfg.GCPercent, cfg.GCMinHeapMiB)
	if err != nil {
		debug.SetGCPercent(prev)
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stop()
		debug.SetGCPercent(prev)
	})
}

type benchOp struct {
	name string
	// setup prepares what worker w of a run needs and returns its call.
	setup func(ctx context.Context, b *testing.B, run, w int) func(ctx context.Context, i int) error
}

func BenchmarkStore(b *testing.B) {
	useStoreGC(b)
	c := newRCluster(b, benchShards, "a", "b", "c")
	// The production timings, not the tests' faster ones.
	for id, cfg := range c.cfgs {
		d := sessionstore.DefaultConfig()
		cfg.RaftTickInterval, cfg.ReconcileInterval = d.RaftTickInterval, d.ReconcileInterval
		cfg.StatusInterval, cfg.SweepInterval = d.StatusInterval, d.SweepInterval
		cfg.Common.LeaseTTL = d.Common.LeaseTTL
		c.cfgs[id] = cfg
	}
	for i := range benchShards {
		c.place(i, 1, []string{"a", "b", "c"}, nil, nil)
	}
	c.start("a", "b", "c")
	cl, err := client.New(context.Background(), client.Config{Etcd: c.cli, Prefix: c.prefix, RequestTimeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cl.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := cl.Ready(ctx); err != nil {
		b.Fatal(err)
	}
	payload := bytes.Repeat([]byte("x"), benchPayloadSize)
	// Every shard has elected a leader and serves writes.
	for s := range benchShards {
		id := idInShard(s, benchShards, "warm")
		for {
			if _, err := cl.Create(ctx, id, payload, 0); err == nil || errors.Is(err, client.ErrAlreadyExists) {
				break
			} else if ctx.Err() != nil {
				b.Fatalf("shard %d never served a write: %v", s, err)
			}
		}
	}
	readIDs := make([]string, benchReadSet)
	for i := range readIDs {
		readIDs[i] = fmt.Sprintf("read-%d", i)
		if _, err := cl.Create(ctx, readIDs[i], payload, 0); err != nil {
			b.Fatal(err)
		}
	}

	var runs atomic.Int64
	ops := []benchOp{
		{"create", func(_ context.Context, _ *testing.B, run, w int) func(context.Context, int) error {
			return func(ctx context.Context, i int) error {
				_, err := cl.Create(ctx, fmt.Sprintf("c-%d-%d-%d", run, w, i), payload, 0)
				return err
			}
		}},
		{"get", func(_ context.Context, _ *testing.B, _, _ int) func(context.Context, int) error {
			return func(ctx context.Context, i int) error {
				_, err := cl.Get(ctx, readIDs[i%len(readIDs)], false)
				return err
			}
		}},
		{"cas", func(ctx context.Context, b *testing.B, run, w int) func(context.Context, int) error {
			id := fmt.Sprintf("cas-%d-%d", run, w)
			s, err := cl.Create(ctx, id, payload, 0)
			if err != nil {
				b.Fatal(err)
			}
			ver := s.Version
			return func(ctx context.Context, _ int) error {
				s, err := cl.CompareAndSet(ctx, id, ver, payload)
				if err == nil {
					ver = s.Version
				}
				return err
			}
		}},
		{"append", func(ctx context.Context, b *testing.B, run, w int) func(context.Context, int) error {
			id := fmt.Sprintf("ev-%d-%d", run, w)
			if _, err := cl.Create(ctx, id, payload, 0); err != nil {
				b.Fatal(err)
			}
			return func(ctx context.Context, _ int) error {
				_, err := cl.AppendEvents(ctx, id, "bench", payload)
				return err
			}
		}},
	}
	for _, op := range ops {
		for _, l := range benchLoads(op.name) {
			b.Run(op.name+"/"+l.name, func(b *testing.B) {
				run := int(runs.Add(1))
				calls := make([]func(context.Context, int) error, l.workers)
				sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
				defer scancel()
				for w := range calls {
					calls[w] = op.setup(sctx, b, run, w)
				}
				before := c.raftStats()
				l.run(b, calls)
				reportEngine(b, before, c.raftStats())
			})
		}
	}
}

// runConcurrent makes b.N calls from conc goroutines and reports
// throughput and latency percentiles: a closed loop, each client calling
// again as soon as its call returns, so the machine runs saturated and the
// latencies are those of a full queue.
func runConcurrent(b *testing.B, conc int, calls []func(context.Context, int) error) {
	m := startMeasure(b)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				m.call(i, time.Now(), calls[w])
			}
		}()
	}
	wg.Wait()
	m.report(b)
}

// runAtRate makes b.N calls at rate per second, open loop: call i is due
// at start+i/rate whatever became of the earlier ones, and its latency
// counts from when it was due, so a stall shows in the latency of every
// call due during it (no coordinated omission). Up to len(calls) calls run
// at once, each worker with its own call; when all are busy, due calls
// wait for one, and that wait counts. This is the latency a client sees
// at a given load below the machine's capacity, which a closed loop
// (runConcurrent) cannot show: it always runs at capacity.
//
// The dispatcher itself is late too (an idle Go process rounds short
// sleeps up to a millisecond, and it waits for a core like everything
// here); that lateness counts in the latencies, as a client would see a
// late request, and late-p50-ms and late-p99-ms report it apart.
func runAtRate(b *testing.B, rate float64, calls []func(context.Context, int) error) {
	due := make(chan int, 1024)
	late := make([]time.Duration, b.N)
	m := startMeasure(b)
	at := func(i int) time.Time { return m.start.Add(time.Duration(float64(i) / rate * float64(time.Second))) }
	go func() {
		defer close(due)
		for i := range b.N {
			if d := time.Until(at(i)); d > 0 {
				time.Sleep(d)
			}
			late[i] = time.Since(at(i))
			due <- i
		}
	}()
	var wg sync.WaitGroup
	for _, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range due {
				m.call(i, at(i), call)
			}
		}()
	}
	wg.Wait()
	m.report(b)
	slices.Sort(late)
	b.ReportMetric(percentile(late, 0.50), "late-p50-ms")
	b.ReportMetric(percentile(late, 0.99), "late-p99-ms")
}

// percentile is the p-quantile of sorted in ms.
func percentile(sorted []time.Duration, p float64) float64 {
	return float64(sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]) / float64(time.Millisecond)
}

// measure is one run of calls: their latencies and errors, and the
// process's CPU and scheduling wait over the run.
type measure struct {
	lat      []time.Duration
	failed   atomic.Int64
	firstErr atomic.Pointer[error]
	idle     float64
	sched0   schedLatency
	cpu0     time.Duration
	start    time.Time
}

// startMeasure samples the idle cluster's CPU (half a second), then starts
// the clock.
func startMeasure(b *testing.B) *measure {
	m := &measure{lat: make([]time.Duration, b.N), idle: idleCPU(500 * time.Millisecond)}
	b.ResetTimer()
	m.sched0 = readSchedLatency()
	m.cpu0 = proccpu.Used()
	m.start = time.Now()
	return m
}

// call makes call i, timed from t0, with a 10s deadline.
func (m *measure) call(i int, t0 time.Time, call func(context.Context, int) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := call(ctx, i)
	m.lat[i] = time.Since(t0)
	cancel()
	if err != nil {
		m.failed.Add(1)
		m.firstErr.CompareAndSwap(nil, &err)
	}
}

// report fails the benchmark if a call failed, else reports throughput,
// latency percentiles, CPU per call and the scheduling wait.
func (m *measure) report(b *testing.B) {
	elapsed := time.Since(m.start)
	cpu := proccpu.Used() - m.cpu0
	b.StopTimer()
	if f := m.failed.Load(); f > 0 {
		b.Fatalf("%d of %d calls failed; first: %v", f, b.N, *m.firstErr.Load())
	}
	if d := readSchedLatency().sub(m.sched0); d.count > 0 {
		b.ReportMetric(d.sum/d.count*1e6, "sched-us")
	}
	slices.Sort(m.lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(percentile(m.lat, 0.50), "p50-ms")
	b.ReportMetric(percentile(m.lat, 0.99), "p99-ms")
	b.ReportMetric(float64(cpu)/float64(b.N)/float64(time.Microsecond), "cpu-us/op")
	// The calls' own CPU: without the background work (ticks, heartbeats,
	// checkpoints) of the run's wall time, which grows with the machine's
	// load as throughput drops.
	net := float64(cpu) - m.idle*float64(elapsed)
	b.ReportMetric(net/float64(b.N)/float64(time.Microsecond), "net-cpu-us/op")
}

// idleCPU is the process's CPU per wall-clock second over d while no calls
// run.
func idleCPU(d time.Duration) float64 {
	c0, t0 := proccpu.Used(), time.Now()
	time.Sleep(d)
	return float64(proccpu.Used()-c0) / float64(time.Since(t0))
}

// raftStats sums the Raft engine counters of the cluster's nodes.
func (c *rcluster) raftStats() multiraft.Stats {
	var sum multiraft.Stats
	for _, n := range c.nodes {
		sum = sum.Add(n.RaftStats())
	}
	return sum
}

// reportEngine reports, per call and summed over the three nodes, the
// engine's WAL fsyncs, apply transactions (and the raft.db pages they
// wrote) and transport sends: what the CPU per call is spent on,
// independent of the machine's load.
func reportEngine(b *testing.B, before, after multiraft.Stats) {
	per := func(a, z uint64) float64 { return float64(z-a) / float64(b.N) }
	b.ReportMetric(per(before.Syncs, after.Syncs), "syncs/op")
	b.ReportMetric(per(before.ApplyCommits, after.ApplyCommits), "applies/op")
	b.ReportMetric(per(before.ApplyPages, after.ApplyPages), "apply-pages/op")
	b.ReportMetric(per(before.Sends, after.Sends), "sends/op")
	b.ReportMetric(per(before.Messages, after.Messages), "msgs/op")
	if after.Reads > before.Reads {
		// Reads answered by a leader's lease, and ReadIndex rounds, per read.
		b.ReportMetric(float64(after.LeaseReads-before.LeaseReads)/float64(after.Reads-before.Reads), "lease-reads/read")
		b.ReportMetric(float64(after.ReadIndexRounds-before.ReadIndexRounds)/float64(after.Reads-before.Reads), "rounds/read")
	}
	// Where a write's time went (multiraft.WriteTimings), mean ms per
	// stage, and the loop iterations it spanned.
	after.Writes.Sub(before.Writes).Report(b.ReportMetric)
	if r := after.ApplyRounds - before.ApplyRounds; r > 0 {
		b.ReportMetric(float64(after.ApplyQueueTime-before.ApplyQueueTime)/float64(r)/float64(time.Millisecond), "applier-wait-ms")
	}
	if n := after.ApplyCommits - before.ApplyCommits; n > 0 {
		b.ReportMetric(float64(after.ApplyTime-before.ApplyTime)/float64(n)/float64(time.Millisecond), "apply-tx-ms")
	}
	if c := after.Checkpoints - before.Checkpoints; c > 0 {
		b.ReportMetric(float64(after.CheckpointTime-before.CheckpointTime)/float64(c)/float64(time.Millisecond), "ckpt-ms")
	}
	if f := after.FollowerAppends.Count - before.FollowerAppends.Count; f > 0 {
		d := after.FollowerAppends.Time - before.FollowerAppends.Time
		b.ReportMetric(float64(d)/float64(f)/float64(time.Millisecond), "f-ack-ms")
	}
}

// schedLatency sums the runtime's (sampled) histogram of how long
// goroutines waited, runnable, for a P: each bucket counted at its middle.
type schedLatency struct{ count, sum float64 }

func readSchedLatency() schedLatency {
	m := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(m)
	if m[0].Value.Kind() != metrics.KindFloat64Histogram {
		return schedLatency{}
	}
	h := m[0].Value.Float64Histogram()
	var l schedLatency
	for i, c := range h.Counts {
		lo, hi := max(h.Buckets[i], 0), h.Buckets[i+1]
		if math.IsInf(hi, 1) {
			hi = lo
		}
		l.count += float64(c)
		l.sum += float64(c) * (lo + hi) / 2
	}
	return l
}

func (l schedLatency) sub(o schedLatency) schedLatency {
	return schedLatency{count: l.count - o.count, sum: l.sum - o.sum}
}
