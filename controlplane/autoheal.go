package controlplane

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/erlmcp/erlmcp/internal/membership"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// AutohealConfig tunes the autoheal loop (leader only).
//
// A member of a healed role is unhealthy when, in FailAfter of its last
// Window rounds (one per Interval), it failed its health probe (GET
// /healthz of http_addr or addr: refused, an error status, or stuck —
// the connection is accepted but nothing answers within ProbeTimeout) or
// answered more than ErrorRate of at least MinRequests requests with a 5xx
// (from its /metrics). A process the actuator runs that has had no
// membership key for LeaseGrace has lost its lease. Either way it is
// restarted through the actuator, at most MaxAttempts times per
// AttemptWindow, the wait between attempts doubling from Backoff; after
// the window it may be healed again.
type AutohealConfig struct {
	// Enabled turns autoheal on (it needs an actuator).
	Enabled bool
	// Roles are the pools healed (worker; store adds store nodes).
	Roles        []string
	Interval     time.Duration
	ProbeTimeout time.Duration
	FailAfter    int
	Window       int
	ErrorRate    float64
	MinRequests  int
	LeaseGrace   time.Duration
	// StartGrace is how long after a restart a member's probes do not
	// count (it is starting).
	StartGrace    time.Duration
	MaxAttempts   int
	AttemptWindow time.Duration
	Backoff       time.Duration
}

// DefaultAutohealConfig: workers, a round every 2 s, 3 failed of 5,
// stuck after 1 s, 50% errors of at least 20 requests, lease lost after
// 15 s, 3 restarts per 10 min from 10 s apart.
func DefaultAutohealConfig() AutohealConfig {
	return AutohealConfig{
		Enabled: true, Roles: []string{membership.RoleWorker},
		Interval: 2 * time.Second, ProbeTimeout: time.Second,
		FailAfter: 3, Window: 5,
		ErrorRate: 0.5, MinRequests: 20,
		LeaseGrace: 15 * time.Second, StartGrace: 15 * time.Second,
		MaxAttempts: 3, AttemptWindow: 10 * time.Minute, Backoff: 10 * time.Second,
	}
}

// Validate says what is wrong.
func (c AutohealConfig) Validate() error {
	switch {
	case c.Interval <= 0 || c.ProbeTimeout <= 0:
		return fmt.Errorf("--autoheal-interval %s / --autoheal-probe-timeout %s: must be positive", c.Interval, c.ProbeTimeout)
	case c.Window < 1 || c.FailAfter < 1 || c.FailAfter > c.Window:
		return fmt.Errorf("--autoheal-fail-after %d / --autoheal-window %d: want 1 <= fail-after <= window", c.FailAfter, c.Window)
	case c.ErrorRate <= 0 || c.ErrorRate > 1:
		return fmt.Errorf("--autoheal-error-rate %g: want a fraction in (0, 1]", c.ErrorRate)
	case c.MinRequests < 1:
		return fmt.Errorf("--autoheal-min-requests %d: must be at least 1", c.MinRequests)
	case c.LeaseGrace <= 0 || c.StartGrace < 0:
		return fmt.Errorf("--autoheal-lease-grace %s / --autoheal-start-grace %s: lease grace must be positive, start grace not negative", c.LeaseGrace, c.StartGrace)
	case c.MaxAttempts < 1 || c.AttemptWindow <= 0 || c.Backoff < 0:
		return fmt.Errorf("--autoheal-max-attempts %d / --autoheal-attempt-window %s / --autoheal-backoff %s: want at least 1 attempt in a positive window", c.MaxAttempts, c.AttemptWindow, c.Backoff)
	}
	for _, r := range c.Roles {
		if r != membership.RoleWorker && r != membership.RoleStore {
			return fmt.Errorf("--autoheal-roles: %q cannot be healed; want worker and/or store", r)
		}
	}
	return nil
}

// Heal history kinds and actions.
const (
	HistoryHeal  = "heal"
	HistoryScale = "scale"

	ActionRestart   = "restart"
	ActionScaleUp   = "scale_up"
	ActionScaleDown = "scale_down"
)

// AutohealKey holds the pause switch: {"paused":true,"reason":"…","at":"…"}.
func AutohealKey(prefix string) string { return prefix + "autoheal/state" }

// AutohealBudgetPrefix holds one key per process the leader tried to heal,
// <prefix>autoheal/budgets/<role>/<name>, whose value (HealBudget) is
// written, fenced, in the Txn that records each attempt in history. A new
// leader seeds its memory of a process from it, so the attempt budget and
// the backoff carry over a leader change instead of starting afresh (a
// crash-looping node would otherwise get MaxAttempts more restarts from
// every new leader).
func AutohealBudgetPrefix(prefix string) string { return prefix + "autoheal/budgets/" }

// AutohealBudgetKey is the budget key of process name of role.
func AutohealBudgetKey(prefix, role, name string) string {
	return AutohealBudgetPrefix(prefix) + role + "/" + name
}

// HealBudget is the value of AutohealBudgetKey: the start times of the
// heal attempts of one process, oldest first (those older than the attempt
// window no longer count; the newest sets the backoff).
type HealBudget struct {
	Attempts []time.Time `json:"attempts"`
}

// DesiredKey is desired/<pool>.
func DesiredKey(prefix, pool string) string { return prefix + "desired/" + pool }

// AutohealState is the value of AutohealKey.
type AutohealState struct {
	Paused bool      `json:"paused"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// DesiredDoc is the value of desired/<pool>.
type DesiredDoc struct {
	Pool      string    `json:"pool"`
	Count     int       `json:"count"`
	Direction string    `json:"direction"`
	Reasons   []string  `json:"reasons"`
	At        time.Time `json:"at"`
}

// nodeHealth is the leader's memory of one process.
type nodeHealth struct {
	rounds       []string // "" = ok, else why the round failed; newest last
	graceUntil   time.Time
	missingSince time.Time
	attempts     []time.Time
	exhausted    bool // logged that attempts ran out
	// region is where the process was last registered (a process whose
	// lease is gone is still judged with its region).
	region string
}

// healer is one leader term's autoheal and scaling state.
type healer struct {
	cp      *ControlPlane
	lead    leadership
	act     Actuator
	log     *logrus.Entry
	nodes   map[string]*nodeHealth    // by role/name
	samples map[string][]workerSample // by member id + start time
}

// autohealLoop runs until ctx ends or a fenced write fails with
// ErrNotLeader. Every round re-reads everything (level-triggered).
func (cp *ControlPlane) autohealLoop(ctx context.Context, lead leadership) error {
	if cp.actuator == nil || cp.actuator.Name() == ActuatorNone || (!cp.cfg.Autoheal.Enabled && !cp.cfg.Scale.Enabled) {
		<-ctx.Done()
		return nil
	}
	h := &healer{cp: cp, lead: lead, act: cp.actuator, log: cp.log.WithField("loop", "autoheal"),
		nodes: map[string]*nodeHealth{}, samples: map[string][]workerSample{}}
	h.log.WithFields(logrus.Fields{"actuator": cp.actuator.Name(), "heal": cp.cfg.Autoheal.Enabled, "scale": cp.cfg.Scale.Enabled}).Info("autoheal loop started")
	t := time.NewTicker(cp.cfg.Autoheal.Interval)
	defer t.Stop()
	for {
		if err := h.round(ctx); errors.Is(err, ErrNotLeader) {
			return err
		} else if err != nil && ctx.Err() == nil {
			h.log.WithError(err).Warn("autoheal round failed; next round retries")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (h *healer) round(ctx context.Context) error {
	cfg := h.cp.cfg
	prefix := cfg.Common.Prefix
	rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	resp, err := h.cp.cli.Txn(rctx).Then(
		clientv3.OpGet(prefix+"members/", clientv3.WithPrefix()),
		clientv3.OpGet(AutohealKey(prefix)),
		clientv3.OpGet(DesiredKey(prefix, cfg.Scale.Pool)),
		clientv3.OpGet(AutohealBudgetPrefix(prefix), clientv3.WithPrefix()),
	).Commit()
	cancel()
	if err != nil {
		return fmt.Errorf("read membership and autoheal state: %w", err)
	}
	byRole := map[string][]membership.Member{}
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		var m membership.Member
		if json.Unmarshal(kv.Value, &m) == nil {
			byRole[m.Role] = append(byRole[m.Role], m)
		}
	}
	var st AutohealState
	if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
		_ = json.Unmarshal(kvs[0].Value, &st)
	}
	h.cp.metrics.autohealPaused.Set(b2f(st.Paused))
	var desired *DesiredDoc
	var desiredRev int64
	if kvs := resp.Responses[2].GetResponseRange().GetKvs(); len(kvs) > 0 {
		var d DesiredDoc
		if json.Unmarshal(kvs[0].Value, &d) == nil {
			desired, desiredRev = &d, kvs[0].ModRevision
		}
	}

	// Budgets by role/name. An unreadable one counts as no attempts: the
	// next attempt overwrites it.
	budgets := map[string]HealBudget{}
	for _, kv := range resp.Responses[3].GetResponseRange().GetKvs() {
		var b HealBudget
		if json.Unmarshal(kv.Value, &b) == nil {
			budgets[strings.TrimPrefix(string(kv.Key), AutohealBudgetPrefix(prefix))] = b
		}
	}

	now := time.Now()
	rates := h.scrape(ctx, byRole[cfg.Scale.Pool], now)
	if cfg.Autoheal.Enabled {
		for _, role := range cfg.Autoheal.Roles {
			if err := h.healRole(ctx, role, byRole[role], rates, budgets, st.Paused, now); err != nil {
				return err
			}
		}
	}
	if cfg.Scale.Enabled {
		return h.scale(ctx, byRole[cfg.Scale.Pool], rates, desired, desiredRev, st.Paused, now)
	}
	return nil
}

// healRole judges every process of role and restarts the unhealthy ones.
func (h *healer) healRole(ctx context.Context, role string, members []membership.Member, rates map[string]workerRate,
	budgets map[string]HealBudget, paused bool, now time.Time) error {
	acfg := h.cp.cfg.Autoheal
	actx, cancel := context.WithTimeout(ctx, etcdTimeout)
	procs, err := h.act.Processes(actx, role)
	cancel()
	if err != nil {
		return fmt.Errorf("list %s processes from the %s actuator: %w", role, h.act.Name(), err)
	}
	byID := map[string]membership.Member{}
	for _, m := range members {
		byID[m.ID] = m
	}
	// Its region failing as a whole is region failover's job, not a
	// process's fault (see regionFailing): decided once per pass, so the
	// probes below skip those processes and the verdicts agree.
	failingRegions := map[string]bool{}
	failing := func(region string) bool {
		v, ok := failingRegions[region]
		if !ok && region != "" {
			v = h.cp.regionFailing(region)
			failingRegions[region] = v
		}
		return v
	}
	// One probe per registered member, concurrently.
	results := make(map[string]string, len(procs))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range procs {
		m, ok := byID[p.Name]
		if !ok || m.Draining || !p.Running || failing(m.Region) {
			continue
		}
		wg.Go(func() {
			why := h.check(ctx, m, rates)
			mu.Lock()
			results[p.Name] = why
			mu.Unlock()
		})
	}
	wg.Wait()

	seen := map[string]bool{}
	for _, p := range procs {
		seen[p.Name] = true
		n := h.nodes[role+"/"+p.Name]
		if n == nil {
			// New to this leader: continue the budget an earlier leader
			// left (its probe rounds start afresh).
			n = &nodeHealth{graceUntil: now.Add(acfg.StartGrace), attempts: slices.Clone(budgets[role+"/"+p.Name].Attempts)}
			h.nodes[role+"/"+p.Name] = n
		}
		m, registered := byID[p.Name]
		if registered {
			n.region = m.Region
		}
		if failing(n.region) {
			// Its region is failing as a whole: see regionFailing.
			n.missingSince = time.Time{}
			continue
		}
		var reason string
		switch {
		case !p.Running:
			// Being restarted by its supervisor or controller.
			n.missingSince = time.Time{}
			continue
		case !registered:
			if n.missingSince.IsZero() {
				n.missingSince = now
			}
			if gone := now.Sub(n.missingSince); gone >= acfg.LeaseGrace {
				reason = fmt.Sprintf("lease lost: the process runs but has not been registered for %s", gone.Round(time.Second))
			}
		case m.Draining:
			continue
		default:
			n.missingSince = time.Time{}
			if now.Before(n.graceUntil) {
				continue
			}
			n.rounds = append(n.rounds, results[p.Name])
			if len(n.rounds) > acfg.Window {
				n.rounds = n.rounds[len(n.rounds)-acfg.Window:]
			}
			failed, last := 0, ""
			for _, r := range n.rounds {
				if r != "" {
					failed++
					last = r
				}
			}
			if failed >= acfg.FailAfter {
				reason = fmt.Sprintf("%d of the last %d probe rounds failed, last: %s", failed, len(n.rounds), last)
			}
		}
		if reason == "" {
			continue
		}
		if err := h.heal(ctx, role, p.Name, n, reason, paused, now); err != nil {
			return err
		}
	}
	for key := range h.nodes {
		r, name, _ := strings.Cut(key, "/")
		if r == role && !seen[name] {
			delete(h.nodes, key)
		}
	}
	// The budgets of processes that are gone (scaled down, replaced under
	// another name) are deleted, so the prefix does not grow forever.
	var gone []clientv3.Op
	for key := range budgets {
		r, name, _ := strings.Cut(key, "/")
		if r == role && !seen[name] {
			gone = append(gone, clientv3.OpDelete(AutohealBudgetKey(h.cp.cfg.Common.Prefix, role, name)))
		}
	}
	if len(gone) > 0 {
		wctx, cancel := context.WithTimeout(ctx, etcdTimeout)
		_, _, err := h.lead.txn(wctx, nil, gone[:min(len(gone), maxTxnOps-2)], nil)
		cancel()
		if err != nil {
			return fmt.Errorf("delete the heal budgets of departed %s processes: %w", role, err)
		}
	}
	return nil
}

// heal restarts one process if the attempt budget and backoff allow it,
// recording the action in history (fenced) before and after.
func (h *healer) heal(ctx context.Context, role, name string, n *nodeHealth, reason string, paused bool, now time.Time) error {
	acfg := h.cp.cfg.Autoheal
	log := h.log.WithFields(logrus.Fields{"node": name, "reason": reason})
	if paused {
		log.Debug("autoheal paused; not healing")
		return nil
	}
	kept := n.attempts[:0]
	for _, a := range n.attempts {
		if now.Sub(a) < acfg.AttemptWindow {
			kept = append(kept, a)
		}
	}
	n.attempts = kept
	if len(n.attempts) >= acfg.MaxAttempts {
		if !n.exhausted {
			n.exhausted = true
			h.cp.metrics.healActions.WithLabelValues(ActionRestart, "suppressed").Inc()
			log.WithField("attempts", len(n.attempts)).Error("autoheal: restart attempts exhausted in this window; leaving the node alone until the window passes")
		}
		return nil
	}
	if k := len(n.attempts); k > 0 {
		wait := time.Duration(float64(acfg.Backoff) * math.Pow(2, float64(k-1)))
		if now.Sub(n.attempts[k-1]) < wait {
			return nil
		}
	}
	n.exhausted = false
	n.attempts = append(n.attempts, now)
	budget, err := json.Marshal(HealBudget{Attempts: n.attempts})
	if err != nil {
		return fmt.Errorf("encode the heal budget of %s: %w", name, err)
	}
	entry := HistoryEntry{ID: newHistoryID(HistoryHeal), Kind: HistoryHeal, Node: name, Action: ActionRestart,
		Reason: reason, Start: now.UTC(), Outcome: "in_progress"}
	// The fenced write first: a deposed leader must not act. The attempt
	// counts against the budget from here, even if the restart fails.
	if err := h.writeHistory(ctx, entry, clientv3.OpPut(AutohealBudgetKey(h.cp.cfg.Common.Prefix, role, name), string(budget))); err != nil {
		return err
	}
	log.Warn("autoheal: restarting")
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = h.act.Restart(actx, name)
	cancel()
	entry.End = time.Now().UTC()
	entry.Outcome = "succeeded"
	if err != nil {
		entry.Outcome = "failed: " + err.Error()
		log.WithError(err).Error("autoheal: restart failed")
	}
	h.cp.metrics.healActions.WithLabelValues(ActionRestart, outcomeLabel(err)).Inc()
	n.rounds, n.missingSince = nil, time.Time{}
	n.graceUntil = time.Now().Add(acfg.StartGrace)
	return h.writeHistory(ctx, entry)
}

func outcomeLabel(err error) string {
	if err != nil {
		return "failed"
	}
	return "succeeded"
}

// writeHistory puts entry and the extra ops in one fenced Txn, and trims
// history.
func (h *healer) writeHistory(ctx context.Context, e HistoryEntry, extra ...clientv3.Op) error {
	val, _ := json.Marshal(e)
	wctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	ops := append([]clientv3.Op{clientv3.OpPut(HistoryKey(h.cp.cfg.Common.Prefix, e.Start, e.ID), string(val))}, extra...)
	if _, _, err := h.lead.txn(wctx, nil, ops, nil); err != nil {
		return fmt.Errorf("record %s of %s in history: %w", e.Action, e.Node, err)
	}
	if e.Outcome != "in_progress" {
		if err := h.cp.trimHistory(wctx, h.lead); err != nil && !errors.Is(err, ErrNotLeader) {
			h.log.WithError(err).Warn("history: trimming failed")
		}
	}
	return nil
}

// check is one probe round of member m: "" when healthy, else why not.
func (h *healer) check(ctx context.Context, m membership.Member, rates map[string]workerRate) string {
	timeout := h.cp.cfg.Autoheal.ProbeTimeout
	addr := m.Addr
	if m.HTTPAddr != "" {
		addr = m.HTTPAddr
	}
	if m.Role == membership.RoleStore && m.HTTPAddr == "" {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := probeGRPC(pctx, m.Addr); err != nil {
			return "health probe: " + err.Error()
		}
		return ""
	}
	if why := probeHealthz(ctx, addr, timeout); why != "" {
		return why
	}
	if r, ok := rates[m.ID]; ok && r.requests >= float64(h.cp.cfg.Autoheal.MinRequests) && r.errRate > h.cp.cfg.Autoheal.ErrorRate {
		return fmt.Sprintf("error rate %.0f%% of %d requests > %.0f%%", 100*r.errRate, int(r.requests), 100*h.cp.cfg.Autoheal.ErrorRate)
	}
	return ""
}

// probeHealthz GETs /healthz on a fresh connection, telling apart a
// refused connection from a stuck process (the kernel accepts the
// connection into the backlog of a stopped or wedged process, which then
// never answers).
func probeHealthz(ctx context.Context, addr string, timeout time.Duration) string {
	if addr == "" {
		return "no address registered"
	}
	d := net.Dialer{Timeout: timeout}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return "health probe: connect: " + err.Error()
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: "+addr+"\r\nConnection: close\r\n\r\n"); err != nil {
		return "health probe: write: " + err.Error()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Sprintf("stuck: accepts connections but did not answer GET /healthz within %s", timeout)
		}
		return "health probe: " + err.Error()
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "health probe: GET /healthz: " + resp.Status
	}
	return ""
}

// scrape reads every registered, serving member of the pool's /metrics
// and returns each one's rates over the scale window.
func (h *healer) scrape(ctx context.Context, members []membership.Member, now time.Time) map[string]workerRate {
	window := h.cp.cfg.Scale.Window
	var mu sync.Mutex
	var wg sync.WaitGroup
	fresh := map[string]workerSample{}
	for _, m := range members {
		if m.Draining {
			continue
		}
		wg.Go(func() {
			s, err := scrapeWorker(ctx, h.cp.prober.http, m, h.cp.cfg.Autoheal.ProbeTimeout)
			if err != nil {
				return
			}
			s.at = now
			mu.Lock()
			fresh[sampleKey(m)] = s
			mu.Unlock()
		})
	}
	wg.Wait()
	rates := map[string]workerRate{}
	live := map[string]bool{}
	for _, m := range members {
		k := sampleKey(m)
		live[k] = true
		// A scrape that failed this round leaves the worker's last known
		// rate in place: one slow answer must not make a busy worker look
		// idle (it would be drained first on a scale-down).
		list := h.samples[k]
		if s, ok := fresh[k]; ok {
			list = append(list, s)
			// Keep the newest sample at least a window old as the base.
			for len(list) > 2 && now.Sub(list[1].at) >= window {
				list = list[1:]
			}
			h.samples[k] = list
		}
		if len(list) >= 2 {
			if r, ok := rateOf(list[0], list[len(list)-1]); ok {
				rates[m.ID] = r
			}
		}
	}
	for k := range h.samples {
		if !live[k] {
			delete(h.samples, k)
		}
	}
	return rates
}

func sampleKey(m membership.Member) string {
	return m.ID + "@" + m.StartedAt.Format(time.RFC3339Nano) + "#" + strconv.Itoa(m.PID)
}

// Worker metric names the scaler reads.
const (
	metricRequests = "erlmcp_worker_requests_total"
	metricDuration = "erlmcp_worker_request_duration_seconds"
	metricSessions = "erlmcp_worker_sessions_created_total"
	metricCPU      = "process_cpu_seconds_total"
)

func scrapeWorker(ctx context.Context, hc *http.Client, m membership.Member, timeout time.Duration) (workerSample, error) {
	addr := m.Addr
	if m.HTTPAddr != "" {
		addr = m.HTTPAddr
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return workerSample{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return workerSample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return workerSample{}, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseWorkerMetrics(io.LimitReader(resp.Body, 8<<20))
}

// parseWorkerMetrics extracts the scaler's counters from a worker's
// Prometheus text exposition.
func parseWorkerMetrics(r io.Reader) (workerSample, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return workerSample{}, fmt.Errorf("parse /metrics: %w", err)
	}
	s := workerSample{buckets: map[float64]float64{}}
	if f := fams[metricRequests]; f != nil {
		for _, m := range f.GetMetric() {
			v := m.GetCounter().GetValue()
			s.requests += v
			if strings.HasPrefix(label(m, "code"), "5") {
				s.errors += v
			}
		}
	}
	if f := fams[metricDuration]; f != nil {
		for _, m := range f.GetMetric() {
			hist := m.GetHistogram()
			for _, b := range hist.GetBucket() {
				if !math.IsInf(b.GetUpperBound(), 1) { // +Inf is the sample count
					s.buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
				}
			}
			s.buckets[math.Inf(1)] += float64(hist.GetSampleCount())
		}
	}
	if f := fams[metricSessions]; f != nil {
		for _, m := range f.GetMetric() {
			s.sessions += m.GetCounter().GetValue()
		}
	}
	if f := fams[metricCPU]; f != nil {
		for _, m := range f.GetMetric() {
			s.cpu += m.GetCounter().GetValue()
		}
	}
	return s, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// scale decides the pool's desired count, stores it (fenced, guarded on
// its previous revision) and makes the actuator run that many.
func (h *healer) scale(ctx context.Context, members []membership.Member, rates map[string]workerRate, doc *DesiredDoc, rev int64, paused bool, now time.Time) error {
	scfg := h.cp.cfg.Scale
	pool := scfg.Pool
	actx, cancel := context.WithTimeout(ctx, etcdTimeout)
	procs, err := h.act.Processes(actx, pool)
	cancel()
	if err != nil {
		return fmt.Errorf("list %s processes from the %s actuator: %w", pool, h.act.Name(), err)
	}
	h.cp.metrics.actualWorkers.WithLabelValues(pool).Set(float64(len(procs)))
	st := ScaleState{}
	if doc != nil {
		st = ScaleState{Desired: doc.Count, Changed: doc.At}
	}
	// Rates only of members that serve; a pool where some serving member
	// has no rate yet (just started) is measured on the others.
	sig := poolSignals(rates)
	dec := Decide(scfg, st, sig, len(procs), now)
	if doc == nil || dec.Desired != doc.Count {
		if paused {
			return nil
		}
		nd := DesiredDoc{Pool: pool, Count: dec.Desired, Direction: dec.Direction, Reasons: dec.Reasons, At: now.UTC()}
		val, _ := json.Marshal(nd)
		key := DesiredKey(h.cp.cfg.Common.Prefix, pool)
		wctx, cancel := context.WithTimeout(ctx, etcdTimeout)
		ok, _, err := h.lead.txn(wctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)},
			[]clientv3.Op{clientv3.OpPut(key, string(val))}, nil)
		cancel()
		if err != nil {
			return fmt.Errorf("write %s: %w", key, err)
		}
		if !ok {
			return nil // changed meanwhile: the next round re-reads
		}
		h.cp.metrics.scaleDecisions.WithLabelValues(pool, dec.Direction).Inc()
		h.log.WithFields(logrus.Fields{"pool": pool, "desired": dec.Desired, "direction": dec.Direction, "reasons": strings.Join(dec.Reasons, "; ")}).Warn("scaling decision")
		doc = &nd
	}
	h.cp.metrics.desiredWorkers.WithLabelValues(pool).Set(float64(doc.Count))
	if paused || len(procs) == doc.Count {
		return nil
	}
	action := ActionScaleUp
	if doc.Count < len(procs) {
		action = ActionScaleDown
	}
	entry := HistoryEntry{ID: newHistoryID(HistoryScale), Kind: HistoryScale, Action: action, Node: pool,
		Reason: fmt.Sprintf("%d → %d: %s", len(procs), doc.Count, strings.Join(doc.Reasons, "; ")), From: strconv.Itoa(len(procs)), To: strconv.Itoa(doc.Count),
		Start: time.Now().UTC(), Outcome: "in_progress"}
	if err := h.writeHistory(ctx, entry); err != nil {
		return err
	}
	// Scale down the least loaded first: the fewest requests to drain.
	ids := make([]string, 0, len(members))
	for _, m := range members {
		ids = append(ids, m.ID)
	}
	sort.Slice(ids, func(i, j int) bool {
		ri, rj := rates[ids[i]].rps, rates[ids[j]].rps
		if ri != rj {
			return ri < rj
		}
		return ids[i] > ids[j]
	})
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = h.act.Scale(sctx, pool, doc.Count, ids)
	cancel()
	entry.End = time.Now().UTC()
	entry.Outcome = "succeeded"
	if err != nil {
		entry.Outcome = "failed: " + err.Error()
		h.log.WithError(err).WithField("pool", pool).Error("scaling through the actuator failed")
	} else {
		h.log.WithFields(logrus.Fields{"pool": pool, "from": len(procs), "to": doc.Count}).Warn("pool scaled")
	}
	h.cp.metrics.healActions.WithLabelValues(action, outcomeLabel(err)).Inc()
	// New processes start with a grace period before their probes count.
	return h.writeHistory(ctx, entry)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
