package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// Histogram records durations in log-linear buckets, as HDR histograms do:
// every power of two is cut into histSub equal buckets, so a quantile is
// exact to within 1/histSub (under 1 %) of its value while memory stays fixed
// whatever the number of samples. Values run from 0 to histMax; larger ones
// are counted in the last bucket (Max stays exact). The zero value is empty
// and ready; a Histogram is not safe for concurrent use.
type Histogram struct {
	counts []uint64
	n      uint64
	sum    float64
	min    int64
	max    int64
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits       // buckets per power of two
	histMaxExp  = 40 - (histSubBits + 1) // values below 2^40 ns (about 18 min) get their own bucket
	histBuckets = histSub + (histMaxExp+1)*histSub
	histMax     = int64(1)<<40 - 1
)

// bucketOf returns the bucket index of v (v >= 0).
func bucketOf(v int64) int {
	if v > histMax {
		v = histMax
	}
	if v < histSub {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - (histSubBits + 1)
	m := v >> uint(e) // in [histSub, 2*histSub)
	return histSub + e*histSub + int(m-histSub)
}

// bucketHigh returns the largest value that falls in bucket i.
func bucketHigh(i int) int64 {
	if i < histSub {
		return int64(i)
	}
	e := (i - histSub) / histSub
	m := int64(histSub + (i-histSub)%histSub)
	return (m+1)<<uint(e) - 1
}

// Record adds one duration (negative counts as 0).
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	if h.counts == nil {
		h.counts = make([]uint64, histBuckets)
	}
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Merge adds every sample of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.n == 0 {
		return
	}
	if h.counts == nil {
		h.counts = make([]uint64, histBuckets)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of samples.
func (h *Histogram) Count() uint64 { return h.n }

// Max is the largest sample, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Min is the smallest sample, exactly.
func (h *Histogram) Min() time.Duration { return time.Duration(h.min) }

// Mean is the average sample.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Quantile returns the value at or below which a fraction q (0..1) of the
// samples fall, by nearest rank: the upper edge of the bucket holding the
// ceil(q*n)-th smallest sample, clamped to [Min, Max]. An empty histogram
// gives 0.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	if q <= 0 {
		return time.Duration(h.min)
	}
	if q >= 1 {
		return time.Duration(h.max)
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := bucketHigh(i)
			if v > h.max || i == len(h.counts)-1 {
				v = h.max
			}
			if v < h.min {
				v = h.min
			}
			return time.Duration(v)
		}
	}
	return time.Duration(h.max)
}
