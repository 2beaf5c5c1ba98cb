package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// slot is one logical client: a session (re-created when lost or deleted)
// and its continuity tracker. A slot is held by one worker at a time.
type slot struct {
	idx  int
	sess *Session
	cont *Continuity
	n    int64 // operations done, for echo texts and progress tokens
}

// opStats is what the collector keeps per operation.
type opStats struct {
	count, errors int64
	hist          Histogram
}

// secStats is one second of completions, for the progress line.
type secStats struct {
	count, errors int64
	hist          Histogram
}

// window flags of one second of the run, for uptime.
type window struct{ active, down bool }

// collector gathers results from every worker.
type collector struct {
	start time.Time

	mu           sync.Mutex
	hist         Histogram
	ops          map[Op]*opStats
	errs         map[string]int64
	errSample    map[string]string
	windows      []window
	secs         map[int64]*secStats
	requests     int64
	failures     int64
	cancelled    int64
	initialized  int64
	deleted      int64
	progress     int64
	resumed      int64
	autoResumed  int64
	notExercised int64
	conflicts    int64
	fails        []failureRec
	oks          []gapRec // start and end of every successful operation, for stalls during faults

	httpRequests atomic.Int64
	sessionsLost atomic.Int64
	writesLost   atomic.Int64
	missedSends  atomic.Int64
}

func newCollector(start time.Time) *collector {
	return &collector{
		start:     start,
		ops:       map[Op]*opStats{},
		errs:      map[string]int64{},
		errSample: map[string]string{},
		secs:      map[int64]*secStats{},
	}
}

func (c *collector) sec(t time.Time) int64 {
	d := t.Sub(c.start)
	if d < 0 {
		return 0
	}
	return int64(d / time.Second)
}

// record adds one finished operation.
func (c *collector) record(op Op, slot int, start, end time.Time, res CallResult, err error) {
	kind, endpoint := "", ""
	if err != nil {
		kind = KindOf(err)
		var f *Failure
		if errors.As(err, &f) {
			endpoint = f.Endpoint
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if kind == "cancelled" {
		c.cancelled++
		return
	}
	lat := end.Sub(start)
	c.requests++
	c.hist.Record(lat)
	st := c.ops[op]
	if st == nil {
		st = &opStats{}
		c.ops[op] = st
	}
	st.count++
	st.hist.Record(lat)
	c.progress += int64(res.Progress)
	c.conflicts += int64(res.Conflicts)
	switch {
	case op != OpResume:
		c.autoResumed += int64(res.Resumed)
	case err == nil && res.Dropped:
		c.resumed++
	case err == nil:
		c.notExercised++
	}
	if err != nil {
		c.fails = append(c.fails, failureRec{start: start, end: end, kind: kind, slot: slot, endpoint: endpoint})
		c.failures++
		st.errors++
		c.errs[kind]++
		if _, ok := c.errSample[kind]; !ok {
			c.errSample[kind] = fmt.Sprintf("%s: %v", op, err)
		}
	} else {
		c.oks = append(c.oks, gapRec{start: start, end: end})
		switch op {
		case OpInit:
			c.initialized++
		case OpDelete:
			c.deleted++
		}
	}
	for s := c.sec(start); s <= c.sec(end); s++ {
		for int64(len(c.windows)) <= s {
			c.windows = append(c.windows, window{})
		}
		c.windows[s].active = true
		if err != nil {
			c.windows[s].down = true
		}
	}
	ss := c.secs[c.sec(end)]
	if ss == nil {
		ss = &secStats{}
		c.secs[c.sec(end)] = ss
	}
	ss.count++
	if err != nil {
		ss.errors++
	}
	ss.hist.Record(lat)
}

// takeSecond removes and returns the completions of second s.
func (c *collector) takeSecond(s int64) (secStats, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out secStats
	if ss := c.secs[s]; ss != nil {
		out = *ss
		delete(c.secs, s)
	}
	return out, c.failures
}

// Run drives load as cfg says and returns the report. A progress line goes
// to progress every second (nil: none). It returns an error, and no report,
// only when the run could not start: the server did not answer a first
// initialize and tools/list, or no operation of the mix can run, or cfg
// does not pass Validate. Cancelling ctx stops the run early; the report
// then says Interrupted.
func Run(ctx context.Context, cfg Config, progress io.Writer) (Report, error) {
	if err := cfg.Validate(); err != nil {
		return Report{}, err
	}
	if progress == nil {
		progress = io.Discard
	}
	// The progress line and the fault log write from their own goroutines.
	progress = &lockedWriter{w: progress}
	hc := NewHTTPClient(cfg.Concurrency, cfg.Timeout)
	defer hc.CloseIdleConnections()
	newClient := func() *Client {
		return &Client{URL: cfg.URL, Fallbacks: cfg.Fallbacks, HTTP: hc, Headers: cfg.Headers, Protocol: cfg.Protocol, ClientName: "erlmcp-loadtest", StampSentAt: cfg.StampSentAt}
	}

	mix, missing, err := probe(ctx, cfg, newClient())
	if err != nil {
		return Report{}, err
	}
	for _, t := range missing {
		fmt.Fprintf(progress, "loadtest: the server has no tool %q; its operations are left out of the mix and the run will fail its budgets\n", t)
	}
	if mix.Total() == 0 {
		return Report{}, fmt.Errorf("nothing to run: the server lacks %s, which every operation of --mix %s needs", strings.Join(missing, ", "), cfg.Mix)
	}

	client := newClient()
	start := time.Now()
	col := newCollector(start)
	client.OnHTTP = func() { col.httpRequests.Add(1) }
	// The load ends at the deadline, which a fault schedule with a tail
	// holds open until its last fault is over and moves to that plus the
	// tail.
	var deadline atomic.Int64
	deadline.Store(start.Add(cfg.Duration).UnixNano())
	var faultsPending atomic.Bool
	faultsPending.Store(len(cfg.Faults) > 0 && cfg.FaultTail > 0)
	over := func(now time.Time) bool {
		return now.UnixNano() >= deadline.Load() && !faultsPending.Load()
	}

	slots := make([]*slot, cfg.Sessions)
	free := make(chan *slot, cfg.Sessions)
	for i := range slots {
		slots[i] = &slot{idx: i, cont: NewContinuity(cfg.CounterBy)}
		if Sessionless(cfg.Protocol) {
			slots[i].sess = client.NewSessionless()
		}
		free <- slots[i]
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()

	// tokens paces an open loop; nil in a closed loop.
	var tokens chan struct{}
	var issued atomic.Int64
	var wg sync.WaitGroup
	if cfg.Rate > 0 {
		tokens = make(chan struct{}, cfg.Concurrency)
		wg.Add(1)
		go func() {
			defer wg.Done()
			dispatch(runCtx, cfg, start, over, tokens, col)
		}()
	}

	// Faults run beside the load, each at its offset from start.
	faultsDone := make(chan []*faultRun, 1)
	if len(cfg.Faults) > 0 {
		logf := func(format string, a ...any) { fmt.Fprintf(progress, format+"\n", a...) }
		go func() {
			runs := runFaults(ctx, cfg.Injector, cfg.Faults, start, logf)
			if cfg.FaultTail > 0 {
				deadline.Store(max(deadline.Load(), time.Now().Add(cfg.FaultTail).UnixNano()))
				faultsPending.Store(false)
			}
			faultsDone <- runs
		}()
	} else {
		faultsDone <- nil
	}

	var workers sync.WaitGroup
	for w := 0; w < cfg.Concurrency; w++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			rng := rand.New(rand.NewPCG(cfg.Seed, uint64(w)))
			var backoff time.Duration
			// held is a failing slot this worker keeps to retry.
			var held *slot
			defer func() {
				if held != nil {
					free <- held
				}
			}()
			if tokens == nil && cfg.Ramp > 0 && w > 0 {
				// closed-loop ramp: worker w starts at ramp*w/concurrency
				t := time.NewTimer(cfg.Ramp * time.Duration(w) / time.Duration(cfg.Concurrency))
				select {
				case <-runCtx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			for {
				if tokens != nil {
					select {
					case <-runCtx.Done():
						return
					case _, ok := <-tokens:
						if !ok {
							return
						}
					}
				} else {
					if runCtx.Err() != nil || over(time.Now()) {
						return
					}
					if cfg.MaxRequests > 0 && issued.Add(1) > cfg.MaxRequests {
						return
					}
				}
				s := held
				if s == nil {
					select {
					case s = <-free:
					case <-runCtx.Done():
						return
					}
				}
				kind := runOp(ctx, cfg, mix, client, s, rng, col)
				// A slot whose request failed is retried at once by the
				// same worker, as a client retries, rather than queued
				// behind the other slots: its unserved window then ends
				// when the service is back, not when its turn comes.
				held = nil
				if s.cont.Failing() && runCtx.Err() == nil {
					held = s
				} else {
					free <- s
				}
				if tokens == nil && !refusedBackoff(runCtx, kind, &backoff) {
					return
				}
			}
		}()
	}

	// progress lines, one per second, until the workers are done
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for k := int64(1); ; k++ {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			ss, total := col.takeSecond(k - 1)
			fmt.Fprintf(progress, "loadtest %4ds  rps %7d  p99 %9s  errors %d (total %d)  sessions lost %d  writes lost %d\n",
				k, ss.count, fmtDur(ss.hist.Quantile(0.99)), ss.errors, total, col.sessionsLost.Load(), col.writesLost.Load())
		}
	}()

	workers.Wait()
	end := time.Now()
	stop()
	close(done)
	wg.Wait()
	// A fault still holding (a stop) ends by its own hold.
	runs := <-faultsDone

	for _, s := range slots {
		s.cont.Finish(end)
	}
	return buildReport(cfg, mix, missing, col, slots, runs, start, end, ctx.Err() != nil), nil
}

// refusedBackoff keeps a closed loop from spinning on a target that
// refuses connections: after a refused connection the worker waits 1 ms,
// doubling up to 50 ms while refusals go on; any other outcome resets the
// wait. (The failover time it adds to a measurement is at most 50 ms.) It
// returns false when ctx ended during the wait.
func refusedBackoff(ctx context.Context, kind string, backoff *time.Duration) bool {
	if kind != "conn_refused" {
		*backoff = 0
		return true
	}
	*backoff = min(max(2**backoff, time.Millisecond), 50*time.Millisecond)
	t := time.NewTimer(*backoff)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// dispatch sends one token per operation at the configured rate (ramping up
// linearly), until the duration or --max-requests is reached, then closes
// tokens. A token that finds every worker busy and the queue full is
// counted as a missed send: the server could not keep up at this
// concurrency.
func dispatch(ctx context.Context, cfg Config, start time.Time, over func(time.Time) bool, tokens chan<- struct{}, col *collector) {
	defer close(tokens)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var sent int64
	for {
		el := time.Since(start)
		if over(time.Now()) {
			return
		}
		due := int64(expectedOps(cfg.Rate, cfg.Ramp, el))
		if cfg.MaxRequests > 0 && due > cfg.MaxRequests {
			due = cfg.MaxRequests
		}
		for ; sent < due; sent++ {
			select {
			case tokens <- struct{}{}:
			default:
				col.missedSends.Add(1)
			}
		}
		if cfg.MaxRequests > 0 && sent >= cfg.MaxRequests {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// expectedOps is how many operations should have started el into the run:
// the integral of a rate that climbs linearly from 0 to rate over ramp.
func expectedOps(rate float64, ramp, el time.Duration) float64 {
	t := el.Seconds()
	if ramp <= 0 {
		return rate * t
	}
	r := ramp.Seconds()
	if t < r {
		return rate * t * t / (2 * r)
	}
	return rate*r/2 + rate*(t-r)
}

// runOp spends one turn of slot s: initialize when it has no session, else
// one operation of the mix. It returns the failure kind ("" on success).
func runOp(ctx context.Context, cfg Config, mix Mix, client *Client, s *slot, rng *rand.Rand, col *collector) string {
	opCtx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	s.n++
	lostBefore, writesBefore := s.cont.LostTotal(), s.cont.WritesLost
	defer func() {
		col.sessionsLost.Add(s.cont.LostTotal() - lostBefore)
		col.writesLost.Add(s.cont.WritesLost - writesBefore)
	}()

	var (
		op  Op
		res CallResult
		err error
	)
	start := time.Now()
	if s.sess == nil {
		op = OpInit
		var sess *Session
		sess, err = client.Initialize(opCtx)
		if err == nil {
			s.sess = sess
			s.cont.Restart()
		}
	} else {
		op = mix.pick(rng.IntN(mix.Total()))
		res, err = doOp(opCtx, cfg, op, s)
	}
	end := time.Now()
	if err == nil {
		s.cont.Success(end)
		col.record(op, s.idx, start, end, res, nil)
		return ""
	}
	kind := KindOf(err)
	if kind == "cancelled" && ctx.Err() != nil {
		col.record(op, s.idx, start, end, res, err)
		return kind
	}
	s.cont.Failure(start, end)
	if SessionLost(err) && s.sess != nil && !Sessionless(cfg.Protocol) {
		s.cont.Lost("http_404")
		s.sess = nil
	}
	col.record(op, s.idx, start, end, res, err)
	return kind
}

// doOp performs one mix operation on a slot that has a session.
func doOp(ctx context.Context, cfg Config, op Op, s *slot) (CallResult, error) {
	switch op {
	case OpList:
		res, err := s.sess.Call(ctx, "tools/list", map[string]any{})
		if err != nil {
			return res, err
		}
		var lr struct {
			Tools []json.RawMessage `json:"tools"`
		}
		if err := json.Unmarshal(res.Result, &lr); err != nil || lr.Tools == nil {
			return res, failure("bad_result", "tools/list result has no tools array: %.200s", res.Result)
		}
		return res, nil
	case OpEcho:
		text := fmt.Sprintf("loadtest %d.%d", s.idx, s.n)
		res, err := s.sess.Call(ctx, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{"text": text}})
		if err != nil {
			return res, err
		}
		tr, err := DecodeToolResult(res.Result)
		if err != nil {
			return res, err
		}
		if len(tr.Content) == 0 || tr.Content[0].Text != text {
			return res, failure("bad_result", "echo of %q answered %.200s", text, res.Result)
		}
		return res, nil
	case OpCounter:
		res, err := s.sess.Call(ctx, "tools/call", map[string]any{"name": "counter", "arguments": map[string]any{"by": cfg.CounterBy}})
		if err == nil {
			var v int64
			if v, err = CounterValue(res.Result); err == nil {
				s.cont.Counter(v)
				return res, nil
			}
		}
		if !SessionLost(err) {
			// it may have been applied: the next value may be one further on
			s.cont.CounterUnknown()
		}
		return res, err
	case OpSSE, OpResume:
		var args map[string]any
		_ = json.Unmarshal(cfg.SSEArgs, &args)
		if args == nil {
			args = map[string]any{}
		}
		token := fmt.Sprintf("lg-%d-%d", s.idx, s.n)
		return s.sess.CallStream(ctx, "tools/call", map[string]any{"name": cfg.SSETool, "arguments": args}, token, op == OpResume)
	case OpDelete:
		err := s.sess.Delete(ctx)
		if err == nil || !SessionLost(err) {
			// deleted, or in an unknown state: start a new session either way
			s.sess = nil
			s.cont.Restart()
		}
		return CallResult{}, err
	}
	return CallResult{}, fmt.Errorf("unknown operation %q", op)
}

// probe opens one session, lists the tools and closes it, to learn which
// operations of the mix the server can serve. It returns the mix without
// the operations whose tool is missing, and the missing tools.
func probe(ctx context.Context, cfg Config, c *Client) (Mix, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var sess *Session
	if Sessionless(cfg.Protocol) {
		sess = c.NewSessionless()
	} else {
		var err error
		if sess, err = c.Initialize(ctx); err != nil {
			return nil, nil, fmt.Errorf("first initialize at %s failed: %w", cfg.URL, err)
		}
		defer func() { _ = sess.Delete(ctx) }()
	}
	have := map[string]bool{}
	cursor := ""
	for page := 0; page < 100; page++ {
		params := map[string]any{}
		if cursor != "" {
			params["cursor"] = cursor
		}
		res, err := sess.Call(ctx, "tools/list", params)
		if err != nil {
			return nil, nil, fmt.Errorf("first tools/list at %s failed: %w", cfg.URL, err)
		}
		var lr struct {
			Tools []struct {
				Name string `json:"name"`
			} `json:"tools"`
			NextCursor string `json:"nextCursor"`
		}
		if err := json.Unmarshal(res.Result, &lr); err != nil {
			return nil, nil, fmt.Errorf("first tools/list at %s: %w", cfg.URL, err)
		}
		for _, t := range lr.Tools {
			have[t.Name] = true
		}
		if cursor = lr.NextCursor; cursor == "" {
			break
		}
	}
	mix := Mix{}
	for k, v := range cfg.Mix {
		mix[k] = v
	}
	var missing []string
	need := func(tool string, ops ...Op) {
		used := false
		for _, op := range ops {
			used = used || mix[op] > 0
		}
		if !used || have[tool] {
			return
		}
		missing = append(missing, tool)
		for _, op := range ops {
			mix[op] = 0
		}
	}
	need("echo", OpEcho)
	need("counter", OpCounter)
	if cfg.SSETool != "" {
		need(cfg.SSETool, OpSSE, OpResume)
	}
	sort.Strings(missing)
	return mix, missing, nil
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
