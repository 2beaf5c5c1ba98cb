package sessionstore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	bolt "go.etcd.io/bbolt"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Idempotency window: a request_id is remembered for dedupWindowMs, and at
// most dedupMaxPerShard of them per shard (the oldest go first).
const (
	dedupWindowMs    = 10 * 60 * 1000
	dedupMaxPerShard = 10000
	// dedupPrunePerTx bounds the pruning work done by one write.
	dedupPrunePerTx = 64
)

// Bucket layout: one set of top-level buckets per shard, so a shard's data
// can later be snapshotted or moved on its own.
//
//	shard/<nnnn>/sessions  id → proto Session
//	shard/<nnnn>/requests  id 0x00 request_id → JSON dedupEntry
//	shard/<nnnn>/reqtime   8-byte big-endian ms, id 0x00 request_id → ""
//	shard/<nnnn>/reqcount  "n" → 8-byte big-endian count of requests
func sessionsBucket(shard int) []byte { return fmt.Appendf(nil, "shard/%04d/sessions", shard) }
func requestsBucket(shard int) []byte { return fmt.Appendf(nil, "shard/%04d/requests", shard) }
func reqtimeBucket(shard int) []byte  { return fmt.Appendf(nil, "shard/%04d/reqtime", shard) }
func reqcountBucket(shard int) []byte { return fmt.Appendf(nil, "shard/%04d/reqcount", shard) }

// dedupEntry remembers the outcome of one request. A successful create or
// compare-and-set stores the session without its data: the retry carries
// the same data (the fingerprint proves it), so the answer is rebuilt from
// it, which keeps the window small.
type dedupEntry struct {
	AtMs        int64  `json:"at_ms"`
	Op          op     `json:"op"`
	Fingerprint []byte `json:"fp"`
	// Session is the proto Session (without data) of a success.
	Session []byte `json:"session,omitempty"`
	// Status is the google.rpc.Status of a refusal.
	Status []byte `json:"status,omitempty"`
}

func fingerprint(cmd command) []byte {
	h := sha256.New()
	var b [8]byte
	h.Write([]byte{byte(cmd.Op)})
	h.Write([]byte(cmd.ID))
	h.Write([]byte{0})
	binary.BigEndian.PutUint64(b[:], uint64(cmd.IdleTTLMs))
	h.Write(b[:])
	binary.BigEndian.PutUint64(b[:], cmd.ExpectedVersion)
	h.Write(b[:])
	h.Write(cmd.Data)
	return h.Sum(nil)
}

func expired(s *pb.Session, nowMs int64) bool {
	return s.IdleTtlMs > 0 && s.UpdatedAtUnixMs+s.IdleTtlMs < nowMs
}

// applyCommand applies cmd inside tx. It is deterministic given the stored
// state and cmd, so a replicated log can run it on every replica. The error
// is a storage failure; refusals are outcomes.
func applyCommand(tx *bolt.Tx, cmd command) (outcome, error) {
	sessions, err := tx.CreateBucketIfNotExists(sessionsBucket(cmd.Shard))
	if err != nil {
		return outcome{}, err
	}
	var dk []byte
	var fp []byte
	if cmd.RequestID != "" {
		requests, err := tx.CreateBucketIfNotExists(requestsBucket(cmd.Shard))
		if err != nil {
			return outcome{}, err
		}
		dk = append(append([]byte(cmd.ID), 0), cmd.RequestID...)
		fp = fingerprint(cmd)
		if v := requests.Get(dk); v != nil {
			var e dedupEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return outcome{}, fmt.Errorf("decode remembered request %q: %w", cmd.RequestID, err)
			}
			if e.Op != cmd.Op || string(e.Fingerprint) != string(fp) {
				return outcome{Status: status.Newf(codes.InvalidArgument,
					"request_id %q was already used for a different request on session %q; use a new request_id for each operation", cmd.RequestID, cmd.ID)}, nil
			}
			return replay(e, cmd)
		}
	}
	out, err := execute(sessions, cmd)
	if err != nil {
		return outcome{}, err
	}
	if cmd.RequestID != "" {
		if err := remember(tx, cmd, dk, fp, out); err != nil {
			return outcome{}, err
		}
	}
	return out, nil
}

func replay(e dedupEntry, cmd command) (outcome, error) {
	if e.Status != nil {
		var sp spb.Status
		if err := proto.Unmarshal(e.Status, &sp); err != nil {
			return outcome{}, fmt.Errorf("decode remembered status: %w", err)
		}
		return outcome{Status: status.FromProto(&sp)}, nil
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

func remember(tx *bolt.Tx, cmd command, dk, fp []byte, out outcome) error {
	e := dedupEntry{AtMs: cmd.NowMs, Op: cmd.Op, Fingerprint: fp}
	var err error
	switch {
	case out.Status != nil:
		e.Status, err = proto.Marshal(out.Status.Proto())
	case out.Session != nil:
		meta := proto.Clone(out.Session).(*pb.Session)
		meta.Data = nil
		e.Session, err = proto.Marshal(meta)
	}
	if err != nil {
		return err
	}
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	requests := tx.Bucket(requestsBucket(cmd.Shard))
	times, err := tx.CreateBucketIfNotExists(reqtimeBucket(cmd.Shard))
	if err != nil {
		return err
	}
	counts, err := tx.CreateBucketIfNotExists(reqcountBucket(cmd.Shard))
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
	var n uint64
	if c := counts.Get([]byte("n")); len(c) == 8 {
		n = binary.BigEndian.Uint64(c)
	}
	n++
	// Forget the oldest requests past the window or over the cap.
	var old [][]byte
	cur := times.Cursor()
	for k, _ := cur.First(); k != nil && len(old) < dedupPrunePerTx; k, _ = cur.Next() {
		at := int64(binary.BigEndian.Uint64(k[:8]))
		if at >= cmd.NowMs-dedupWindowMs && n-uint64(len(old)) <= dedupMaxPerShard {
			break
		}
		old = append(old, append([]byte(nil), k...))
	}
	for _, k := range old {
		if err := times.Delete(k); err != nil {
			return err
		}
		if err := requests.Delete(k[8:]); err != nil {
			return err
		}
	}
	n -= uint64(len(old))
	return counts.Put([]byte("n"), binary.BigEndian.AppendUint64(nil, n))
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

func execute(b *bolt.Bucket, cmd command) (outcome, error) {
	cur, err := getRecord(b, cmd.ID)
	if err != nil {
		return outcome{}, err
	}
	isExpired := cur != nil && expired(cur, cmd.NowMs)
	if isExpired && cmd.Op != opCreate {
		// Lazy expiry: the record goes now, whatever the command.
		if err := b.Delete([]byte(cmd.ID)); err != nil {
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
		return outcome{Session: s}, nil
	case opExpire:
		return outcome{}, nil
	}
	if cur == nil {
		return outcome{Status: statusNotFound(cmd.ID)}, nil
	}
	if isExpired {
		return outcome{Status: statusExpired(cmd.ID)}, nil
	}
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
		if err := b.Delete([]byte(cmd.ID)); err != nil {
			return outcome{}, err
		}
		return outcome{}, nil
	default:
		return outcome{}, fmt.Errorf("unknown command op %d", cmd.Op)
	}
	if err := putRecord(b, cur); err != nil {
		return outcome{}, err
	}
	return outcome{Session: cur}, nil
}
