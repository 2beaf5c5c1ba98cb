// Package client is the Go client of the erlmcp session store. It follows
// the cluster config, the shard map and the registered store nodes in etcd,
// sends each request to the store that hosts the session's shard, and
// retries (re-resolving) while the shard is moving or its store is briefly
// unavailable, until the caller's deadline or the client's retry budget,
// whichever comes first.
//
// At logrus debug level every call logs one line with its RPC method,
// shard, the store that answered (or was tried last), its attempts and
// hedges, and its duration, so a slow request can be traced through the
// store.
//
// Mutations carry one request id across their retries, so a retry whose
// first attempt did land is applied once and answered with the first
// outcome.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/etcdwatch"
	"github.com/erlmcp/erlmcp/internal/membership"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Session is one session record.
type Session struct {
	ID        string
	Version   uint64
	Data      []byte
	CreatedAt time.Time
	UpdatedAt time.Time
	// IdleTTL is how long the session lives unread and unwritten; 0 means
	// forever.
	IdleTTL time.Duration
}

// Errors. Every error a call returns names the session and wraps one of
// these where it applies (test with errors.Is).
var (
	// ErrNotFound: what was asked for does not exist: the session (see
	// ErrSessionNotFound), or a state key or task of a live session.
	ErrNotFound = errors.New("not found")
	// ErrSessionNotFound: the session itself never existed, was deleted,
	// or expired. errors.Is(err, ErrNotFound) is true for it too; a missing
	// state key or task of a live session is ErrNotFound but not this.
	ErrSessionNotFound error = sessionNotFoundError{}
	// ErrExpired: the session expired. errors.Is(err, ErrSessionNotFound)
	// and errors.Is(err, ErrNotFound) are true for it too.
	ErrExpired error = expiredError{}
	// ErrAlreadyExists: Create for an id that is taken.
	ErrAlreadyExists = errors.New("session already exists")
	// ErrVersionConflict: CompareAndSet, or a conditional PutState or
	// PutTask, lost; the stored version differs.
	ErrVersionConflict = errors.New("version conflict")
	// ErrLimitExceeded: the session holds as many state keys or tasks as
	// the store allows (RESOURCE_EXHAUSTED); the message names the limit.
	ErrLimitExceeded = errors.New("session store limit exceeded")
	// ErrUnavailable: no store could answer before the deadline (no store
	// assigned or registered for the shard, store down, disk failure).
	ErrUnavailable = errors.New("session store unavailable")
)

var errClosed = fmt.Errorf("%w: the client is closed", ErrUnavailable)

type sessionNotFoundError struct{}

func (sessionNotFoundError) Error() string { return "session not found" }
func (sessionNotFoundError) Unwrap() error { return ErrNotFound }

type expiredError struct{}

func (expiredError) Error() string { return "session expired" }
func (expiredError) Unwrap() error { return ErrSessionNotFound }

// Defaults.
const (
	DefaultPrefix         = "/erlmcp/"
	DefaultRequestTimeout = 2 * time.Second
	// DefaultAttemptTimeout is the first attempt's timeout: within the
	// store's Raft election timeout (10 ticks of 50 ms by default,
	// randomized to 0.5-1 s), so even without hedges a paused or
	// partitioned shard leader costs one short attempt and the retry, sent
	// to another replica, reaches the new leader about when it is elected.
	// Attempts that time out again get longer (up to RequestTimeout), so an
	// overloaded but live store is not hammered with retries it cannot
	// answer in time.
	DefaultAttemptTimeout = 750 * time.Millisecond
	// DefaultHedgeDelay is how long an attempt waits for its store before
	// the request is also sent to another replica of the shard (see
	// Client.hedged): well above a healthy store's write latency (p99 a
	// few ms), so hedges are rare unless the leader stopped answering, and
	// a fraction of the election timeout, so a hedge finds the new leader
	// soon after it is elected.
	DefaultHedgeDelay = 150 * time.Millisecond
	// defaultBudgetAttempts: a call whose ctx has no deadline retries for
	// at most this many request timeouts.
	defaultBudgetAttempts = 5
	// DefaultRetryBudget bounds a call's retries when its ctx allows
	// longer: long enough to ride out a shard leader's failover or a
	// store's restart several times over, short enough that a caller
	// holding a long ctx (a worker's tools/call may run for minutes) gets
	// ErrUnavailable to act on instead of a call that waits out its ctx.
	DefaultRetryBudget = 30 * time.Second
	// maxBackoff caps the pause between attempts that found no leader: a
	// fraction of the election timeout, so a call notices the new leader
	// soon after it is elected.
	maxBackoff      = 100 * time.Millisecond
	maxRecvMsgBytes = 128 << 20
)

// Config configures a Client.
type Config struct {
	// Etcd is the caller's etcd client; the Client does not close it.
	Etcd *clientv3.Client
	// Prefix is the erlmcp etcd key prefix (default /erlmcp/).
	Prefix string
	// RequestTimeout bounds each attempt (default 2s); a ctx without
	// deadline gets a budget of a few of them.
	RequestTimeout time.Duration
	// AttemptTimeout bounds the first attempts (default
	// DefaultAttemptTimeout, at most RequestTimeout); attempts that time
	// out double it, up to RequestTimeout.
	AttemptTimeout time.Duration
	// HedgeDelay: an attempt that has not answered after this long is
	// joined by one to another replica of the shard, and again every
	// HedgeDelay while the first is pending (default DefaultHedgeDelay;
	// negative: never). Long-polls are never hedged.
	HedgeDelay time.Duration
	// RetryBudget bounds how long one call retries even when its ctx has
	// a later deadline (default DefaultRetryBudget; a long-poll gets its
	// wait on top). A call whose ctx has no deadline retries for the
	// smaller of this and a few RequestTimeouts.
	RetryBudget time.Duration
	// Log gets the client's warnings, and at debug level one line per
	// call (method, shard, store, attempts, hedges, duration).
	Log *logrus.Entry
}

// setDefaults fills in the zero fields.
func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = DefaultAttemptTimeout
	}
	if c.HedgeDelay == 0 {
		c.HedgeDelay = DefaultHedgeDelay
	}
	if c.RetryBudget == 0 {
		c.RetryBudget = DefaultRetryBudget
	}
	if c.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		c.Log = logrus.NewEntry(l)
	}
}

// Validate reports the first setting that cannot work.
func (c Config) Validate() error {
	if c.Etcd == nil {
		return errors.New("sessionstore client: Config.Etcd is nil: give an etcd client")
	}
	if !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/") {
		return fmt.Errorf("sessionstore client: prefix %q must start and end with '/'", c.Prefix)
	}
	if c.RequestTimeout < 0 {
		return fmt.Errorf("sessionstore client: request timeout %s must not be negative", c.RequestTimeout)
	}
	if c.AttemptTimeout < 0 {
		return fmt.Errorf("sessionstore client: attempt timeout %s must not be negative", c.AttemptTimeout)
	}
	if c.RetryBudget < 0 {
		return fmt.Errorf("sessionstore client: retry budget %s must not be negative", c.RetryBudget)
	}
	return nil
}

// Client talks to the session store. It is safe for concurrent use.
type Client struct {
	cfg    Config
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	cluster  *clusterstate.ClusterConfig
	shardKVs map[string][]byte
	shards   []clusterstate.Shard // nil until the config and a shard snapshot are known
	stores   map[string]membership.Member
	changed  chan struct{} // closed and replaced on every change
	conns    map[string]*grpc.ClientConn
	// leaders remembers, per shard, the store a node's hint named as the
	// shard's Raft leader, so later requests go there directly instead of
	// to the map's preferred store; dropped when a request there fails
	// or the map no longer lists that store for the shard.
	leaders map[int]target
	// stalls remembers, until when, the stores whose attempts timed out
	// (paused, partitioned), so the next calls try other replicas first
	// instead of each paying an attempt timeout on the same stalled store.
	stalls map[string]time.Time
	closed bool
}

// stallMemory is how long a store that let an attempt time out is tried
// last: about one Raft election, after which the shard has a new leader
// (or the store was only slow and is tried again).
const stallMemory = 2 * time.Second

// New starts following the cluster config, the shard map and the store
// members in etcd. It does not wait for them; see Ready.
func New(ctx context.Context, cfg Config) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &Client{cfg: cfg, cancel: cancel, changed: make(chan struct{}), conns: map[string]*grpc.ClientConn{}, leaders: map[int]target{}}
	watch := func(what, prefix string, apply func(etcdwatch.Snapshot)) {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			_ = etcdwatch.Run(wctx, cfg.Etcd, prefix, etcdwatch.Options{OnError: func(err error) {
				cfg.Log.WithError(err).Warnf("session store client: watch of the %s broke; listing again", what)
			}}, func(s etcdwatch.Snapshot) {
				c.mu.Lock()
				apply(s)
				c.rebuildLocked()
				c.mu.Unlock()
			})
		}()
	}
	watch("cluster config", clusterstate.ConfigKey(cfg.Prefix), func(s etcdwatch.Snapshot) {
		v, ok := s.KVs[clusterstate.ConfigKey(cfg.Prefix)]
		if !ok {
			return
		}
		var cc clusterstate.ClusterConfig
		if err := json.Unmarshal(v, &cc); err != nil {
			cfg.Log.WithError(err).Error("session store client: cannot decode the cluster config")
			return
		}
		if err := cc.Validate(); err != nil {
			cfg.Log.WithError(err).Error("session store client: invalid cluster config")
			return
		}
		c.cluster = &cc
	})
	watch("shard map", clusterstate.ShardsPrefix(cfg.Prefix), func(s etcdwatch.Snapshot) {
		c.shardKVs = s.KVs
	})
	watch("store members", membership.RolePrefix(cfg.Prefix, membership.RoleStore), func(s etcdwatch.Snapshot) {
		stores := map[string]membership.Member{}
		for _, m := range membership.FromKVs(s.KVs) {
			stores[m.ID] = m
		}
		c.stores = stores
	})
	return c, nil
}

func (c *Client) rebuildLocked() {
	if c.cluster != nil && c.shardKVs != nil {
		c.shards = clusterstate.DecodeShards(c.cfg.Prefix, c.cluster.ShardCount, c.shardKVs)
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// Ready blocks until the shard map and at least one store are known, or
// ctx ends.
func (c *Client) Ready(ctx context.Context) error {
	for {
		c.mu.Lock()
		ok := c.shards != nil && len(c.stores) > 0
		var missing []string
		if c.cluster == nil {
			missing = append(missing, "the cluster config ("+clusterstate.ConfigKey(c.cfg.Prefix)+")")
		}
		if c.shardKVs == nil {
			missing = append(missing, "the shard map")
		}
		if len(c.stores) == 0 {
			missing = append(missing, "a registered store node ("+membership.RolePrefix(c.cfg.Prefix, membership.RoleStore)+")")
		}
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: session store client not ready: still waiting for %s: %w", ErrUnavailable, strings.Join(missing, ", "), ctx.Err())
		case <-ch:
		}
	}
}

// Close stops the watches and closes the store connections.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	var errs []error
	for _, cc := range conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Create stores a new session at version 1.
func (c *Client) Create(ctx context.Context, id string, data []byte, idleTTL time.Duration) (Session, error) {
	req := &pb.CreateSessionRequest{Id: id, Data: data, IdleTtlMs: idleTTL.Milliseconds(), RequestId: newRequestID()}
	if idleTTL > 0 && req.IdleTtlMs == 0 {
		req.IdleTtlMs = 1
	}
	resp, err := call(ctx, c, "CreateSession", "create", id, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.CreateSessionResponse, error) {
		return sc.CreateSession(ctx, req)
	})
	if err != nil {
		return Session{}, err
	}
	return fromPB(resp.GetSession()), nil
}

// Get returns the session; touch refreshes its idle expiry.
func (c *Client) Get(ctx context.Context, id string, touch bool) (Session, error) {
	req := &pb.GetSessionRequest{Id: id, Touch: touch}
	resp, err := call(ctx, c, "GetSession", "get", id, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.GetSessionResponse, error) {
		return sc.GetSession(ctx, req)
	})
	if err != nil {
		return Session{}, err
	}
	return fromPB(resp.GetSession()), nil
}

// CompareAndSet replaces the session's data if its version is
// expectedVersion and returns the session at its new version.
func (c *Client) CompareAndSet(ctx context.Context, id string, expectedVersion uint64, data []byte) (Session, error) {
	req := &pb.CompareAndSetSessionRequest{Id: id, ExpectedVersion: expectedVersion, Data: data, RequestId: newRequestID()}
	resp, err := call(ctx, c, "CompareAndSetSession", "compare-and-set", id, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.CompareAndSetSessionResponse, error) {
		return sc.CompareAndSetSession(ctx, req)
	})
	if err != nil {
		return Session{}, err
	}
	return fromPB(resp.GetSession()), nil
}

// Delete removes the session; ErrNotFound if it does not exist.
func (c *Client) Delete(ctx context.Context, id string) error {
	req := &pb.DeleteSessionRequest{Id: id, RequestId: newRequestID()}
	return c.do(ctx, "DeleteSession", "delete", id, func(ctx context.Context, sc pb.SessionStoreServiceClient) error {
		_, err := sc.DeleteSession(ctx, req)
		return err
	})
}

func fromPB(s *pb.Session) Session {
	if s == nil {
		return Session{}
	}
	return Session{
		ID:        s.GetId(),
		Version:   s.GetVersion(),
		Data:      s.GetData(),
		CreatedAt: time.UnixMilli(s.GetCreatedAtUnixMs()),
		UpdatedAt: time.UnixMilli(s.GetUpdatedAtUnixMs()),
		IdleTTL:   time.Duration(s.GetIdleTtlMs()) * time.Millisecond,
	}
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// target is where one attempt goes.
type target struct {
	shard int
	store string
	addr  string
}

// resolve finds the store for id from the shard map and the members. The
// error wraps ErrUnavailable.
//
// A Raft-replicated shard lists several stores: after failed attempts
// (attempt > 0) the others are tried in turn, so a dead preferred store
// (say the former leader, still named by the map) does not stall the
// client; the store that answers names the leader in its hint.
func (c *Client) resolve(id string, attempt int) (target, <-chan struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := c.changed
	if c.closed {
		return target{}, ch, errClosed
	}
	if c.cluster == nil {
		return target{}, ch, fmt.Errorf("%w: the cluster config (%s) is not known yet", ErrUnavailable, clusterstate.ConfigKey(c.cfg.Prefix))
	}
	shard := clusterstate.ShardOf(id, c.cluster.ShardCount)
	if c.shards == nil {
		return target{shard: shard}, ch, fmt.Errorf("%w: the shard map is not known yet (shard %d)", ErrUnavailable, shard)
	}
	sh := c.shards[shard]
	if l, ok := c.leaders[shard]; ok {
		if m, reg := c.stores[l.store]; reg && m.Addr == l.addr && sh.Hosts(l.store) {
			return l, ch, nil
		}
		delete(c.leaders, shard)
	}
	store := sh.Preferred()
	if store == "" {
		return target{shard: shard}, ch, fmt.Errorf("%w: shard %d has no store assigned in the shard map", ErrUnavailable, shard)
	}
	if attempt > 0 {
		// The preferred store's turn comes every len(others)+1 attempts,
		// unless it is not registered.
		others := c.votersLocked(shard, func(o target) bool { return o.store != store })
		if k := attempt % (len(others) + 1); k > 0 {
			return others[k-1], ch, nil
		}
		if m, ok := c.stores[store]; (!ok || m.Addr == "") && len(others) > 0 {
			return others[attempt%len(others)], ch, nil
		}
	}
	m, ok := c.stores[store]
	if !ok || m.Addr == "" {
		return target{shard: shard, store: store}, ch, fmt.Errorf("%w: shard %d is assigned to store %q, which is not registered (%s%s)", ErrUnavailable, shard, store, membership.RolePrefix(c.cfg.Prefix, membership.RoleStore), store)
	}
	return target{shard: shard, store: store, addr: m.Addr}, ch, nil
}

func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("%w: the client is closed", ErrUnavailable)
	}
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgBytes)))
	if err != nil {
		return nil, fmt.Errorf("%w: dial store at %s: %v", ErrUnavailable, addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}

// attemptFunc is one RPC of a call against one store. Attempts of a call
// may run concurrently (see hedged), so each returns its own result rather
// than setting a variable they share.
type attemptFunc func(context.Context, pb.SessionStoreServiceClient) (any, error)

// do runs fn, the RPC method, against the store hosting id, retrying on a
// moved shard (FAILED_PRECONDITION), UNAVAILABLE and per-attempt timeouts
// until ctx's deadline or the retry budget (see run); what names the call
// in errors.
func (c *Client) do(ctx context.Context, method, what, id string, fn func(context.Context, pb.SessionStoreServiceClient) error) error {
	_, err := c.run(ctx, method, what, id, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (any, error) {
		return nil, fn(ctx, sc)
	})
	return err
}

// call is do for an RPC with a result; wait > 0 marks a long-poll (see
// run).
func call[T any](ctx context.Context, c *Client, method, what, id string, wait time.Duration, fn func(context.Context, pb.SessionStoreServiceClient) (T, error)) (T, error) {
	v, err := c.run(ctx, method, what, id, wait, func(ctx context.Context, sc pb.SessionStoreServiceClient) (any, error) {
		return fn(ctx, sc)
	})
	if err != nil {
		var zero T
		return zero, err
	}
	r, _ := v.(T)
	return r, nil
}

// callTrace is what one call did, for its debug log line; run passes nil
// when debug logging is off, and then nothing is counted.
type callTrace struct {
	t        target // the store that answered, or the last one tried
	attempts int    // rounds of the retry loop that sent a request
	hedges   int    // requests sent besides each round's first (see hedged)
}

// run is the retry loop of do and call, and logs the call at debug level.
func (c *Client) run(ctx context.Context, method, what, id string, wait time.Duration, fn attemptFunc) (any, error) {
	// Checked per call, not once: the level can change at run time; and
	// when it is off no field is built and no clock read.
	if !c.cfg.Log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		return c.retry(ctx, what, id, wait, fn, nil)
	}
	var tr callTrace
	start := time.Now()
	v, err := c.retry(ctx, what, id, wait, fn, &tr)
	e := c.cfg.Log.WithFields(logrus.Fields{
		"method": method, "shard": tr.t.shard, "store": tr.t.store, "attempts": tr.attempts,
		"hedged": tr.hedges > 0, "hedges": tr.hedges, "duration_ms": float64(time.Since(start).Microseconds()) / 1e3,
	})
	if err != nil {
		e = e.WithError(err)
	}
	e.Debug("session store call")
	return v, err
}

// retry is run's loop. It ends by ctx's deadline, or by the retry budget
// when ctx has none or a later one (RetryBudget, or defaultBudgetAttempts
// request timeouts for a ctx without deadline), so no caller waits out a
// long ctx on a store that cannot answer. A call that may block up to wait
// on the store (a long-poll) gets wait + the attempt timeout per attempt,
// a budget longer by wait, and no hedges (its slow answer is the expected
// one).
func (c *Client) retry(ctx context.Context, what, id string, wait time.Duration, fn attemptFunc, tr *callTrace) (any, error) {
	budget := c.cfg.RetryBudget
	if budget <= 0 { // a Client not made by New
		budget = DefaultRetryBudget
	}
	if _, ok := ctx.Deadline(); !ok {
		budget = min(budget, defaultBudgetAttempts*c.cfg.RequestTimeout)
	}
	budget += wait
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > budget {
		// The cause says the client gave up, not the caller: an
		// ErrUnavailable the caller can answer (a 503), also a deadline.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, budget, budgetError{budget})
		defer cancel()
	}
	var hint *pb.ShardHint
	var lastErr error
	backoff := 5 * time.Millisecond
	timeouts := 0 // attempts that ran out of time
	// stalledAt: the attempt at which a store let an attempt of this call
	// time out (paused, partitioned) or refused the connection (dead).
	// For the next few attempts it is avoided, its hints included: a
	// follower may name a paused or killed leader until it notices the
	// election. Then it is tried again (with a longer timeout), in case it
	// was only slow or has restarted.
	stalledAt := map[string]int{}
	stalled := func(addr string, attempt int) bool {
		if at, ok := stalledAt[addr]; ok {
			return attempt-at <= 3
		}
		return attempt <= 3 && c.stalledRecently(addr)
	}
	for attempt := 0; ; attempt++ {
		t, changed, err := c.resolve(id, attempt)
		if errors.Is(err, errClosed) {
			return nil, fmt.Errorf("%s session %q: %w", what, id, err)
		}
		if tr != nil && err != nil {
			tr.t = t // no store to try: the log names the shard
		}
		for k := 1; err == nil && stalled(t.addr, attempt) && k < 4; k++ {
			if alt, _, aerr := c.resolve(id, attempt+k); aerr == nil && !stalled(alt.addr, attempt) {
				t = alt
			}
		}
		if hint != nil && stalled(hint.GetAddr(), attempt) {
			hint = nil
		}
		if hint != nil && hint.GetAddr() != "" && hint.GetAddr() != t.addr {
			// The node we asked knows better than our (possibly stale) map.
			t = target{shard: int(hint.GetShard()), store: hint.GetNodeId(), addr: hint.GetAddr()}
			err = nil
		}
		hint = nil
		if err == nil {
			var v any
			var won target
			if tr != nil {
				tr.attempts++
				tr.t = t
			}
			v, won, err = c.hedged(ctx, t, wait+c.attemptTimeout(timeouts), wait == 0, fn, tr)
			if tr != nil {
				tr.t = won
			}
			if err == nil {
				c.setStall(won.addr, false)
				// Only a shard's leader serves a request: later calls go
				// there directly, not first to the map's (perhaps former)
				// leader or, after a hedge won, to the store that did not
				// answer.
				c.setLeader(won)
				return v, nil
			}
			// An error from a hedge (won != t) is a definite answer: hedged
			// returns one only when it is not retryable, which the switch
			// below maps like any other.
			if status.Code(err) == codes.DeadlineExceeded && ctx.Err() == nil {
				timeouts++
				stalledAt[t.addr] = attempt
				c.setStall(t.addr, true)
			}
			if status.Code(err) == codes.Unavailable && c.unreachable(t.addr) {
				// Nothing listens there (killed, restarting): do not
				// follow hints back to it while the shard elects.
				stalledAt[t.addr] = attempt
				c.setStall(t.addr, true)
			}
			if st, ok := status.FromError(err); !ok || st.Code() == codes.Unavailable || st.Code() == codes.FailedPrecondition || st.Code() == codes.DeadlineExceeded {
				c.forgetLeader(t)
			}
			st, isStatus := status.FromError(err)
			switch {
			case !isStatus:
				lastErr = err
			case st.Code() == codes.FailedPrecondition:
				hint = shardHint(st)
				c.rememberLeader(hint)
				lastErr = fmt.Errorf("%w: store %q at %s does not host shard %d: %s", ErrUnavailable, t.store, t.addr, t.shard, st.Message())
			case (st.Code() == codes.Canceled || st.Code() == codes.DeadlineExceeded) && ctx.Err() != nil:
				// The caller's ctx, or the budget, ended during the attempt.
				return nil, attemptEnded(what, id, t, context.Cause(ctx))
			case st.Code() == codes.Unavailable,
				st.Code() == codes.DeadlineExceeded && ctx.Err() == nil,
				st.Code() == codes.Canceled && ctx.Err() == nil:
				lastErr = fmt.Errorf("%w: store %q at %s: %s", ErrUnavailable, t.store, t.addr, st.Message())
			default:
				return nil, mapStatus(what, id, st)
			}
		} else {
			lastErr = err
		}
		if hint != nil && hint.GetAddr() != "" && hint.GetAddr() != t.addr && !stalled(hint.GetAddr(), attempt+1) {
			continue // follow the hint at once
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("%s session %q: %w (gave up: %w)", what, id, lastErr, context.Cause(ctx))
		case <-changed:
			timer.Stop()
		case <-timer.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// budgetError is the cause of a call's end at the client's retry budget:
// an unavailable store the caller can answer (a 503), and a deadline. A
// type, not an error made per call: every call under a long context sets
// the budget, and it almost never fires.
type budgetError struct{ budget time.Duration }

func (e budgetError) Error() string {
	return fmt.Sprintf("%v: gave up after the client's retry budget of %s (%v)", ErrUnavailable, e.budget, context.DeadlineExceeded)
}

func (e budgetError) Unwrap() []error { return []error{ErrUnavailable, context.DeadlineExceeded} }

// attemptEnded is the error of a call whose context (cause) ended during
// an attempt on t. A deadline, the caller's or the budget's, means the
// store did not answer in time: ErrUnavailable, so the caller can answer
// it as such whichever deadline came first; a cancellation stays one.
func attemptEnded(what, id string, t target, cause error) error {
	if errors.Is(cause, context.DeadlineExceeded) && !errors.Is(cause, ErrUnavailable) {
		return fmt.Errorf("%s session %q: %w: store %q at %s did not answer in time (%w)", what, id, ErrUnavailable, t.store, t.addr, cause)
	}
	return fmt.Errorf("%s session %q: store %q at %s: %w", what, id, t.store, t.addr, cause)
}

// attemptResult is the outcome of one attempt of a hedged call.
type attemptResult struct {
	t   target
	v   any
	err error
}

// retryable reports whether an attempt's error says nothing about the
// call itself: the store is not (or no longer) the shard's leader, is
// unreachable, or did not answer in time.
func retryable(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return true
	}
	switch st.Code() {
	case codes.Unavailable, codes.FailedPrecondition, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return false
}

// hedged runs one attempt at t. While t has not answered, every HedgeDelay
// the same request also goes to another replica of the shard (one hedge in
// flight at a time, the replicas in turn), and a hedge's not-leader answer
// whose hint names a store other than t is followed at once, alongside.
// So a leader that neither answers nor refuses (paused, partitioned) costs
// about the election, not a whole attempt timeout: a follower asked once
// the shard elected names the new leader, or, elected itself, serves the
// request; one asked during the election waits for it (the store holds a
// request for a shard without a leader until one is elected).
//
// A hedge never applies a write twice: followers refuse proposals (they
// answer with a hint, never forward), and a write that reaches the old and
// the new leader carries one request id, which the state machine applies
// once.
//
// All of them share the attempt's timeout, so a hedged attempt takes no
// longer than a plain one, and a store a hint names is asked once per
// attempt (hints cannot bounce it between stores); a leader found too late
// is remembered and asked first by the next attempt.
//
// It returns the first success or definite answer (a version conflict, a
// missing session: only a leader gives one) with the store that gave it;
// when every attempt failed, t's own outcome, for the retry loop to act on.
// t's attempt runs on the caller's goroutine, so when a hedge wins the
// call returns once that attempt has seen its cancellation (at once: the
// RPC ends on its context).
func (c *Client) hedged(ctx context.Context, t target, timeout time.Duration, hedge bool, fn attemptFunc, tr *callTrace) (any, target, error) {
	if !hedge || c.cfg.HedgeDelay <= 0 {
		v, err := c.attempt(ctx, t, timeout, fn)
		return v, t, err
	}
	// Cancelled on return: attempts still running have lost.
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The first attempt runs on the caller's goroutine: most answer
	// within HedgeDelay, and a goroutine per call (and the hand-off of its
	// result) cost the store benchmark's reads CPU and latency. Only when
	// HedgeDelay passes first does the timer start the hedging, which takes
	// t's result from here once it comes.
	h := &hedging{c: c, hctx: hctx, ctx: ctx, cancel: cancel, t: t, timeout: timeout, fn: fn, tr: tr,
		results: make(chan attemptResult), done: make(chan attemptResult, 1)}
	timer := time.AfterFunc(c.cfg.HedgeDelay, h.run)
	v, err := c.attempt(hctx, t, timeout, fn)
	h.answered.Store(true) // a hedge starting now would be wasted
	if timer.Stop() {
		return v, t, err
	}
	select {
	case h.results <- attemptResult{t: t, v: v, err: err}:
		r := <-h.done
		return r.v, r.t, r.err
	case r := <-h.done: // decided without t's answer (a hedge won, or time ran out)
		return r.v, r.t, r.err
	}
}

// hedging is the part of hedged that runs once t has not answered within
// HedgeDelay: it sends the hedges and decides the outcome, which it puts
// in done. t's own result comes on results.
type hedging struct {
	c         *Client
	hctx, ctx context.Context
	cancel    context.CancelFunc
	t         target
	timeout   time.Duration
	fn        attemptFunc
	tr        *callTrace
	results   chan attemptResult
	done      chan attemptResult
	inflight  map[string]bool
	hinted    map[string]bool
	// answered: t's attempt has returned (its result may still be on
	// its way to results); no hedge starts after that.
	answered atomic.Bool
}

func (h *hedging) launch(to target) {
	h.inflight[to.addr] = true
	if h.tr != nil && to != h.t {
		h.tr.hedges++
	}
	go func() {
		v, err := h.c.attempt(h.hctx, to, h.timeout, h.fn)
		select {
		case h.results <- attemptResult{t: to, v: v, err: err}:
		case <-h.hctx.Done():
		}
	}()
}

// run decides; it is the timer's goroutine. Deciding cancels hctx, so t's
// attempt on the caller's goroutine returns too.
func (h *hedging) run() {
	h.done <- h.decide()
	h.cancel()
}

func (h *hedging) decide() attemptResult {
	c, t := h.c, h.t
	h.inflight = map[string]bool{t.addr: true} // t runs on the caller's goroutine
	h.hinted = map[string]bool{t.addr: true}
	var primary *attemptResult
	turn := 0
	hedgeNext := func() {
		if len(h.inflight) == 1 && !h.answered.Load() && h.hctx.Err() == nil { // only t: no hedge pending
			if alt, ok := c.alternate(t, turn); ok {
				h.launch(alt)
			}
			turn++
		}
	}
	hedgeNext() // HedgeDelay has passed
	ticker := time.NewTicker(c.cfg.HedgeDelay)
	defer ticker.Stop()
	for {
		select {
		case <-h.hctx.Done():
			if h.ctx.Err() != nil {
				return attemptResult{t: t, err: status.FromContextError(h.ctx.Err()).Err()}
			}
			if primary != nil {
				return *primary
			}
			return attemptResult{t: t, err: status.Errorf(codes.DeadlineExceeded, "store %q at %s did not answer within %s", t.store, t.addr, h.timeout)}
		case r := <-h.results:
			delete(h.inflight, r.t.addr)
			if r.err == nil || !retryable(r.err) {
				return r
			}
			if r.t == t {
				primary = &r
			} else if st, ok := status.FromError(r.err); ok && st.Code() == codes.FailedPrecondition {
				if hint := shardHint(st); hint != nil && hint.GetAddr() != "" && !h.hinted[hint.GetAddr()] && !h.inflight[hint.GetAddr()] && !c.stalledRecently(hint.GetAddr()) {
					h.hinted[hint.GetAddr()] = true
					c.rememberLeader(hint)
					h.launch(target{shard: int(hint.GetShard()), store: hint.GetNodeId(), addr: hint.GetAddr()})
				}
			}
			if primary != nil && len(h.inflight) == 0 {
				return *primary
			}
		case <-ticker.C:
			hedgeNext()
		}
	}
}

// alternate is the turn-th (cyclically) voter replica of t's shard other
// than t whose store is registered and not known to be stalled.
func (c *Client) alternate(t target, turn int) (target, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	cands := c.votersLocked(t.shard, func(o target) bool {
		if o.addr == t.addr {
			return false
		}
		until, ok := c.stalls[o.addr]
		return !ok || !now.Before(until)
	})
	if len(cands) == 0 {
		return target{}, false
	}
	return cands[turn%len(cands)], true
}

// votersLocked lists, in the shard map's order, the voter replicas of
// shard whose stores are registered with an address, those keep accepts:
// where resolve's retries and hedged's hedges may go when the map's
// preferred store does not answer. Only voters: a learner never leads,
// so it could only answer with a hint.
func (c *Client) votersLocked(shard int, keep func(target) bool) []target {
	if c.shards == nil || shard < 0 || shard >= len(c.shards) {
		return nil
	}
	var out []target
	for _, r := range c.shards[shard].Replicas {
		if r.Role != clusterstate.RoleVoter && r.Role != "" {
			continue
		}
		m, ok := c.stores[r.Store]
		if !ok || m.Addr == "" {
			continue
		}
		if t := (target{shard: shard, store: r.Store, addr: m.Addr}); keep(t) {
			out = append(out, t)
		}
	}
	return out
}

// attemptTimeout is the timeout of the next attempt after timeouts
// attempts ran out of time: AttemptTimeout, doubled after every second
// timeout, at most RequestTimeout. A paused leader costs the first (short)
// attempt only, since the next goes to another replica; a live store that
// is merely slow gets more time after each miss.
func (c *Client) attemptTimeout(timeouts int) time.Duration {
	base := c.cfg.AttemptTimeout
	if base <= 0 || base > c.cfg.RequestTimeout {
		base = c.cfg.RequestTimeout
	}
	return min(base<<min(timeouts/2, 4), c.cfg.RequestTimeout)
}

// unreachable reports whether the connection to addr is not up: an
// UNAVAILABLE from it then means nothing listens there, not that a live
// store refused the request.
func (c *Client) unreachable(addr string) bool {
	c.mu.Lock()
	cc, ok := c.conns[addr]
	c.mu.Unlock()
	return ok && cc.GetState() != connectivity.Ready
}

// setStall records that addr let an attempt time out (on), or answered.
func (c *Client) setStall(addr string, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !on {
		delete(c.stalls, addr)
		return
	}
	if c.stalls == nil {
		c.stalls = map[string]time.Time{}
	}
	c.stalls[addr] = time.Now().Add(stallMemory)
}

func (c *Client) stalledRecently(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.stalls[addr]
	if ok && time.Now().After(until) {
		delete(c.stalls, addr)
		return false
	}
	return ok
}

func (c *Client) rememberLeader(h *pb.ShardHint) {
	if h == nil || h.GetAddr() == "" || h.GetNodeId() == "" {
		return
	}
	c.setLeader(target{shard: int(h.GetShard()), store: h.GetNodeId(), addr: h.GetAddr()})
}

// setLeader remembers t's store as its shard's leader.
func (c *Client) setLeader(t target) {
	if t.store == "" || t.addr == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leaders == nil {
		c.leaders = map[int]target{}
	}
	if c.leaders[t.shard] != t {
		c.leaders[t.shard] = t
	}
}

func (c *Client) forgetLeader(t target) {
	c.mu.Lock()
	if l, ok := c.leaders[t.shard]; ok && l == t {
		delete(c.leaders, t.shard)
	}
	c.mu.Unlock()
}

func (c *Client) attempt(ctx context.Context, t target, timeout time.Duration, fn attemptFunc) (any, error) {
	cc, err := c.conn(t.addr)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return fn(actx, pb.NewSessionStoreServiceClient(cc))
}

func shardHint(st *status.Status) *pb.ShardHint {
	for _, d := range st.Details() {
		if h, ok := d.(*pb.ShardHint); ok {
			return h
		}
	}
	return nil
}

func errorInfo(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

func mapStatus(what, id string, st *status.Status) error {
	var sentinel error
	switch st.Code() {
	case codes.NotFound:
		sentinel = ErrNotFound
		if ei := errorInfo(st); ei != nil {
			switch ei.GetReason() {
			case "SESSION_NOT_FOUND":
				sentinel = ErrSessionNotFound
			case "SESSION_EXPIRED":
				sentinel = ErrExpired
			}
		}
	case codes.ResourceExhausted:
		sentinel = ErrLimitExceeded
	case codes.AlreadyExists:
		sentinel = ErrAlreadyExists
	case codes.Aborted:
		sentinel = ErrVersionConflict
		if ei := errorInfo(st); ei != nil && ei.GetMetadata()["current_version"] != "" {
			return fmt.Errorf("%s session %q: %w (current version %s): %s", what, id, sentinel, ei.GetMetadata()["current_version"], st.Message())
		}
	default:
		return fmt.Errorf("%s session %q: %s: %s", what, id, st.Code(), st.Message())
	}
	return fmt.Errorf("%s session %q: %w: %s", what, id, sentinel, st.Message())
}
