package front

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/erlmcp/erlmcp/internal/etcdwatch"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TrafficKey is the etcd key (under the cluster prefix) that splits
// requests between worker versions during a deploy. Its writer is the
// operator's deploy tool (`erlmcp ctl deploy traffic`), not the control
// plane: a deploy is an operator action, and the front only reads it.
func TrafficKey(prefix string) string { return prefix + "deploy/traffic" }

// Traffic is the JSON value of TrafficKey: Weight percent of requests go
// to workers whose membership version is Version, the rest to the other
// workers. No key (or an empty Version) means every worker alike.
type Traffic struct {
	Version string    `json:"version"`
	Weight  int       `json:"weight"`
	At      time.Time `json:"at,omitzero"`
}

// ParseTraffic decodes and checks a TrafficKey value.
func ParseTraffic(b []byte) (Traffic, error) {
	var t Traffic
	if err := json.Unmarshal(b, &t); err != nil {
		return Traffic{}, fmt.Errorf("traffic split: %w", err)
	}
	if err := t.Validate(); err != nil {
		return Traffic{}, err
	}
	return t, nil
}

// Validate reports a split the front cannot apply.
func (t Traffic) Validate() error {
	if t.Weight < 0 || t.Weight > 100 {
		return fmt.Errorf("traffic split: weight %d: want 0..100 (percent to version %q)", t.Weight, t.Version)
	}
	if t.Version == "" && t.Weight != 0 {
		return fmt.Errorf("traffic split: weight %d without a version", t.Weight)
	}
	return nil
}

// setTraffic makes later picks follow t.
func (p *pool) setTraffic(t Traffic) { p.traffic.Store(&t) }

// currentTraffic is the split the pool applies.
func (p *pool) currentTraffic() Traffic { return *p.traffic.Load() }

// splitByTraffic narrows the candidates to one side of the split, chosen
// so that over any run of picks the new side gets Weight percent of them
// (an error accumulator rather than a random draw, so a 10 % step shows at
// 10 % even over a short gate window). The accumulator is the running sum
// of the weights: a pick goes to the new side when its weight carries the
// sum past a multiple of 100, which is what adding the weight to a
// remainder below 100 and taking 100 off on reaching it did, without a
// lock. When the chosen side has no candidate the other side serves: a
// split is a preference, and refusing a client because one version has no
// worker left would drop a request.
func (p *pool) splitByTraffic(cands []*backend) []*backend {
	t := p.traffic.Load()
	if t.Version == "" {
		return cands
	}
	// Filtered in place: cands is pick's own stack buffer.
	var nbuf [16]*backend
	newer, older := nbuf[:0], cands[:0]
	for _, b := range cands {
		if b.version == t.Version {
			newer = append(newer, b)
		} else {
			older = append(older, b)
		}
	}
	w := int64(t.Weight)
	sum := p.splitSum.Add(w)
	toNew := sum/100 > (sum-w)/100
	switch {
	case toNew && len(newer) > 0, len(older) == 0:
		return newer
	default:
		return older
	}
}

// watchTraffic applies the deploy split stored at TrafficKey until ctx
// ends. A value that does not decode is logged and leaves the last good
// split in place: a typo must not flip all traffic to one side.
func (f *Front) watchTraffic(ctx context.Context, cli *clientv3.Client) {
	key := TrafficKey(f.cfg.Common.Prefix)
	_ = etcdwatch.Run(ctx, cli, key, etcdwatch.Options{
		OnError: func(err error) { f.log.WithError(err).Warn("watching the traffic split") },
	}, func(s etcdwatch.Snapshot) {
		b, ok := s.KVs[key]
		if !ok {
			if f.pool.currentTraffic() != (Traffic{}) {
				f.log.Info("traffic split cleared: every worker serves alike")
			}
			f.pool.setTraffic(Traffic{})
			return
		}
		t, err := ParseTraffic(b)
		if err != nil {
			f.log.WithError(err).Warn("ignoring a bad traffic split; keeping the last one")
			return
		}
		if t != f.pool.currentTraffic() {
			f.log.WithFields(logrus.Fields{"version": t.Version, "weight": t.Weight}).Info("traffic split applied")
		}
		f.pool.setTraffic(t)
	})
}
