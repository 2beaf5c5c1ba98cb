package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/erlmcp/erlmcp/internal/membership"
)

// The worker death sweep. A worker that dies leaves records in the store
// that name it: in-flight requests (state key inflight/<id>, with the
// request's SSE stream) and the running tasks among them (id
// "task:<task id>"). Clients coming back find them lazily (checkOwner on a
// resumed stream, loadTask on a task read); the sweep resolves them soon
// after the death even when no client comes back, so the answer waits in
// the stream's event log for whoever resumes it:
//
//   - an in-flight request on an SSE stream gets a JSON-RPC error response
//     (CodeWorkerLost) appended to that stream; a request answered as
//     plain JSON died with its HTTP connection and has nothing to append;
//   - a running task is failed with a status message saying why;
//   - the in-flight record is removed.
//
// A server→client request (sampling, elicitation, roots) is pending only
// inside the request that sent it, so failing that request resolves it.
//
// Finding the records: each worker process (an incarnation: worker id,
// pid and start time, as in its membership value) keeps an index session
// in the store, "_erlmcp_index_<incarnation>", with one state key per
// in-flight record it wrote, and names it in etcd under
// <prefix>workerindex/<incarnation> (no lease: it must outlive the
// process). Every live worker polls that list; an incarnation whose
// membership is gone (or replaced by a restart under the same id) for
// SweepDelay is swept by the live worker with the lowest id, and its
// etcd key and index session are removed once every entry is resolved.
// SweepDelay exceeds the drain's ShutdownTimeout: a worker that drains
// leaves membership before its last requests end, and those must finish,
// not be failed.
//
// Sweep and lazy path claim a record the same way, by rewriting it at
// the version they read (compare-and-set): only the winner appends the
// error, so a resuming client gets one error, whoever wins.

// Sweep defaults.
const (
	DefaultSweepDelay    = 15 * time.Second
	DefaultSweepInterval = 5 * time.Second
)

// indexSessionPrefix starts the id of a worker's index session; such ids
// are never served as MCP sessions.
const indexSessionPrefix = "_erlmcp_index_"

// incarnationOf names one worker process.
func incarnationOf(m membership.Member) string {
	return fmt.Sprintf("%s.%d.%d", m.ID, m.PID, m.StartedAt.UnixNano())
}

func indexSessionID(incarnation string) string { return indexSessionPrefix + incarnation }

// indexEntry is the value of one index key: where the record is.
type indexEntry struct {
	Session string `json:"session"`
	Key     string `json:"key"`
}

// indexKey is the index state key of a record: a hash of the session id
// and key (state keys are visible ASCII and bounded; the entry's value
// holds the names).
func indexKey(sid, key string) string {
	sum := sha256.Sum256([]byte(sid + "\x00" + key))
	return hex.EncodeToString(sum[:16])
}

// indexTTL is the idle TTL of an index session: longer than any request
// it indexes can run.
func (h *Handler) indexTTL() time.Duration {
	return 2 * max(h.cfg.SessionIdleTTL, h.cfg.CallTimeout)
}

// indexAdd indexes a record this worker is about to write. Best effort:
// without the entry the lazy path still resolves the record.
func (h *Handler) indexAdd(ctx context.Context, sid, key string) {
	idx := indexSessionID(h.incarnation)
	val, _ := json.Marshal(indexEntry{Session: sid, Key: key})
	_, err := h.store.PutState(ctx, idx, indexKey(sid, key), val, nil)
	if errors.Is(err, ErrSessionNotFound) {
		// First entry, or the index idled out: (re)create it.
		if _, cerr := h.store.Create(ctx, idx, []byte(`{"index_of":`+jsonString(h.incarnation)+`}`), h.indexTTL()); cerr != nil && !errors.Is(cerr, ErrSessionExists) {
			err = cerr
		} else {
			_, err = h.store.PutState(ctx, idx, indexKey(sid, key), val, nil)
		}
	}
	if err != nil {
		h.log.WithError(err).Warn("could not index an in-flight record; only a returning client will resolve it if this worker dies")
	}
}

// indexDel removes a record's index entry (the record is gone).
func (h *Handler) indexDel(ctx context.Context, sid, key string) {
	err := h.store.DeleteState(ctx, indexSessionID(h.incarnation), indexKey(sid, key))
	if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrSessionNotFound) {
		h.log.WithError(err).Debug("removing an index entry")
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// errClaimed: another worker resolves the record.
var errClaimed = errors.New("the record was claimed by another worker")

// resolveOrphan resolves an in-flight record e (decoded as in) whose
// worker is gone: claim it, append the error response to its stream, fail
// its task, remove it. It returns errClaimed when another worker won the
// claim or the record changed.
func (h *Handler) resolveOrphan(ctx context.Context, sid string, e StateEntry, in inflight) error {
	version := e.Version
	if _, err := h.store.PutState(ctx, sid, e.Key, e.Value, &version); err != nil {
		if errors.Is(err, ErrVersionConflict) {
			return errClaimed
		}
		return err
	}
	msg := "the worker running this request stopped; retry it"
	if in.Stream != "" {
		body := encodeError(in.ID, errorf(CodeWorkerLost, "%s", msg))
		if _, err := h.store.AppendEvents(ctx, sid, in.Stream, body); err != nil {
			return err
		}
	}
	if tid, ok := taskOfCancelID(in.ID); ok {
		if err := h.failOrphanTask(ctx, sid, tid, in.Worker); err != nil {
			return err
		}
	}
	if err := h.store.DeleteState(ctx, sid, e.Key); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	return nil
}

// taskOfCancelID returns the task id of a task's in-flight id
// (taskCancelID).
func taskOfCancelID(id json.RawMessage) (string, bool) {
	var s string
	if json.Unmarshal(id, &s) != nil || !strings.HasPrefix(s, "task:") {
		return "", false
	}
	return strings.TrimPrefix(s, "task:"), true
}

// failOrphanTask fails a task still working under owner (a task gone
// meanwhile needs nothing).
func (h *Handler) failOrphanTask(ctx context.Context, sid, tid, owner string) error {
	err := h.updateTask(ctx, sid, tid, func(t *Task) bool {
		if terminal(t.Status) || t.Owner != owner {
			return false
		}
		t.Status, t.StatusMessage = taskFailed, "the worker running this task stopped; retry it"
		t.Data, _ = json.Marshal(errorf(CodeWorkerLost, "the worker running this task stopped; retry it"))
		return true
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// SweepResult counts what one sweep of a dead incarnation did.
type SweepResult struct {
	// Resolved records (error appended or task failed, record removed);
	// Stale index entries whose record was already gone or taken over.
	Resolved, Stale int
	// Complete: every entry was handled and the index removed.
	Complete bool
}

// SweepIncarnation resolves every in-flight record that the dead worker
// process incarnation (worker id workerID) indexed. Safe to repeat and to
// run beside the lazy path and other sweepers.
func (h *Handler) SweepIncarnation(ctx context.Context, incarnation, workerID string) (SweepResult, error) {
	var res SweepResult
	idx := indexSessionID(incarnation)
	entries, err := h.store.ListState(ctx, idx, "")
	if errors.Is(err, ErrSessionNotFound) {
		res.Complete = true // nothing was ever indexed, or already swept
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("list the index of %s: %w", incarnation, err)
	}
	var firstErr error
	for _, ie := range entries {
		var ent indexEntry
		if json.Unmarshal(ie.Value, &ent) != nil {
			_ = h.store.DeleteState(ctx, idx, ie.Key)
			continue
		}
		done, err := h.sweepEntry(ctx, ent, workerID)
		switch {
		case err != nil:
			if firstErr == nil {
				firstErr = fmt.Errorf("session %s key %s: %w", ent.Session, ent.Key, err)
			}
			continue
		case done:
			res.Resolved++
			h.metrics.swept.WithLabelValues("resolved").Inc()
		default:
			res.Stale++
			h.metrics.swept.WithLabelValues("stale").Inc()
		}
		if err := h.store.DeleteState(ctx, idx, ie.Key); err != nil && !errors.Is(err, ErrNotFound) && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return res, firstErr
	}
	if err := h.store.Delete(ctx, idx); err != nil && !errors.Is(err, ErrSessionNotFound) {
		return res, fmt.Errorf("remove the index of %s: %w", incarnation, err)
	}
	res.Complete = true
	return res, nil
}

// sweepEntry resolves one indexed record; false when there was nothing to
// resolve (gone, or now owned by a live worker, or claimed by another).
func (h *Handler) sweepEntry(ctx context.Context, ent indexEntry, workerID string) (bool, error) {
	e, err := h.store.GetState(ctx, ent.Session, ent.Key)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrSessionNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var in inflight
	if json.Unmarshal(e.Value, &in) != nil || in.Worker != workerID {
		return false, nil
	}
	err = h.resolveOrphan(ctx, ent.Session, e, in)
	if errors.Is(err, errClaimed) || errors.Is(err, ErrSessionNotFound) {
		return false, nil
	}
	return err == nil, err
}

// workerIndexKey is the etcd key naming an incarnation's index.
func workerIndexKey(prefix, incarnation string) string {
	return prefix + "workerindex/" + incarnation
}

// workerIndexValue is the JSON value of a workerindex key.
type workerIndexValue struct {
	Worker string    `json:"worker"`
	Index  string    `json:"index_session"`
	Since  time.Time `json:"since"`
}

// SweeperConfig tunes the sweep loop.
type SweeperConfig struct {
	// Delay is how long an incarnation must be out of membership before
	// it is swept (longer than a drain: ShutdownTimeout).
	Delay time.Duration
	// Interval is the poll interval of the etcd lists.
	Interval time.Duration
}

// Validate reports a setting that cannot work.
func (c SweeperConfig) Validate() error {
	if c.Delay <= 0 || c.Interval <= 0 {
		return fmt.Errorf("sweep delay %s and interval %s must be positive", c.Delay, c.Interval)
	}
	return nil
}

// RunSweeper names this process's index in etcd (self is its membership
// value, as registered; retried until etcd takes it) and, until ctx ends,
// sweeps dead incarnations (see above). It returns nil when ctx ends, or
// an error at once for a bad configuration.
func (h *Handler) RunSweeper(ctx context.Context, cli *clientv3.Client, prefix string, self membership.Member, cfg SweeperConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	inc := incarnationOf(self)
	if inc != h.incarnation {
		return fmt.Errorf("sweeper for %s on a handler of incarnation %s", inc, h.incarnation)
	}
	val, _ := json.Marshal(workerIndexValue{Worker: self.ID, Index: indexSessionID(inc), Since: self.StartedAt})
	named := false
	deadSince := map[string]time.Time{}
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		if !named {
			// Until etcd takes it, this worker's own death goes unswept
			// (the lazy path still answers returning clients).
			pctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
			_, err := cli.Put(pctx, workerIndexKey(prefix, inc), string(val))
			cancel()
			if named = err == nil; !named && ctx.Err() == nil {
				h.log.WithError(err).Warn("could not name this worker's in-flight index in etcd; retrying")
			}
		}
		h.sweepOnce(ctx, cli, prefix, self.ID, cfg.Delay, deadSince)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// sweepOnce is one level-triggered pass: list the indexes and the live
// workers, sweep those dead for delay when this worker is the lowest live
// id.
func (h *Handler) sweepOnce(ctx context.Context, cli *clientv3.Client, prefix, self string, delay time.Duration, deadSince map[string]time.Time) {
	lctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	resp, err := cli.Get(lctx, prefix+"workerindex/", clientv3.WithPrefix())
	if err != nil {
		h.log.WithError(err).Debug("sweep: listing worker indexes")
		return
	}
	members, err := membership.List(lctx, cli, prefix, membership.RoleWorker)
	if err != nil {
		h.log.WithError(err).Debug("sweep: listing workers")
		return
	}
	live := map[string]bool{}
	var ids []string
	for _, m := range members {
		live[incarnationOf(m)] = true
		ids = append(ids, m.ID)
	}
	sort.Strings(ids)
	if len(ids) == 0 || ids[0] != self {
		return // the lowest live worker sweeps; the others stand by
	}
	seen := map[string]bool{}
	for _, kv := range resp.Kvs {
		inc := strings.TrimPrefix(string(kv.Key), prefix+"workerindex/")
		seen[inc] = true
		if live[inc] || inc == h.incarnation {
			delete(deadSince, inc)
			continue
		}
		since, ok := deadSince[inc]
		if !ok {
			deadSince[inc] = time.Now()
			continue
		}
		if time.Since(since) < delay {
			continue
		}
		var v workerIndexValue
		if json.Unmarshal(kv.Value, &v) != nil {
			continue
		}
		h.sweepDead(ctx, cli, prefix, inc, v.Worker, kv.ModRevision)
	}
	for inc := range deadSince {
		if !seen[inc] {
			delete(deadSince, inc)
		}
	}
}

// sweepTimeout bounds one incarnation's sweep.
const sweepTimeout = time.Minute

// sweepDead sweeps one dead incarnation and, when complete, removes its
// etcd key (only if unchanged since listed).
func (h *Handler) sweepDead(ctx context.Context, cli *clientv3.Client, prefix, inc, worker string, rev int64) {
	sctx, cancel := context.WithTimeout(ctx, sweepTimeout)
	defer cancel()
	start := time.Now()
	res, err := h.SweepIncarnation(sctx, inc, worker)
	log := h.log.WithFields(logrus.Fields{"dead_worker": worker, "incarnation": inc, "resolved": res.Resolved,
		"stale": res.Stale, "duration": time.Since(start)})
	if err != nil {
		h.metrics.sweeps.WithLabelValues("error").Inc()
		log.WithError(err).Warn("sweep of a dead worker's in-flight records incomplete; retrying on the next pass")
		return
	}
	key := workerIndexKey(prefix, inc)
	if _, err := cli.Txn(sctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(clientv3.OpDelete(key)).Commit(); err != nil {
		log.WithError(err).Warn("sweep done; could not remove the worker index key (the next pass finds the index empty)")
	}
	h.metrics.sweeps.WithLabelValues("complete").Inc()
	if res.Resolved > 0 {
		log.Warn("swept a dead worker: its in-flight requests answered with errors, its tasks failed")
	} else {
		log.Info("swept a dead worker: nothing was in flight")
	}
}
