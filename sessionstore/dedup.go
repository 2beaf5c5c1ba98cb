package sessionstore

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Colocated retry-dedup records (entries of commandFormatColocated).
//
// The shard-wide layout (requests, reqtime, reqcount; see statemachine.go)
// makes every write with a request id dirty two trees besides the session's
// own: a third of a create's CPU and half the pages the applier writes
// (docs/benchmarks.md, "Where a write's CPU goes"). A format-3 entry keeps
// the record of a request whose session exists after it in the sessions
// bucket itself, under "id 0x00 request_id": a session id is visible ASCII,
// so that key sorts right after the session's own and lands on the leaf
// the write dirties anyway. Every scan of sessions skips keys holding a
// 0x00 (isColocatedKey).
//
// The window is kept per session instead of per shard: a record older than
// dedupWindowMs by the shard's clock is ignored on lookup, and a session
// keeps at most dedupMaxPerSession records; both are pruned when the
// session next records a request. Only replicated state (the shard clock,
// the stored at_ms) decides, so every replica forgets the same requests.
//
// A request must still get its first answer after its session is gone, as
// before: deleteSession moves the session's records into the shard-wide
// trees (with their time, so they leave with the shard-wide window), and a
// request whose session does not exist after it (a delete, a refusal for a
// missing or expired session) is recorded there directly. Those trees keep
// their pruning, and a format-3 write also prunes their expired head, so
// they drain once every write is format 3.
const (
	// dedupMaxPerSession bounds the colocated records of one session (the
	// oldest go first): a client retries a request within seconds, and
	// more than this many writes to one session in flight at once would
	// be unusual.
	dedupMaxPerSession = 32
	// colocatedV1 is the first byte of a colocated record's value, so a
	// later layout can be told apart.
	colocatedV1 = 1
	// reqCountColocated is the key, in reqcount, of the number of
	// colocated records in sessions (8-byte big-endian), so the sessions
	// are counted without a scan (metrics.go).
	reqCountColocated = "colocated"
)

// isColocatedKey reports whether a key of the sessions bucket is a
// colocated request record rather than a session.
func isColocatedKey(k []byte) bool { return bytes.IndexByte(k, 0) >= 0 }

// Colocated record layout: 0x01 | at_ms 8-byte big-endian | op u8 | bytes
// Fingerprint, Session, Result, Status (codec.go's bytes: uvarint length+1,
// 0 for nil). The time is at a fixed place so pruning reads it without
// decoding the rest. Empty Session, Result and Status are stored as nil,
// as the JSON form's omitempty does, so a record replays the same answer
// in either form.
func encodeColocated(e dedupEntry) []byte {
	enc := encoder{b: make([]byte, 0, 48+len(e.Fingerprint)+len(e.Session)+len(e.Result)+len(e.Status))}
	enc.b = append(enc.b, colocatedV1)
	enc.b = binary.BigEndian.AppendUint64(enc.b, uint64(e.AtMs))
	enc.b = append(enc.b, byte(e.Op))
	enc.bytes(e.Fingerprint)
	enc.bytes(nilIfEmpty(e.Session))
	enc.bytes(nilIfEmpty(e.Result))
	enc.bytes(nilIfEmpty(e.Status))
	return enc.b
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

func decodeColocated(v []byte) (dedupEntry, error) {
	at, err := colocatedAt(v)
	if err != nil {
		return dedupEntry{}, err
	}
	d := decoder{b: v[9:]}
	e := dedupEntry{AtMs: at, Op: op(d.byte1())}
	e.Fingerprint = d.bytes()
	e.Session = d.bytes()
	e.Result = d.bytes()
	e.Status = d.bytes()
	return e, d.end()
}

// colocatedAt reads the time of a colocated record.
func colocatedAt(v []byte) (int64, error) {
	if len(v) < 9 || v[0] != colocatedV1 {
		return 0, fmt.Errorf("not a colocated request record (%d bytes, version %v)", len(v), v[:min(len(v), 1)])
	}
	return int64(binary.BigEndian.Uint64(v[1:9])), nil
}

// findRequest looks up the remembered outcome of request key dk ("id 0x00
// request_id"): the session's colocated record first (unless past the
// window), then the shard-wide requests tree. Formats 1 and 2 look it up
// the same way: colocated records exist only once format-3 entries were
// applied, when no replica of an older build remains (it would have
// stopped at the first one), and a format-2 retry proposed by a node that
// had not seen the switch yet must still find its request.
func findRequest(st shardTx, dk []byte, nowMs int64) (dedupEntry, bool, error) {
	if b := st.existing(bkSessions); b != nil {
		if v := b.Get(dk); v != nil {
			e, err := decodeColocated(v)
			if err != nil {
				return dedupEntry{}, false, fmt.Errorf("decode remembered request %q: %w", dk, err)
			}
			if e.AtMs >= nowMs-dedupWindowMs {
				return e, true, nil
			}
		}
	}
	if b := st.existing(bkRequests); b != nil {
		if v := b.Get(dk); v != nil {
			var e dedupEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return dedupEntry{}, false, fmt.Errorf("decode remembered request %q: %w", dk, err)
			}
			return e, true, nil
		}
	}
	return dedupEntry{}, false, nil
}

// rememberColocated records the outcome of a format-3 command: beside its
// session if the session exists after it, else in the shard-wide trees.
func rememberColocated(st shardTx, cmd command, dk, fp []byte, out outcome) error {
	sessions := st.existing(bkSessions)
	if sessions == nil || sessions.Get([]byte(cmd.ID)) == nil {
		return remember(st, cmd, dk, fp, out)
	}
	e, err := newDedupEntry(cmd, fp, out)
	if err != nil {
		return err
	}
	added := int64(1)
	if sessions.Get(dk) != nil {
		added = 0 // a record past the window, replaced
	}
	if err := sessions.Put(dk, encodeColocated(e)); err != nil {
		return err
	}
	removed, err := pruneSessionRequests(sessions, cmd.ID, dk, cmd.NowMs)
	if err != nil {
		return err
	}
	if err := addColocated(st, added-int64(removed)); err != nil {
		return err
	}
	return pruneOldHead(st, cmd.NowMs)
}

// pruneSessionRequests deletes the session's colocated records past the
// window, and the oldest (by time, then key) beyond dedupMaxPerSession,
// never the one just written (keep): a burst in one millisecond must not
// forget the request it records. It returns how many it deleted.
func pruneSessionRequests(sessions *bolt.Bucket, id string, keep []byte, nowMs int64) (int, error) {
	type rec struct {
		k  []byte // bbolt's, valid for the transaction: nothing is written between the scan and the deletes
		at int64
	}
	// A session holds at most dedupMaxPerSession records after each write,
	// so this is one more than that in the steady state: on the stack.
	var buf [dedupMaxPerSession + 1]rec
	recs := buf[:0]
	cutoff := nowMs - dedupWindowMs
	past := 0
	prefix := childPrefix(id)
	c := sessions.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if bytes.Equal(k, keep) {
			continue
		}
		at, err := colocatedAt(v)
		if err != nil {
			return 0, fmt.Errorf("remembered request %q: %w", k, err)
		}
		if at < cutoff {
			past++
		}
		recs = append(recs, rec{k: k, at: at})
	}
	// The oldest by time, ties in key order (the cursor's): the
	// records over the limit, and all past the window (a prefix of that
	// order, since their times are the smallest).
	drop := max(len(recs)-(dedupMaxPerSession-1), past)
	if drop == 0 {
		return 0, nil
	}
	if drop < len(recs) {
		// Stable: equal times stay in key order.
		slices.SortStableFunc(recs, func(a, b rec) int { return cmp.Compare(a.at, b.at) })
	}
	for _, r := range recs[:drop] {
		if err := sessions.Delete(r.k); err != nil {
			return 0, err
		}
	}
	return drop, nil
}

// moveSessionRequests moves the colocated records of session id into the
// shard-wide trees (deleteSession: the session goes, its requests' answers
// stay for the rest of their window). Records already past the window are
// dropped; a request the shard-wide tree already holds keeps that record.
func moveSessionRequests(st shardTx, sessions *bolt.Bucket, id string, nowMs int64) error {
	prefix := childPrefix(id)
	var keys, vals [][]byte
	c := sessions.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		keys, vals = append(keys, bytes.Clone(k)), append(vals, bytes.Clone(v))
	}
	if len(keys) == 0 {
		return nil
	}
	requests, times, counts, err := sharedTrees(st)
	if err != nil {
		return err
	}
	n := getCount(counts, "n")
	for i, k := range keys {
		if err := sessions.Delete(k); err != nil {
			return err
		}
		e, err := decodeColocated(vals[i])
		if err != nil {
			return fmt.Errorf("move remembered request %q: %w", k, err)
		}
		if e.AtMs < nowMs-dedupWindowMs || requests.Get(k) != nil {
			continue
		}
		v, err := json.Marshal(e)
		if err != nil {
			return err
		}
		if err := requests.Put(k, v); err != nil {
			return err
		}
		if err := times.Put(append(binary.BigEndian.AppendUint64(nil, uint64(e.AtMs)), k...), nil); err != nil {
			return err
		}
		n++
	}
	if err := addColocated(st, -int64(len(keys))); err != nil {
		return err
	}
	n, err = pruneOld(requests, times, n, nowMs)
	if err != nil {
		return err
	}
	return counts.Put([]byte("n"), binary.BigEndian.AppendUint64(nil, n))
}

// pruneOldHead prunes the shard-wide trees' records past the window, so
// they drain when only format-3 writes come. When nothing is due it only
// reads the first key of reqtime. (Their cap needs no check here: only
// remember and moveSessionRequests add records, and both prune to it.)
func pruneOldHead(st shardTx, nowMs int64) error {
	times := st.existing(bkReqTime)
	if times == nil {
		return nil
	}
	k, _ := times.Cursor().First()
	if k == nil || int64(binary.BigEndian.Uint64(k[:8])) >= nowMs-dedupWindowMs {
		return nil
	}
	requests, times, counts, err := sharedTrees(st)
	if err != nil {
		return err
	}
	n, err := pruneOld(requests, times, getCount(counts, "n"), nowMs)
	if err != nil {
		return err
	}
	return counts.Put([]byte("n"), binary.BigEndian.AppendUint64(nil, n))
}

// addColocated adds delta to the count of colocated records.
func addColocated(st shardTx, delta int64) error {
	if delta == 0 {
		return nil
	}
	counts, err := st.bucket(bkReqCount)
	if err != nil {
		return err
	}
	n := int64(getCount(counts, reqCountColocated)) + delta
	if n < 0 {
		return fmt.Errorf("count of remembered requests beside sessions went below zero (%d): the shard's state is inconsistent", n)
	}
	return counts.Put([]byte(reqCountColocated), binary.BigEndian.AppendUint64(nil, uint64(n)))
}

// getCount reads an 8-byte big-endian count of b (0 if absent).
func getCount(b *bolt.Bucket, key string) uint64 {
	if b == nil {
		return 0
	}
	if v := b.Get([]byte(key)); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// colocatedCount is the number of colocated records in the shard's
// sessions bucket (for counting sessions without a scan).
func colocatedCount(st shardTx) uint64 {
	return getCount(st.existing(bkReqCount), reqCountColocated)
}

// sharedTrees opens the shard-wide request trees, creating them.
func sharedTrees(st shardTx) (requests, times, counts *bolt.Bucket, err error) {
	if requests, err = st.bucket(bkRequests); err != nil {
		return nil, nil, nil, err
	}
	if times, err = st.bucket(bkReqTime); err != nil {
		return nil, nil, nil, err
	}
	counts, err = st.bucket(bkReqCount)
	return requests, times, counts, err
}
