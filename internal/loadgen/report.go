package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// ReportSchema names the JSON layout of Report; it changes when a field's
// meaning does.
const ReportSchema = "erlmcp.loadtest.report/v1"

// Latency is a latency distribution in milliseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P95  float64 `json:"p95"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func latencyOf(h *Histogram) Latency {
	return Latency{P50: ms(h.Quantile(0.50)), P95: ms(h.Quantile(0.95)), P99: ms(h.Quantile(0.99)), Max: ms(h.Max()), Mean: ms(h.Mean())}
}

// OpReport is one operation's share of the run.
type OpReport struct {
	Count   int64   `json:"count"`
	Errors  int64   `json:"errors"`
	Latency Latency `json:"latency_ms"`
}

// ErrorsReport counts failed operations by kind.
type ErrorsReport struct {
	Total int64   `json:"total"`
	Pct   float64 `json:"pct"`
	// ByKind: http_<status>, jsonrpc_<code>, timeout, conn_refused,
	// conn_reset, conn_closed, conn_error, decode, tool_error, bad_result,
	// stream_ended.
	ByKind map[string]int64 `json:"by_kind"`
	// Samples holds the first message seen of each kind.
	Samples map[string]string `json:"samples,omitempty"`
	// OutsideFaults counts the failed operations no fault explains (all of
	// them when the run injected none); OutsidePct is their share.
	OutsideFaults int64   `json:"outside_faults"`
	OutsidePct    float64 `json:"outside_faults_pct"`
}

// ContinuityReport is per-session continuity over the run.
type ContinuityReport struct {
	// Checked is false when no counter operation ran (not in the mix, the
	// server lacks the tool, or the protocol is sessionless): then
	// writes_lost and skipped prove nothing.
	Checked bool `json:"checked"`
	ContinuitySummary
}

// UptimeReport is the share of one-second windows in which every request
// got a successful answer. A failed request marks every window it spanned;
// windows in which no request was in flight are left out.
type UptimeReport struct {
	Pct         float64 `json:"pct"`
	Windows     int     `json:"windows"`
	UpWindows   int     `json:"up_windows"`
	IdleWindows int     `json:"idle_windows"`
}

// StreamsReport counts what the sse and resume operations saw.
type StreamsReport struct {
	ProgressNotifications int64 `json:"progress_notifications"`
	// Resumes: resume operations that dropped their stream and got the
	// answer through GET + Last-Event-ID.
	Resumes int64 `json:"resumes"`
	// ResumeNotExercised: resume operations whose answer came before any
	// event id, so nothing was dropped.
	ResumeNotExercised int64 `json:"resume_not_exercised"`
	// AutoResumes: reconnections after the server itself ended a stream
	// before its answer (SSE polling).
	AutoResumes int64 `json:"auto_resumes"`
	// ResumeConflicts: resumptions the server refused with 409 (it still
	// held the dropped stream) and that were retried.
	ResumeConflicts int64 `json:"resume_conflicts"`
}

// SessionsReport counts sessions.
type SessionsReport struct {
	Slots       int   `json:"slots"`
	Initialized int64 `json:"initialized"`
	Deleted     int64 `json:"deleted"`
	Lost        int64 `json:"lost"`
}

// ReportConfig echoes the settings of the run.
type ReportConfig struct {
	Sessions        int     `json:"sessions"`
	Concurrency     int     `json:"concurrency"`
	Rate            float64 `json:"rate"`
	DurationSeconds float64 `json:"duration_seconds"`
	RampSeconds     float64 `json:"ramp_seconds"`
	TimeoutSeconds  float64 `json:"timeout_seconds"`
	MaxRequests     int64   `json:"max_requests"`
	Mix             string  `json:"mix"`
	EffectiveMix    string  `json:"effective_mix"`
	Seed            uint64  `json:"seed"`
	SSETool         string  `json:"sse_tool,omitempty"`
}

// BudgetsReport echoes the budgets, durations in milliseconds (0: none).
type BudgetsReport struct {
	MaxErrorsPct    float64 `json:"max_errors_pct"`
	MaxSessionsLost int64   `json:"max_sessions_lost"`
	MaxWritesLost   int64   `json:"max_writes_lost"`
	MaxSkipped      int64   `json:"max_skipped"`
	MaxFailoverMS   float64 `json:"max_failover_ms"`
	MaxP95MS        float64 `json:"max_p95_ms"`
	// StallResolutionMS is Budgets.StallResolution.
	StallResolutionMS float64 `json:"stall_resolution_ms"`
	// StallReferenceMS is Budgets.StallReference.
	StallReferenceMS float64 `json:"stall_reference_ms"`
}

// Report is the outcome of a run, as printed and as JSON.
type Report struct {
	Schema       string           `json:"schema"`
	URL          string           `json:"url"`
	Protocol     string           `json:"protocol"`
	StartedAt    time.Time        `json:"started_at"`
	Elapsed      float64          `json:"elapsed_seconds"`
	Interrupted  bool             `json:"interrupted"`
	Config       ReportConfig     `json:"config"`
	Requests     int64            `json:"requests"`
	HTTPRequests int64            `json:"http_requests"`
	RPS          float64          `json:"rps"`
	Latency      Latency          `json:"latency_ms"`
	Ops          map[Op]OpReport  `json:"ops"`
	Errors       ErrorsReport     `json:"errors"`
	MissedSends  int64            `json:"missed_sends"`
	Sessions     SessionsReport   `json:"sessions"`
	Continuity   ContinuityReport `json:"continuity"`
	Uptime       UptimeReport     `json:"uptime"`
	Streams      StreamsReport    `json:"streams"`
	ToolsMissing []string         `json:"tools_missing"`
	Faults       []FaultReport    `json:"faults"`
	Budgets      BudgetsReport    `json:"budgets"`
	Violations   []string         `json:"violations"`
	Passed       bool             `json:"passed"`
}

func buildReport(cfg Config, mix Mix, missing []string, col *collector, slots []*slot, runs []*faultRun, start, end time.Time, interrupted bool) Report {
	col.mu.Lock()
	defer col.mu.Unlock()
	elapsed := end.Sub(start).Seconds()
	r := Report{
		Schema:      ReportSchema,
		URL:         cfg.URL,
		Protocol:    cfg.Protocol,
		StartedAt:   start.UTC(),
		Elapsed:     elapsed,
		Interrupted: interrupted,
		Config: ReportConfig{
			Sessions: cfg.Sessions, Concurrency: cfg.Concurrency, Rate: cfg.Rate,
			DurationSeconds: cfg.Duration.Seconds(), RampSeconds: cfg.Ramp.Seconds(), TimeoutSeconds: cfg.Timeout.Seconds(),
			MaxRequests: cfg.MaxRequests, Mix: cfg.Mix.String(), EffectiveMix: mix.String(), Seed: cfg.Seed, SSETool: cfg.SSETool,
		},
		Requests:     col.requests,
		HTTPRequests: col.httpRequests.Load(),
		Latency:      latencyOf(&col.hist),
		Ops:          map[Op]OpReport{},
		Errors:       ErrorsReport{Total: col.failures, ByKind: map[string]int64{}, Samples: map[string]string{}},
		MissedSends:  col.missedSends.Load(),
		Streams: StreamsReport{
			ProgressNotifications: col.progress, Resumes: col.resumed,
			ResumeNotExercised: col.notExercised, AutoResumes: col.autoResumed, ResumeConflicts: col.conflicts,
		},
		ToolsMissing: append([]string{}, missing...),
		Budgets: BudgetsReport{
			MaxErrorsPct: cfg.Budgets.MaxErrorsPct, MaxSessionsLost: cfg.Budgets.MaxSessionsLost,
			MaxWritesLost: cfg.Budgets.MaxWritesLost, MaxSkipped: cfg.Budgets.MaxSkipped,
			MaxFailoverMS: ms(cfg.Budgets.MaxFailover), MaxP95MS: ms(cfg.Budgets.MaxP95), StallResolutionMS: ms(cfg.Budgets.StallResolution),
			StallReferenceMS: ms(cfg.Budgets.StallReference),
		},
		Violations: []string{},
	}
	if elapsed > 0 {
		r.RPS = float64(col.requests) / elapsed
	}
	if col.requests > 0 {
		r.Errors.Pct = 100 * float64(col.failures) / float64(col.requests)
	}
	for op, st := range col.ops {
		r.Ops[op] = OpReport{Count: st.count, Errors: st.errors, Latency: latencyOf(&st.hist)}
	}
	for k, v := range col.errs {
		r.Errors.ByKind[k] = v
	}
	for k, v := range col.errSample {
		r.Errors.Samples[k] = v
	}
	conts := make([]*Continuity, len(slots))
	for i, s := range slots {
		conts[i] = s.cont
	}
	r.Continuity = ContinuityReport{
		Checked:           r.Ops[OpCounter].Count > 0,
		ContinuitySummary: Summarize(conts),
	}
	r.Sessions = SessionsReport{Slots: len(slots), Initialized: col.initialized, Deleted: col.deleted, Lost: r.Continuity.SessionsLost}
	for _, w := range col.windows {
		if !w.active {
			r.Uptime.IdleWindows++
			continue
		}
		r.Uptime.Windows++
		if !w.down {
			r.Uptime.UpWindows++
		}
	}
	if r.Uptime.Windows > 0 {
		r.Uptime.Pct = 100 * float64(r.Uptime.UpWindows) / float64(r.Uptime.Windows)
	}
	var gaps []gapRec
	for _, s := range slots {
		for _, g := range s.cont.gapLog {
			g.slot = s.idx
			gaps = append(gaps, g)
		}
	}
	r.Faults, r.Errors.OutsideFaults = faultReports(runs, start, end, cfg.Timeout, stallRule{cfg.Budgets.StallResolution, cfg.Budgets.StallReference}, cfg.Concurrency, col.fails, gaps, col.oks)
	if col.requests > 0 {
		r.Errors.OutsidePct = 100 * float64(r.Errors.OutsideFaults) / float64(col.requests)
	}
	r.Violations = r.check(cfg.Budgets)
	r.Passed = len(r.Violations) == 0
	return r
}

// check lists every budget the run missed.
func (r *Report) check(b Budgets) []string {
	v := []string{}
	if r.Interrupted {
		v = append(v, "the run was interrupted before --duration ended")
	}
	if r.Requests == 0 {
		v = append(v, "no operation completed")
	}
	for _, t := range r.ToolsMissing {
		v = append(v, fmt.Sprintf("the server has no tool %q, so its operations did not run (add the tool or set its weight to 0 in --mix)", t))
	}
	if len(r.Faults) == 0 && r.Errors.Pct > b.MaxErrorsPct {
		v = append(v, fmt.Sprintf("errors %.3f%% above --max-errors-pct %g", r.Errors.Pct, b.MaxErrorsPct))
	}
	if len(r.Faults) > 0 && r.Errors.OutsidePct > b.MaxErrorsPct {
		v = append(v, fmt.Sprintf("errors no fault explains %d (%.3f%%) above --max-errors-pct %g", r.Errors.OutsideFaults, r.Errors.OutsidePct, b.MaxErrorsPct))
	}
	for _, f := range r.Faults {
		for _, fv := range f.Violations {
			v = append(v, fmt.Sprintf("fault %s: %s", f.Spec, fv))
		}
	}
	c := r.Continuity
	if c.SessionsLost > b.MaxSessionsLost {
		v = append(v, fmt.Sprintf("sessions lost %d above --max-sessions-lost %d", c.SessionsLost, b.MaxSessionsLost))
	}
	if c.WritesLost > b.MaxWritesLost {
		v = append(v, fmt.Sprintf("acknowledged writes lost %d above --max-writes-lost %d", c.WritesLost, b.MaxWritesLost))
	}
	if c.Skipped > b.MaxSkipped {
		v = append(v, fmt.Sprintf("counter increments skipped %d above --max-skipped %d", c.Skipped, b.MaxSkipped))
	}
	if b.MaxFailover > 0 && c.FailoverMax > b.MaxFailover {
		v = append(v, fmt.Sprintf("failover time %s above --max-failover %s", fmtDur(c.FailoverMax), b.MaxFailover))
	}
	if b.MaxP95 > 0 && time.Duration(r.Latency.P95*float64(time.Millisecond)) > b.MaxP95 {
		v = append(v, fmt.Sprintf("p95 latency %.3fms above --max-p95 %s", r.Latency.P95, b.MaxP95))
	}
	// A p95 budget at a --rate is about that load: when the workers could
	// not send at the rate, the latencies are of a lighter load (and leave
	// out the time operations waited to be sent).
	if b.MaxP95 > 0 && r.Config.Rate > 0 && r.Requests > 0 && float64(r.MissedSends) > maxMissedShare*float64(r.Requests) {
		v = append(v, fmt.Sprintf("--rate %g/s not held: %d sends missed (%.1f%% of %d operations), so the p95 is of a lighter load; lower --rate or raise --concurrency",
			r.Config.Rate, r.MissedSends, 100*float64(r.MissedSends)/float64(r.Requests), r.Requests))
	}
	return v
}

// maxMissedShare is the share of missed sends, against the operations
// done, above which a run at a --rate did not hold that rate.
const maxMissedShare = 0.01

// WriteJSON writes the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report for people.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, a ...any) { fmt.Fprintf(tw, format+"\n", a...) }
	p("url\t%s (protocol %s)", r.URL, r.Protocol)
	p("run\t%.1fs, %d sessions, concurrency %d, rate %s, mix %s", r.Elapsed, r.Config.Sessions, r.Config.Concurrency, rateText(r.Config.Rate), r.Config.EffectiveMix)
	p("requests\t%d operations (%d HTTP requests), %.1f/s", r.Requests, r.HTTPRequests, r.RPS)
	if r.MissedSends > 0 {
		p("missed sends\t%d (every worker busy: the target rate was not reached)", r.MissedSends)
	}
	p("latency\tp50 %.3fms  p95 %.3fms  p99 %.3fms  max %.3fms", r.Latency.P50, r.Latency.P95, r.Latency.P99, r.Latency.Max)
	p("errors\t%d (%.3f%%)", r.Errors.Total, r.Errors.Pct)
	for _, k := range sortedKeys(r.Errors.ByKind) {
		p("  %s\t%d  e.g. %s", k, r.Errors.ByKind[k], r.Errors.Samples[k])
	}
	c := r.Continuity
	if c.Checked {
		p("continuity\t%d counter acks, writes lost %d, skipped %d", c.CounterAcks, c.WritesLost, c.Skipped)
	} else {
		p("continuity\tnot checked (no counter operation ran)")
	}
	p("sessions\t%d slots, %d initialized, %d deleted, %d lost %s", r.Sessions.Slots, r.Sessions.Initialized, r.Sessions.Deleted, r.Sessions.Lost, reasons(c.SessionsLostByReason))
	p("failover\tmax %.3fms  p99 %.3fms over sessions (%d sessions had a gap)", c.FailoverMaxMS, c.FailoverP99MS, c.SlotsWithGaps)
	p("uptime\t%.2f%% of %d one-second windows", r.Uptime.Pct, r.Uptime.Windows)
	for _, f := range r.Faults {
		budget := "no budget"
		if f.HasMaxFailover {
			budget = fmt.Sprintf("budget %.0fms", f.MaxFailoverMS)
		}
		verdict := "PASS"
		if !f.Passed {
			verdict = "FAIL"
		}
		var hit []string
		for _, vi := range f.Victims {
			h := fmt.Sprintf("%s pid %d", vi.ID, vi.PID)
			if vi.Note != "" {
				h += " (" + vi.Note + ")"
			}
			hit = append(hit, h)
		}
		ref := ""
		if f.StallReferenceMS > 0 {
			ref = fmt.Sprintf(", %.0fms fault-free reference", f.StallReferenceMS)
		}
		p("fault\t%s %s at %.1fs–%.1fs on %s: failover %.0fms (%s; error gap %.0fms, slowest answer %.0fms vs %.0fms outside faults%s), errors %d (allowed %d) %s",
			verdict, f.Spec, f.InjectedAtS, f.DoneAtS, dash(strings.Join(hit, ", ")), f.FailoverMS, budget, f.ErrorGapMS, f.StallMS, f.BaselineMaxMS, ref,
			f.Errors, f.MaxErrors, reasons(f.ErrorsByKind))
		if w := f.WorstGap; w != nil && !f.Passed {
			p("  worst gap\tsession slot %d unserved %.1fs–%.1fs; its failures: %s", w.Slot, w.StartS, w.EndS, dash(strings.Join(w.Failures, ", ")))
		}
	}
	if len(r.Faults) > 0 {
		p("errors outside faults\t%d (%.3f%%)", r.Errors.OutsideFaults, r.Errors.OutsidePct)
	}
	if s := r.Streams; s.ProgressNotifications+s.Resumes+s.ResumeNotExercised+s.AutoResumes+s.ResumeConflicts > 0 {
		p("streams\t%d progress notifications, %d resumes (%d retried after 409), %d resumes not exercised, %d automatic resumes",
			s.ProgressNotifications, s.Resumes, s.ResumeConflicts, s.ResumeNotExercised, s.AutoResumes)
	}
	if len(r.Ops) > 0 {
		p("")
		p("OP\tCOUNT\tERRORS\tP50 ms\tP95 ms\tP99 ms\tMAX ms")
		ops := append([]Op{OpInit}, MixOps...)
		for _, op := range ops {
			if o, ok := r.Ops[op]; ok {
				p("%s\t%d\t%d\t%.3f\t%.3f\t%.3f\t%.3f", op, o.Count, o.Errors, o.Latency.P50, o.Latency.P95, o.Latency.P99, o.Latency.Max)
			}
		}
	}
	p("")
	if r.Passed {
		p("result\tPASS: every budget met")
	} else {
		p("result\tFAIL")
		for _, v := range r.Violations {
			p("  -\t%s", v)
		}
	}
	return tw.Flush()
}

func rateText(r float64) string {
	if r == 0 {
		return "closed loop"
	}
	return fmt.Sprintf("%g/s", r)
}

func reasons(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	parts := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func sortedKeys(m map[string]int64) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// fmtDur prints a duration rounded for a progress line.
func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// SteadyMax is the slowest answer of the run other than initialize (a
// run's sessions all initialize at its start, on cold connections): how
// slow an answer got under steady load. A fault-free run's SteadyMax is
// the stall reference of the faulted runs after it (Budgets.StallReference).
func (r *Report) SteadyMax() time.Duration {
	var m float64
	for op, o := range r.Ops {
		if op != OpInit {
			m = max(m, o.Latency.Max)
		}
	}
	return time.Duration(m * float64(time.Millisecond))
}

// ReadReport reads a report written by --report-file.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading loadtest report: %w", err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("loadtest report %s: not a report written by --report-file: %w", path, err)
	}
	return &r, nil
}
