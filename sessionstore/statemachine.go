package sessionstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	bolt "go.etcd.io/bbolt"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Idempotency window: a request_id is remembered for dedupWindowMs, and at
// most dedupMaxPerShard of them per shard in the shard-wide trees (the
// oldest go first); dedup.go has the per-session window of format 3.
const (
	dedupWindowMs    = 10 * 60 * 1000
	dedupMaxPerShard = 10000
	// dedupPrunePerTx bounds the pruning work done by one write.
	dedupPrunePerTx = 64
)

// Bucket layout: a shard's state lives in its own bucket (the multi-Raft
// engine's per-shard state-machine bucket, sm/ of the shard in raft.db),
// with these nested buckets. A session id and the names below it (stream,
// state key, task id) are visible ASCII, so 0x00 never occurs inside them
// and "id 0x00" prefixes exactly one session's entries.
//
//	sessions   id → proto Session, and id 0x00 request_id → the session's
//	           colocated request records (format-3 entries; dedup.go)
//	requests   id 0x00 request_id → JSON dedupEntry (shard-wide)
//	reqtime    8-byte big-endian ms, id 0x00 request_id → ""
//	reqcount   "n" → 8-byte big-endian count of requests; "colocated" →
//	           the count of colocated records in sessions
//	sessmeta   id → sessMeta (counts of the session's streams, state keys
//	           and tasks; its append tick)
//	events     id 0x00 stream 0x00 8-byte seq → 8-byte created ms + data
//	streams    id 0x00 stream → streamMeta (first, last seq, tick)
//	streamage  id 0x00 8-byte tick → stream (streams by last append)
//	state      id 0x00 key → 8-byte version + value
//	tasks      id 0x00 task_id → proto Task
//	clock      "ms" → 8-byte big-endian: the largest command time applied
//	           (the shard's clock; see applyClock)
//
// All of a shard's buckets are reached through shardTx.
const (
	bkRequests = "requests"
	bkReqTime  = "reqtime"
	bkReqCount = "reqcount"
	bkClock    = "clock"
)

// Per-shard bucket names.
const (
	bkSessions  = "sessions"
	bkSessMeta  = "sessmeta"
	bkEvents    = "events"
	bkStreams   = "streams"
	bkStreamAge = "streamage"
	bkState     = "state"
	bkTasks     = "tasks"
)

// childBuckets hold a session's entries under the "id 0x00" prefix; they
// are emptied with the session.
var childBuckets = []string{bkEvents, bkStreams, bkStreamAge, bkState, bkTasks}

// shardTx reads and writes one shard's buckets: the nested buckets of the
// shard's root bucket, in a bbolt transaction.
type shardTx struct {
	root *bolt.Bucket
}

// bucket returns the named bucket, creating it (write transactions only).
func (s shardTx) bucket(name string) (*bolt.Bucket, error) {
	return s.root.CreateBucketIfNotExists([]byte(name))
}

// existing returns the named bucket, or nil if it was never created.
func (s shardTx) existing(name string) *bolt.Bucket {
	if s.root == nil {
		return nil
	}
	return s.root.Bucket([]byte(name))
}

// dedupEntry remembers the outcome of one request. A successful create or
// compare-and-set stores the session without its data: the retry carries
// the same data (the fingerprint proves it), so the answer is rebuilt from
// it, which keeps the window small. Likewise a put of state or a task keeps
// its answer without the value, result and data.
type dedupEntry struct {
	AtMs        int64  `json:"at_ms"`
	Op          op     `json:"op"`
	Fingerprint []byte `json:"fp"`
	// Session is the proto Session (without data) of a success.
	Session []byte `json:"session,omitempty"`
	// Result is the answer of a successful append (proto
	// AppendEventsResponse), state put (proto StateEntry without value) or
	// task put (proto Task without result and data).
	Result []byte `json:"result,omitempty"`
	// Status is the google.rpc.Status of a refusal.
	Status []byte `json:"status,omitempty"`
}

func fingerprint(cmd command) []byte {
	h := sha256.New()
	var b, b8 [8]byte
	h.Write([]byte{byte(cmd.Op)})
	h.Write([]byte(cmd.ID))
	h.Write([]byte{0})
	binary.BigEndian.PutUint64(b[:], uint64(cmd.IdleTTLMs))
	h.Write(b[:])
	binary.BigEndian.PutUint64(b[:], cmd.ExpectedVersion)
	h.Write(b[:])
	h.Write(cmd.Data)
	if cmd.Op >= opAppendEvents {
		// The ops added later hash more; the older ops keep their
		// fingerprint so remembered requests stay valid across an upgrade.
		writeField := func(b []byte) {
			binary.BigEndian.PutUint64(b8[:], uint64(len(b)))
			h.Write(b8[:])
			h.Write(b)
		}
		if cmd.HasExpected {
			h.Write([]byte{1})
		} else {
			h.Write([]byte{0})
		}
		writeField([]byte(cmd.Stream))
		writeField([]byte(cmd.Key))
		binary.BigEndian.PutUint64(b8[:], uint64(len(cmd.Events)))
		h.Write(b8[:])
		for _, e := range cmd.Events {
			writeField(e)
		}
		if cmd.Task != nil {
			tb, _ := proto.MarshalOptions{Deterministic: true}.Marshal(cmd.Task)
			writeField(tb)
		}
	}
	return h.Sum(nil)
}

func expired(s *pb.Session, nowMs int64) bool {
	return s.IdleTtlMs > 0 && s.UpdatedAtUnixMs+s.IdleTtlMs < nowMs
}

// applyCommand applies cmd inside tx. It is deterministic given the stored
// state and cmd, so a replicated log can run it on every replica. The error
// is a storage failure; refusals are outcomes.
func applyCommand(root *bolt.Bucket, cmd command) (outcome, error) {
	st := shardTx{root: root}
	now, err := applyClock(st, cmd.NowMs)
	if err != nil {
		return outcome{}, err
	}
	cmd.NowMs = now
	if cmd.Op == opSweep {
		return sweep(st, cmd)
	}
	if cmd.Op == opImport {
		return importChunk(st, cmd)
	}
	// The entry's format picks the dedup layout (dedup.go): format 3
	// keeps a request's record beside its session, 1 and 2 in the
	// shard-wide trees.
	colocated := cmd.format == commandFormatColocated
	var dk []byte
	var fp []byte
	if cmd.RequestID != "" {
		if !colocated {
			// Formats 1 and 2 create the tree here, as before format 3.
			if _, err := st.bucket(bkRequests); err != nil {
				return outcome{}, err
			}
		}
		dk = append(append([]byte(cmd.ID), 0), cmd.RequestID...)
		fp = fingerprint(cmd)
		e, found, err := findRequest(st, dk, cmd.NowMs)
		if err != nil {
			return outcome{}, err
		}
		if found {
			if e.Op != cmd.Op || string(e.Fingerprint) != string(fp) {
				return outcome{Status: status.Newf(codes.InvalidArgument,
					"request_id %q was already used for a different request on session %q; use a new request_id for each operation", cmd.RequestID, cmd.ID)}, nil
			}
			return replay(e, cmd)
		}
	}
	out, err := execute(st, cmd)
	if err != nil {
		return outcome{}, err
	}
	switch {
	case cmd.RequestID != "" && colocated:
		err = rememberColocated(st, cmd, dk, fp, out)
	case cmd.RequestID != "":
		err = remember(st, cmd, dk, fp, out)
	case colocated:
		err = pruneOldHead(st, cmd.NowMs)
	}
	if err != nil {
		return outcome{}, err
	}
	return out, nil
}

// applyClock keeps the shard's clock: the time a command is applied at is
// the larger of the time its proposer stamped and the largest time applied
// before, so time never goes backwards in a shard, whichever replica
// proposed and whatever its clock says. The clock is replicated state, so
// every replica computes the same time.
func applyClock(st shardTx, nowMs int64) (int64, error) {
	b, err := st.bucket(bkClock)
	if err != nil {
		return 0, err
	}
	var last int64
	if v := b.Get([]byte("ms")); len(v) == 8 {
		last = int64(binary.BigEndian.Uint64(v))
	}
	if nowMs <= last {
		return last, nil
	}
	return nowMs, b.Put([]byte("ms"), binary.BigEndian.AppendUint64(nil, uint64(nowMs)))
}

// shardClock reads the shard's clock (0 if nothing was applied).
func shardClock(st shardTx) int64 {
	if b := st.existing(bkClock); b != nil {
		if v := b.Get([]byte("ms")); len(v) == 8 {
			return int64(binary.BigEndian.Uint64(v))
		}
	}
	return 0
}

// sweep deletes those of cmd.IDs that are expired at cmd.NowMs (the
// leader's periodic expiry, decided through the log); outcome.Swept names
// the ones deleted.
func sweep(st shardTx, cmd command) (outcome, error) {
	b, err := st.bucket(bkSessions)
	if err != nil {
		return outcome{}, err
	}
	var out outcome
	for _, id := range cmd.IDs {
		cur, err := getRecord(b, id)
		if err != nil {
			return outcome{}, err
		}
		if cur == nil || !expired(cur, cmd.NowMs) {
			continue
		}
		if err := deleteSession(st, b, id, cmd.NowMs); err != nil {
			return outcome{}, err
		}
		out.Swept = append(out.Swept, id)
	}
	return out, nil
}

// findExpired lists up to limit sessions of the shard expired at nowMs.
func findExpired(st shardTx, nowMs int64, limit int) ([]string, error) {
	b := st.existing(bkSessions)
	if b == nil {
		return nil, nil
	}
	var ids []string
	err := b.ForEach(func(k, v []byte) error {
		if len(ids) >= limit {
			return errStopScan
		}
		if isColocatedKey(k) {
			return nil
		}
		s := &pb.Session{}
		if err := proto.Unmarshal(v, s); err != nil {
			return fmt.Errorf("decode stored session %q: %w", k, err)
		}
		if expired(s, nowMs) {
			ids = append(ids, s.Id)
		}
		return nil
	})
	if errors.Is(err, errStopScan) {
		err = nil
	}
	return ids, err
}

var errStopScan = errors.New("stop scan")

func replay(e dedupEntry, cmd command) (outcome, error) {
	if e.Status != nil {
		var sp spb.Status
		if err := proto.Unmarshal(e.Status, &sp); err != nil {
			return outcome{}, fmt.Errorf("decode remembered status: %w", err)
		}
		return outcome{Status: status.FromProto(&sp)}, nil
	}
	if e.Result != nil {
		return replayResult(e, cmd)
	}
	if e.Session == nil {
		return outcome{}, nil // a delete
	}
	s := &pb.Session{}
	if err := proto.Unmarshal(e.Session, s); err != nil {
		return outcome{}, fmt.Errorf("decode remembered session: %w", err)
	}
	s.Data = cmd.Data
	return outcome{Session: s}, nil
}

// remember records the outcome of a request in the shard-wide trees
// (every request of a format 1 or 2 entry; see dedup.go for format 3).
func remember(st shardTx, cmd command, dk, fp []byte, out outcome) error {
	e, err := newDedupEntry(cmd, fp, out)
	if err != nil {
		return err
	}
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	requests, times, counts, err := sharedTrees(st)
	if err != nil {
		return err
	}
	if err := requests.Put(dk, v); err != nil {
		return err
	}
	tk := binary.BigEndian.AppendUint64(nil, uint64(cmd.NowMs))
	tk = append(tk, dk...)
	if err := times.Put(tk, nil); err != nil {
		return err
	}
	n, err := pruneOld(requests, times, getCount(counts, "n")+1, cmd.NowMs)
	if err != nil {
		return err
	}
	return counts.Put([]byte("n"), binary.BigEndian.AppendUint64(nil, n))
}

// newDedupEntry is the record of cmd's outcome.
func newDedupEntry(cmd command, fp []byte, out outcome) (dedupEntry, error) {
	e := dedupEntry{AtMs: cmd.NowMs, Op: cmd.Op, Fingerprint: fp}
	var err error
	switch {
	case out.Status != nil:
		e.Status, err = proto.Marshal(out.Status.Proto())
	case out.Session != nil:
		meta := proto.Clone(out.Session).(*pb.Session)
		meta.Data = nil
		e.Session, err = proto.Marshal(meta)
	case out.Seqs != nil:
		e.Result, err = proto.Marshal(&pb.AppendEventsResponse{Seqs: out.Seqs})
	case out.Entry != nil:
		e.Result, err = proto.Marshal(&pb.StateEntry{Key: out.Entry.Key, Version: out.Entry.Version})
	case out.Task != nil:
		meta := proto.Clone(out.Task).(*pb.Task)
		meta.Result, meta.Data = nil, nil
		e.Result, err = proto.Marshal(meta)
	}
	return e, err
}

// pruneOld forgets the oldest requests of the shard-wide trees past the
// window or over the shard's cap, at most dedupPrunePerTx of them; n is
// their count, and the new count is returned.
func pruneOld(requests, times *bolt.Bucket, n uint64, nowMs int64) (uint64, error) {
	var old [][]byte
	cur := times.Cursor()
	for k, _ := cur.First(); k != nil && len(old) < dedupPrunePerTx; k, _ = cur.Next() {
		at := int64(binary.BigEndian.Uint64(k[:8]))
		if at >= nowMs-dedupWindowMs && n-uint64(len(old)) <= dedupMaxPerShard {
			break
		}
		old = append(old, append([]byte(nil), k...))
	}
	for _, k := range old {
		if err := times.Delete(k); err != nil {
			return 0, err
		}
		if err := requests.Delete(k[8:]); err != nil {
			return 0, err
		}
	}
	return n - uint64(len(old)), nil
}

func getRecord(b *bolt.Bucket, id string) (*pb.Session, error) {
	if b == nil {
		return nil, nil
	}
	v := b.Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	s := &pb.Session{}
	if err := proto.Unmarshal(v, s); err != nil {
		return nil, fmt.Errorf("decode stored session %q: %w", id, err)
	}
	return s, nil
}

func putRecord(b *bolt.Bucket, s *pb.Session) error {
	v, err := proto.Marshal(s)
	if err != nil {
		return err
	}
	return b.Put([]byte(s.Id), v)
}

// execute applies cmd to the shard. The session must exist and be live
// for every op but create; an expired session is deleted (with its events,
// state and tasks) by whichever command finds it.
func execute(st shardTx, cmd command) (outcome, error) {
	b, err := st.bucket(bkSessions)
	if err != nil {
		return outcome{}, err
	}
	cur, err := getRecord(b, cmd.ID)
	if err != nil {
		return outcome{}, err
	}
	isExpired := cur != nil && expired(cur, cmd.NowMs)
	if isExpired {
		// Lazy expiry: the record and everything under it go now,
		// whatever the command.
		if err := deleteSession(st, b, cmd.ID, cmd.NowMs); err != nil {
			return outcome{}, err
		}
	}
	switch cmd.Op {
	case opCreate:
		if cur != nil && !isExpired {
			return outcome{Status: statusExists(cmd.ID, cur.Version)}, nil
		}
		s := &pb.Session{Id: cmd.ID, Version: 1, Data: cmd.Data, CreatedAtUnixMs: cmd.NowMs, UpdatedAtUnixMs: cmd.NowMs, IdleTtlMs: cmd.IdleTTLMs}
		if err := putRecord(b, s); err != nil {
			return outcome{}, err
		}
		return outcome{Session: s, expired: isExpired}, nil
	case opExpire:
		return outcome{expired: isExpired}, nil
	}
	if cur == nil {
		return outcome{Status: statusNotFound(cmd.ID)}, nil
	}
	if isExpired {
		return outcome{Status: statusExpired(cmd.ID), expired: true}, nil
	}
	var out outcome
	switch cmd.Op {
	case opCompareAndSet:
		if cur.Version != cmd.ExpectedVersion {
			return outcome{Status: statusConflict(cmd.ID, cmd.ExpectedVersion, cur.Version)}, nil
		}
		cur.Version++
		cur.Data = cmd.Data
		cur.UpdatedAtUnixMs = cmd.NowMs
	case opTouch:
		if cur.UpdatedAtUnixMs >= cmd.NowMs {
			return outcome{Session: cur}, nil
		}
		cur.UpdatedAtUnixMs = cmd.NowMs
	case opDelete:
		if err := deleteSession(st, b, cmd.ID, cmd.NowMs); err != nil {
			return outcome{}, err
		}
		return outcome{}, nil
	case opAppendEvents, opPutState, opDeleteState, opPutTask:
		switch cmd.Op {
		case opAppendEvents:
			out, err = appendEvents(st, cmd)
		case opPutState:
			out, err = putState(st, cmd)
		case opDeleteState:
			out, err = deleteState(st, cmd)
		case opPutTask:
			out, err = putTask(st, cmd)
		}
		if err != nil || out.Status != nil {
			return out, err
		}
		// A write to a session's events, state or tasks is activity: it
		// refreshes the idle expiry like a touch (reads of them do not).
		// The record is rewritten only once activitySlackMs has passed
		// since the last refresh, so a burst of appends does not rewrite
		// the session's data each time.
		if cmd.NowMs-cur.UpdatedAtUnixMs < activitySlack(cur) {
			return out, nil
		}
		cur.UpdatedAtUnixMs = cmd.NowMs
		return out, putRecord(b, cur)
	default:
		return outcome{}, fmt.Errorf("unknown command op %d", cmd.Op)
	}
	if err := putRecord(b, cur); err != nil {
		return outcome{}, err
	}
	return outcome{Session: cur}, nil
}

// activitySlack is how stale updated_at may get before a write to the
// session's events, state or tasks refreshes it: a tenth of the idle TTL,
// at most one second (so expiry is early by at most that).
func activitySlack(s *pb.Session) int64 {
	if s.IdleTtlMs <= 0 {
		return math.MaxInt64 // never expires: nothing to refresh
	}
	return min(s.IdleTtlMs/10, 1000)
}

// deleteSession removes the session record and everything stored under
// it; its colocated request records move to the shard-wide trees (nowMs:
// the command's time, for their window).
func deleteSession(st shardTx, sessions *bolt.Bucket, id string, nowMs int64) error {
	if err := moveSessionRequests(st, sessions, id, nowMs); err != nil {
		return err
	}
	if err := sessions.Delete([]byte(id)); err != nil {
		return err
	}
	prefix := childPrefix(id)
	for _, name := range childBuckets {
		b := st.existing(name)
		if b == nil {
			continue
		}
		if err := deletePrefix(b, prefix); err != nil {
			return err
		}
	}
	if b := st.existing(bkSessMeta); b != nil {
		return b.Delete([]byte(id))
	}
	return nil
}

// deletePrefix deletes every key of b that starts with prefix. It seeks
// again after each delete rather than stepping a cursor over deleted keys.
func deletePrefix(b *bolt.Bucket, prefix []byte) error {
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// childPrefix is "id 0x00", the prefix of a session's entries.
func childPrefix(id string) []byte {
	return append([]byte(id), 0)
}

// childKey is "id 0x00 name".
func childKey(id, name string) []byte {
	return append(childPrefix(id), name...)
}

// sessMeta counts what a session keeps, so limits are checked without
// scanning. Tick grows by one per append and orders streams by their last
// append (a counter, not a clock, so it never ties or goes back).
type sessMeta struct {
	Streams   int    `json:"streams,omitempty"`
	StateKeys int    `json:"state_keys,omitempty"`
	Tasks     int    `json:"tasks,omitempty"`
	Tick      uint64 `json:"tick,omitempty"`
}

func loadMeta(st shardTx, id string) (*bolt.Bucket, sessMeta, error) {
	b, err := st.bucket(bkSessMeta)
	if err != nil {
		return nil, sessMeta{}, err
	}
	var m sessMeta
	if v := b.Get([]byte(id)); v != nil {
		if err := json.Unmarshal(v, &m); err != nil {
			return nil, m, fmt.Errorf("decode stored counts of session %q: %w", id, err)
		}
	}
	return b, m, nil
}

func saveMeta(b *bolt.Bucket, id string, m sessMeta) error {
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return b.Put([]byte(id), v)
}

// replayResult rebuilds the answer of a remembered append or put.
func replayResult(e dedupEntry, cmd command) (outcome, error) {
	switch e.Op {
	case opAppendEvents:
		r := &pb.AppendEventsResponse{}
		if err := proto.Unmarshal(e.Result, r); err != nil {
			return outcome{}, fmt.Errorf("decode remembered append: %w", err)
		}
		return outcome{Seqs: r.Seqs}, nil
	case opPutState:
		en := &pb.StateEntry{}
		if err := proto.Unmarshal(e.Result, en); err != nil {
			return outcome{}, fmt.Errorf("decode remembered state entry: %w", err)
		}
		en.Value = cmd.Data
		return outcome{Entry: en}, nil
	case opPutTask:
		t := &pb.Task{}
		if err := proto.Unmarshal(e.Result, t); err != nil {
			return outcome{}, fmt.Errorf("decode remembered task: %w", err)
		}
		t.Result, t.Data = cmd.Task.GetResult(), cmd.Task.GetData()
		return outcome{Task: t}, nil
	}
	return outcome{}, fmt.Errorf("remembered result for op %s", e.Op)
}
