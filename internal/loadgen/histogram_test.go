package loadgen

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

func TestHistogramEmpty(t *testing.T) {
	var h Histogram
	if h.Count() != 0 || h.Quantile(0.99) != 0 || h.Max() != 0 || h.Mean() != 0 {
		t.Fatalf("empty histogram: count %d p99 %s max %s mean %s", h.Count(), h.Quantile(0.99), h.Max(), h.Mean())
	}
}

func TestHistogramBucketsRoundTrip(t *testing.T) {
	// every value lies within its bucket, and buckets are ordered
	prevHigh := int64(-1)
	for i := 0; i < histBuckets; i++ {
		hi := bucketHigh(i)
		if hi <= prevHigh {
			t.Fatalf("bucket %d high %d not above previous %d", i, hi, prevHigh)
		}
		if bucketOf(hi) != i || bucketOf(prevHigh+1) != i {
			t.Fatalf("bucket %d: bucketOf(%d)=%d bucketOf(%d)=%d", i, hi, bucketOf(hi), prevHigh+1, bucketOf(prevHigh+1))
		}
		prevHigh = hi
	}
	if bucketOf(histMax*4) != histBuckets-1 {
		t.Fatalf("overflow value not in last bucket")
	}
}

func TestHistogramQuantilesAgainstSorted(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	var vals []time.Duration
	for i := 0; i < 100_000; i++ {
		// log-uniform from 10µs to 10s
		v := time.Duration(float64(10*time.Microsecond) * math.Pow(10, rng.Float64()*6))
		vals = append(vals, v)
		h.Record(v)
	}
	sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
	for _, q := range []float64{0.5, 0.9, 0.95, 0.99, 0.999} {
		exact := vals[nearestRank(q, len(vals))]
		got := h.Quantile(q)
		if got < exact || float64(got-exact) > float64(exact)/histSub+1 {
			t.Errorf("p%g = %s, exact %s: want within 1/%d above", q*100, got, exact, histSub)
		}
	}
	if h.Max() != vals[len(vals)-1] || h.Min() != vals[0] {
		t.Errorf("max %s min %s, want %s %s", h.Max(), h.Min(), vals[len(vals)-1], vals[0])
	}
	if h.Quantile(1) != h.Max() || h.Quantile(0) != h.Min() {
		t.Errorf("q=1 %s q=0 %s", h.Quantile(1), h.Quantile(0))
	}
}

func TestHistogramSmallExact(t *testing.T) {
	var h Histogram
	for i := 1; i <= 100; i++ {
		h.Record(time.Duration(i)) // below histSub: exact buckets
	}
	for q, want := range map[float64]time.Duration{0.5: 50, 0.95: 95, 0.99: 99, 0.01: 1} {
		if got := h.Quantile(q); got != want {
			t.Errorf("q %g = %d, want %d", q, got, want)
		}
	}
	if h.Mean() != time.Duration(50) { // 50.5 truncated
		t.Errorf("mean %d", h.Mean())
	}
}

func TestHistogramMerge(t *testing.T) {
	var a, b, all Histogram
	for i := 1; i <= 1000; i++ {
		d := time.Duration(i) * time.Millisecond
		all.Record(d)
		if i%2 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(&b)
	a.Merge(nil)
	for _, q := range []float64{0.5, 0.99} {
		if a.Quantile(q) != all.Quantile(q) {
			t.Errorf("merged q%g %s, want %s", q, a.Quantile(q), all.Quantile(q))
		}
	}
	if a.Count() != 1000 || a.Max() != time.Second || a.Min() != time.Millisecond {
		t.Errorf("merged count %d max %s min %s", a.Count(), a.Max(), a.Min())
	}
	p99 := all.Quantile(0.99)
	if p99 < 990*time.Millisecond || p99 > 998*time.Millisecond {
		t.Errorf("p99 of 1..1000ms = %s", p99)
	}
}

func TestHistogramNegativeAndHuge(t *testing.T) {
	var h Histogram
	h.Record(-time.Second)
	h.Record(time.Hour)
	if h.Min() != 0 || h.Max() != time.Hour || h.Quantile(0.99) != time.Hour {
		t.Fatalf("min %s max %s p99 %s", h.Min(), h.Max(), h.Quantile(0.99))
	}
}
