package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Region roles and states.
const (
	RegionPrimary   = "primary"
	RegionSecondary = "secondary"
	RegionDR        = "dr"

	RegionActive  = "active"
	RegionStandby = "standby"
	RegionFailed  = "failed"
)

// RegionDoc is the value of <prefix>regions/<name>. Exactly one region is
// active: shard leaders are moved into it (raft mode).
//
//	{"name":"eu","role":"primary","state":"active","weight":1,"updated":"2030-01-01T00:00:00Z"}
type RegionDoc struct {
	Name string `json:"name"`
	// Role: primary, secondary or dr; a failover prefers primary, then
	// secondary, then dr.
	Role string `json:"role"`
	// State: active, standby or failed.
	State string `json:"state"`
	// Weight orders failover targets of the same role (higher first).
	Weight  int       `json:"weight"`
	Updated time.Time `json:"updated,omitzero"`
}

// HistoryEntry is the value of <prefix>history/<ts>-<id>:
//
//	{"id":"…","kind":"region_failover","reason":"…","from":"eu","to":"us",
//	 "start":"…","end":"…","outcome":"succeeded"}
//
// kind: region_failover (detector), manual_failover, manual_failback.
// outcome: succeeded, noop, or failed: <why>.
type HistoryEntry struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
	// Node and Action: what a heal or scale entry acted on and how
	// (restart, scale_up, scale_down); Node is the pool for scale entries.
	Node    string    `json:"node,omitempty"`
	Action  string    `json:"action,omitempty"`
	From    string    `json:"from,omitempty"`
	To      string    `json:"to,omitempty"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Outcome string    `json:"outcome"`
}

// History kinds.
const (
	HistoryRegionFailover = "region_failover"
	HistoryManualFailover = "manual_failover"
	HistoryManualFailback = "manual_failback"
)

// DetectorConfig is the region failure detector's hysteresis.
type DetectorConfig struct {
	// FailAfter failed probe rounds among the last Window make a region
	// failed.
	FailAfter, Window int
	// RecoverAfter consecutive good rounds make a failed region healthy
	// again (it becomes standby; failback stays manual).
	RecoverAfter int
}

// DefaultDetectorConfig: 4 of the last 5 rounds fail it, 3 good in a row
// recover it. Alternating results (flapping) never fail a region.
func DefaultDetectorConfig() DetectorConfig {
	return DetectorConfig{FailAfter: 4, Window: 5, RecoverAfter: 3}
}

// Validate says what is wrong.
func (c DetectorConfig) Validate() error {
	if c.Window < 1 || c.FailAfter < 1 || c.FailAfter > c.Window {
		return fmt.Errorf("region detector: want 1 <= fail-after (%d) <= window (%d)", c.FailAfter, c.Window)
	}
	if c.RecoverAfter < 1 {
		return fmt.Errorf("region detector: recover-after %d must be at least 1", c.RecoverAfter)
	}
	return nil
}

// DetectRegionFailed is the detector: given a region's probe rounds (oldest
// first, true = the round succeeded) and whether it is failed now, it says
// whether it is failed after them. A healthy region fails once FailAfter of
// the last Window rounds failed; a failed one recovers only after
// RecoverAfter good rounds in a row.
func DetectRegionFailed(probes []bool, failed bool, cfg DetectorConfig) bool {
	if failed {
		good := 0
		for i := len(probes) - 1; i >= 0 && probes[i]; i-- {
			good++
		}
		return good < cfg.RecoverAfter
	}
	bad := 0
	for _, ok := range probes[max(0, len(probes)-cfg.Window):] {
		if !ok {
			bad++
		}
	}
	return bad >= cfg.FailAfter
}

// roundOK: a region's probe round succeeds when at least half of its
// registered members answered their health probe (and there is one).
func roundOK(healthy, total int) bool {
	return healthy > 0 && 2*healthy >= total
}

func roleRank(role string) int {
	switch role {
	case RegionPrimary:
		return 0
	case RegionSecondary:
		return 1
	case RegionDR:
		return 2
	}
	return 3
}

// FailoverTarget picks the region to make active instead of from: not
// failed, healthy by the last probe (when known), by role (primary,
// secondary, dr), then weight (higher first), then name. "" when none.
func FailoverTarget(regions []RegionDoc, from string, healthy map[string]bool) string {
	var cands []RegionDoc
	for _, r := range regions {
		if r.Name == from || r.State == RegionFailed {
			continue
		}
		if ok, known := healthy[r.Name]; known && !ok {
			continue
		}
		cands = append(cands, r)
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if roleRank(a.Role) != roleRank(b.Role) {
			return roleRank(a.Role) < roleRank(b.Role)
		}
		if a.Weight != b.Weight {
			return a.Weight > b.Weight
		}
		return a.Name < b.Name
	})
	if len(cands) == 0 {
		return ""
	}
	return cands[0].Name
}

// regionsRead is regions/ at one revision, with each key's mod revision.
type regionsRead struct {
	docs []RegionDoc
	mod  map[string]int64
	rev  int64
}

func (rr regionsRead) active() string {
	for _, d := range rr.docs {
		if d.State == RegionActive {
			return d.Name
		}
	}
	return ""
}

func (rr regionsRead) get(name string) (RegionDoc, bool) {
	for _, d := range rr.docs {
		if d.Name == name {
			return d, true
		}
	}
	return RegionDoc{}, false
}

func (rr regionsRead) names() []string {
	out := make([]string, 0, len(rr.docs))
	for _, d := range rr.docs {
		out = append(out, d.Name)
	}
	return out
}

func (cp *ControlPlane) readRegions(ctx context.Context) (regionsRead, error) {
	p := RegionsPrefix(cp.cfg.Common.Prefix)
	// Hedged within a request timeout: the region loops must go on while
	// an etcd member of a failed region stops answering.
	rctx, cancel := etcdclient.RequestTimeout(ctx)
	defer cancel()
	resp, err := etcdclient.Hedge(rctx, etcdclient.DefaultHedgeAfter, func(c context.Context) (*clientv3.GetResponse, error) {
		return cp.cli.Get(c, p, clientv3.WithPrefix())
	})
	if err != nil {
		return regionsRead{}, err
	}
	rr := regionsRead{mod: map[string]int64{}, rev: resp.Header.Revision}
	for _, kv := range resp.Kvs {
		var d RegionDoc
		if json.Unmarshal(kv.Value, &d) != nil {
			continue
		}
		d.Name = string(kv.Key[len(p):])
		rr.docs = append(rr.docs, d)
		rr.mod[d.Name] = kv.ModRevision
	}
	return rr, nil
}

// errConflict: the precondition of a region change does not hold.
type errConflict struct{ msg string }

func (e *errConflict) Error() string { return e.msg }

// changeRegions applies change to the regions read from etcd and writes
// the changed ones plus the history entry it returns, in one fenced Txn
// guarded on the regions' mod revisions; it retries a few times when
// another writer got in between. change returns the new docs (only changed
// ones need be returned) and the history entry, or an error (errConflict
// when the request does not fit the current state). A nil entry with no
// docs means nothing to do.
func (cp *ControlPlane) changeRegions(ctx context.Context, lead leadership,
	change func(rr regionsRead) ([]RegionDoc, *HistoryEntry, error)) (*HistoryEntry, error) {
	prefix := cp.cfg.Common.Prefix
	for attempt := 0; ; attempt++ {
		rr, err := cp.readRegions(ctx)
		if err != nil {
			return nil, err
		}
		docs, h, err := change(rr)
		if err != nil || (len(docs) == 0 && h == nil) {
			return h, err
		}
		var guard []clientv3.Cmp
		var ops []clientv3.Op
		for _, d := range docs {
			key := RegionKey(prefix, d.Name)
			guard = append(guard, clientv3.Compare(clientv3.ModRevision(key), "=", rr.mod[d.Name]))
			val, _ := json.Marshal(d)
			ops = append(ops, clientv3.OpPut(key, string(val)))
		}
		if h != nil {
			h.End = time.Now().UTC()
			val, _ := json.Marshal(h)
			ops = append(ops, clientv3.OpPut(HistoryKey(prefix, h.Start, h.ID), string(val)))
		}
		ok, _, err := lead.txn(ctx, guard, ops, nil)
		if err != nil {
			return nil, err
		}
		if ok {
			if h != nil {
				cp.afterHistory(ctx, lead, *h)
			}
			return h, nil
		}
		if attempt >= 3 {
			return nil, &errConflict{"regions changed concurrently; try again"}
		}
	}
}

// afterHistory counts a failover and trims history to its limit.
func (cp *ControlPlane) afterHistory(ctx context.Context, lead leadership, h HistoryEntry) {
	if h.Outcome == "succeeded" {
		cp.metrics.failovers.WithLabelValues(h.Kind).Inc()
		cp.metrics.failoverDuration.Observe(h.End.Sub(h.Start).Seconds())
	}
	cp.log.WithFields(logrus.Fields{"kind": h.Kind, "from": h.From, "to": h.To, "reason": h.Reason, "outcome": h.Outcome}).Warn("region change recorded in history")
	if err := cp.trimHistory(ctx, lead); err != nil && !errors.Is(err, ErrNotLeader) {
		cp.log.WithError(err).Warn("history: trimming old entries failed; will trim after the next entry")
	}
}

// trimHistory deletes the oldest entries beyond HistoryLimit.
func (cp *ControlPlane) trimHistory(ctx context.Context, lead leadership) error {
	p := HistoryPrefix(cp.cfg.Common.Prefix)
	resp, err := cp.cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return err
	}
	extra := len(resp.Kvs) - cp.cfg.HistoryLimit
	for start := 0; start < extra; start += maxTxnOps - 2 {
		var dels []clientv3.Op
		for _, kv := range resp.Kvs[start:min(extra, start+maxTxnOps-2)] {
			dels = append(dels, clientv3.OpDelete(string(kv.Key)))
		}
		if _, _, err := lead.txn(ctx, nil, dels, nil); err != nil {
			return err
		}
	}
	return nil
}

func newHistoryID(kind string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return kind + "-" + hex.EncodeToString(b[:])
}

// failoverRegion makes another region active instead of from. kind and
// reason go to history; start is when the failover began (request or
// first failed probe). With mark the old region becomes failed, else
// standby.
func (cp *ControlPlane) failoverRegion(ctx context.Context, lead leadership, from, kind, reason string, start time.Time,
	healthy map[string]bool, mark string) (*HistoryEntry, error) {
	return cp.changeRegions(ctx, lead, func(rr regionsRead) ([]RegionDoc, *HistoryEntry, error) {
		old, ok := rr.get(from)
		if !ok {
			return nil, nil, &errConflict{fmt.Sprintf("no region %q", from)}
		}
		if old.State != RegionActive {
			if mark == RegionFailed && old.State != RegionFailed {
				old.State, old.Updated = RegionFailed, time.Now().UTC()
				return []RegionDoc{old}, nil, nil
			}
			return nil, nil, &errConflict{fmt.Sprintf("region %s is %s, not active (active: %q); nothing to fail over", from, old.State, rr.active())}
		}
		to := FailoverTarget(rr.docs, from, healthy)
		if to == "" {
			return nil, nil, &errConflict{fmt.Sprintf("no region to fail over to from %s: every other region is failed or unhealthy (regions: %v)", from, rr.names())}
		}
		now := time.Now().UTC()
		nd, _ := rr.get(to)
		old.State, old.Updated = mark, now
		nd.State, nd.Updated = RegionActive, now
		h := &HistoryEntry{ID: newHistoryID(kind), Kind: kind, Reason: reason, From: from, To: to, Start: start.UTC(), Outcome: "succeeded"}
		return []RegionDoc{old, nd}, h, nil
	})
}

// failbackRegion makes region to active again; the active one becomes
// standby.
func (cp *ControlPlane) failbackRegion(ctx context.Context, lead leadership, to, reason string, start time.Time, healthy map[string]bool) (*HistoryEntry, error) {
	return cp.changeRegions(ctx, lead, func(rr regionsRead) ([]RegionDoc, *HistoryEntry, error) {
		nd, ok := rr.get(to)
		if !ok {
			return nil, nil, &errConflict{fmt.Sprintf("no region %q", to)}
		}
		cur := rr.active()
		if cur == to {
			return nil, &HistoryEntry{ID: newHistoryID(HistoryManualFailback), Kind: HistoryManualFailback, Reason: reason, From: cur, To: to,
				Start: start.UTC(), End: time.Now().UTC(), Outcome: "noop"}, nil
		}
		if ok, known := healthy[to]; (known && !ok) || nd.State == RegionFailed && !known {
			return nil, nil, &errConflict{fmt.Sprintf("region %s is %s and its members do not pass health probes; fail back once it is healthy", to, nd.State)}
		}
		now := time.Now().UTC()
		docs := []RegionDoc{}
		if cur != "" {
			od, _ := rr.get(cur)
			od.State, od.Updated = RegionStandby, now
			docs = append(docs, od)
		}
		nd.State, nd.Updated = RegionActive, now
		docs = append(docs, nd)
		return docs, &HistoryEntry{ID: newHistoryID(HistoryManualFailback), Kind: HistoryManualFailback, Reason: reason, From: cur, To: to,
			Start: start.UTC(), Outcome: "succeeded"}, nil
	})
}

// probeRound is one region's probe result at a time.
type probeRound struct {
	at time.Time
	ok bool
}

// regionProbes is the probe history of every region. Every instance keeps
// one, leader or standby: a standby elected because the old leader's
// region went down (the usual way a region failure takes the leader with
// it) then judges that region from the rounds it has already seen, instead
// of starting from an empty window and adding FailAfter probe intervals to
// the failover.
type regionProbes struct {
	mu      sync.Mutex
	rounds  map[string][]probeRound
	members []membership.Member
	at      time.Time // when the last round finished
	// round is signalled (without blocking) after every round, so the
	// leader judges each round once, as soon as it is in.
	round chan struct{}
}

func newRegionProbes() *regionProbes {
	return &regionProbes{rounds: map[string][]probeRound{}, round: make(chan struct{}, 1)}
}

// record adds one round: health has every known region's result; regions
// no longer in it are forgotten; each history keeps the last keep rounds.
func (p *regionProbes) record(now time.Time, health map[string]bool, ms []membership.Member, keep int) {
	p.mu.Lock()
	for name, ok := range health {
		rs := append(p.rounds[name], probeRound{at: now, ok: ok})
		p.rounds[name] = rs[max(0, len(rs)-keep):]
	}
	for name := range p.rounds {
		if _, ok := health[name]; !ok {
			delete(p.rounds, name)
		}
	}
	p.members, p.at = ms, now
	p.mu.Unlock()
	select {
	case p.round <- struct{}{}:
	default:
	}
}

// snapshot copies the histories and the members of the last round; ok is
// false when there is no round newer than maxAge (the prober is stuck, for
// example cut off from etcd: stale rounds must not fail a region over).
func (p *regionProbes) snapshot(now time.Time, maxAge time.Duration) (rounds map[string][]probeRound, ms []membership.Member, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.at.IsZero() || now.Sub(p.at) > maxAge {
		return nil, nil, false
	}
	rounds = make(map[string][]probeRound, len(p.rounds))
	for name, rs := range p.rounds {
		rounds[name] = append([]probeRound(nil), rs...)
	}
	return rounds, p.members, true
}

// regionFailing reports whether region's latest probe round, if recent,
// failed: most of its members do not answer. Autoheal leaves the
// processes of such a region alone: a region failure is region failover's
// to handle, and restarting its processes one by one (where that still
// works, as on one machine) would make the region look alive again while
// most of it is gone.
func (cp *ControlPlane) regionFailing(region string) bool {
	p := cp.probes
	p.mu.Lock()
	defer p.mu.Unlock()
	rs := p.rounds[region]
	fresh := time.Since(p.at) <= 2*cp.cfg.ProbeInterval+probeTimeout
	return fresh && len(rs) > 0 && !rs[len(rs)-1].ok
}

// probeLoop probes every region once per ProbeInterval into cp.probes, on
// every instance, until ctx ends. A round that cannot list the members
// (etcd unreachable) is skipped, not recorded as failed: the regions were
// not seen, which says nothing about them.
func (cp *ControlPlane) probeLoop(ctx context.Context) {
	t := time.NewTicker(cp.cfg.ProbeInterval)
	defer t.Stop()
	keep := max(cp.cfg.Detector.Window, cp.cfg.Detector.RecoverAfter)
	for {
		rr, err := cp.readRegions(ctx)
		if err == nil {
			var health map[string]bool
			var ms []membership.Member
			health, ms, err = cp.regionHealth(ctx, rr.names())
			if err == nil {
				cp.probes.record(time.Now(), health, ms, keep)
			}
		}
		if err != nil && ctx.Err() == nil {
			cp.log.WithError(err).Debug("regions: probe round skipped")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// regionLoop registers regions as members appear and fails over the
// active region when the detector says it failed, judging every probe
// round of probeLoop once, and the history already there at once when the
// term starts. It runs on the leader in both replication modes (it moves
// no shard itself; in raft mode the planner follows the active region).
func (cp *ControlPlane) regionLoop(ctx context.Context, lead leadership) error {
	for {
		if err := cp.regionPass(ctx, lead); err != nil {
			if errors.Is(err, ErrNotLeader) || ctx.Err() != nil {
				return err
			}
			cp.log.WithError(err).Warn("regions: pass failed; retrying next round")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-cp.probes.round:
		}
	}
}

// regionHealth probes all members once and returns each region's round
// result (regions without members fail their round).
func (cp *ControlPlane) regionHealth(ctx context.Context, regions []string) (map[string]bool, []membership.Member, error) {
	lctx, cancel := etcdclient.RequestTimeout(ctx)
	ms, err := etcdclient.Hedge(lctx, etcdclient.DefaultHedgeAfter, func(c context.Context) ([]membership.Member, error) {
		return membership.List(c, cp.cli, cp.cfg.Common.Prefix, "")
	})
	cancel()
	if err != nil {
		return nil, nil, err
	}
	healthy, total := map[string]int{}, map[string]int{}
	for _, s := range cp.prober.statuses(ctx, ms) {
		if s.Region == "" {
			continue
		}
		total[s.Region]++
		if s.Healthy {
			healthy[s.Region]++
		}
	}
	out := map[string]bool{}
	for _, r := range regions {
		out[r] = roundOK(healthy[r], total[r])
	}
	for r := range total {
		out[r] = roundOK(healthy[r], total[r])
	}
	return out, ms, nil
}

func (cp *ControlPlane) regionPass(ctx context.Context, lead leadership) error {
	now := time.Now()
	// Two missed intervals of slack: a round takes up to probeTimeout.
	rounds, ms, fresh := cp.probes.snapshot(now, 2*cp.cfg.ProbeInterval+probeTimeout)
	if !fresh {
		return nil
	}
	rr, err := cp.readRegions(ctx)
	if err != nil {
		return err
	}
	if err := cp.ensureRegions(ctx, lead, rr, ms); err != nil {
		return err
	}
	healthyNow := map[string]bool{}
	for name, rs := range rounds {
		doc, _ := rr.get(name)
		probes := make([]bool, len(rs))
		for i, r := range rs {
			probes[i] = r.ok
		}
		failed := DetectRegionFailed(probes, doc.State == RegionFailed, cp.cfg.Detector)
		healthyNow[name] = !failed && rs[len(rs)-1].ok
		cp.metrics.regionFailed.WithLabelValues(name).Set(float64(b2i(failed)))
	}
	for _, doc := range rr.docs {
		rs := rounds[doc.Name]
		if len(rs) == 0 {
			continue
		}
		probes := make([]bool, len(rs))
		for i, r := range rs {
			probes[i] = r.ok
		}
		failed := DetectRegionFailed(probes, doc.State == RegionFailed, cp.cfg.Detector)
		switch {
		case failed && doc.State == RegionActive:
			start := now
			for _, r := range rs {
				if !r.ok {
					start = r.at
					break
				}
			}
			reason := fmt.Sprintf("%d of the last %d probe rounds of region %s failed", countBad(probes, cp.cfg.Detector.Window), min(len(probes), cp.cfg.Detector.Window), doc.Name)
			_, err := cp.failoverRegion(ctx, lead, doc.Name, HistoryRegionFailover, reason, start, healthyNow, RegionFailed)
			var ce *errConflict
			if errors.As(err, &ce) {
				cp.log.WithField("region", doc.Name).Error("regions: the active region failed but cannot fail over: " + ce.msg)
				continue
			}
			if err != nil {
				return err
			}
		case failed && doc.State != RegionFailed:
			if err := cp.setRegionState(ctx, lead, doc.Name, RegionFailed); err != nil {
				return err
			}
		case !failed && doc.State == RegionFailed:
			if err := cp.setRegionState(ctx, lead, doc.Name, RegionStandby); err != nil {
				return err
			}
		}
	}
	cp.healthy.Store(&healthyNow)
	return nil
}

func countBad(probes []bool, window int) int {
	n := 0
	for _, ok := range probes[max(0, len(probes)-window):] {
		if !ok {
			n++
		}
	}
	return n
}

func (cp *ControlPlane) setRegionState(ctx context.Context, lead leadership, name, state string) error {
	_, err := cp.changeRegions(ctx, lead, func(rr regionsRead) ([]RegionDoc, *HistoryEntry, error) {
		d, ok := rr.get(name)
		if !ok || d.State == state || d.State == RegionActive {
			return nil, nil, nil
		}
		d.State, d.Updated = state, time.Now().UTC()
		cp.log.WithFields(logrus.Fields{"region": name, "state": state}).Warn("regions: region state changed by the failure detector")
		return []RegionDoc{d}, nil, nil
	})
	var ce *errConflict
	if errors.As(err, &ce) {
		return nil
	}
	return err
}

// ensureRegions creates regions/<name> for every region a member names
// that has none: the first region of a cluster with no active region
// becomes primary and active, the others secondary and standby.
func (cp *ControlPlane) ensureRegions(ctx context.Context, lead leadership, rr regionsRead, ms []membership.Member) error {
	var missing []string
	seen := map[string]bool{}
	for _, m := range ms {
		if m.Region == "" || seen[m.Region] {
			continue
		}
		seen[m.Region] = true
		if _, ok := rr.get(m.Region); !ok {
			missing = append(missing, m.Region)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	// The control plane's own region goes first when it is new.
	for i, r := range missing {
		if r == cp.cfg.Common.Region {
			missing[0], missing[i] = missing[i], missing[0]
		}
	}
	_, err := cp.changeRegions(ctx, lead, func(rr regionsRead) ([]RegionDoc, *HistoryEntry, error) {
		active := rr.active() != ""
		var docs []RegionDoc
		for _, name := range missing {
			if _, ok := rr.get(name); ok {
				continue
			}
			d := RegionDoc{Name: name, Role: RegionSecondary, State: RegionStandby, Weight: 1, Updated: time.Now().UTC()}
			if !active {
				d.Role, d.State, active = RegionPrimary, RegionActive, true
			}
			docs = append(docs, d)
		}
		return docs, nil, nil
	})
	if err == nil {
		cp.log.WithField("regions", missing).Info("regions: registered new regions")
	}
	return err
}
