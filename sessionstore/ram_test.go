package sessionstore

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	bolt "go.etcd.io/bbolt"
)

// ramSessionsEnv gates TestStoreRAMPerSession: the number of sessions to
// store (e.g. 1000000). Unset, the test is skipped (it takes minutes and
// gigabytes of disk, so it is not part of make test; make bench runs it).
const ramSessionsEnv = "ERLMCP_STORE_RAM_SESSIONS"

// TestStoreRAMPerSession measures what one replica's state machine costs
// in memory per stored session: N sessions, each created with a request id
// and 256 bytes of data, applied through the state machine (the same
// command bytes a Raft log entry carries, the same Apply a replica runs) to
// 64 shard buckets in one bbolt file, 10,000 per transaction. The Raft log
// itself is not filled: its size is bounded per shard by compaction, not by
// the number of sessions. It reports the Go heap growth per session after a
// GC (what the process keeps for a session beyond the record, which lives
// in the bbolt file), the resident-set growth per session (which also
// counts the pages of the memory-mapped data file the kernel keeps cached,
// reclaimable under pressure), and the data file's size per session.
//
//	ERLMCP_STORE_RAM_SESSIONS=1000000 go test -run TestStoreRAMPerSession -v -timeout 60m ./sessionstore/
func TestStoreRAMPerSession(t *testing.T) {
	v := os.Getenv(ramSessionsEnv)
	if v == "" {
		t.Skipf("set %s=<sessions> (e.g. 1000000) to measure RAM per session", ramSessionsEnv)
	}
	total, err := strconv.Atoi(v)
	if err != nil || total < 20000 {
		t.Fatalf("%s=%q: want a number of sessions >= 20000", ramSessionsEnv, v)
	}
	const shards, batch, payloadSize = 64, 10000, 256
	path := filepath.Join(t.TempDir(), "sm.db")
	// No fsync: durability is not what is measured, and it would only
	// make the fill slower.
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	rs := &raftStorage{clocks: map[uint32]int64{}, wakes: map[uint32][]func(){}}
	sm := stateMachine{rs: rs}
	payload := bytes.Repeat([]byte("x"), payloadSize)
	lm := limits{EventRetention: DefaultEventRetention, MaxStreams: DefaultMaxStreamsPerSession, MaxStateKeys: MaxStateKeysPerSession, MaxTasks: MaxTasksPerSession}
	var index uint64
	fill := func(from, to int) {
		for lo := from; lo < to; lo += batch {
			err := db.Update(func(tx *bolt.Tx) error {
				for i := lo; i < min(lo+batch, to); i++ {
					sid := fmt.Sprintf("session-%08d", i)
					shard := clusterstate.ShardOf(sid, shards)
					// The newest format: its request record lies beside the session.
					data, err := encodeCommandAt(command{Op: opCreate, Shard: shard, ID: sid, Data: payload,
						RequestID: "req-" + sid, NowMs: time.Now().UnixMilli(), Limits: lm}, maxCommandFormat)
					if err != nil {
						return err
					}
					root, err := tx.CreateBucketIfNotExists(fmt.Appendf(nil, "shard/%04d", shard))
					if err != nil {
						return err
					}
					index++
					res, err := sm.Apply(root, uint32(shard), index, data)
					if err != nil {
						return err
					}
					out, err := decodeOutcome(res)
					if err != nil {
						return err
					}
					if out.Status != nil {
						return out.Status.Err()
					}
				}
				return nil
			})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
		}
	}
	// A warm-up grows the file's first mappings and the runtime's pools
	// before the baseline is taken.
	warm := total / 10
	start := time.Now()
	fill(0, warm)
	h0, r0 := heapAndRSS(t)
	fill(warm, total)
	elapsed := time.Since(start)
	h1, r1 := heapAndRSS(t)
	n := float64(total - warm)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// The record as stored: the session's key and value, its counts entry,
	// and its request-id entries (beside the session, or in the shard-wide
	// trees).
	record := 0
	sid := "session-00000001"
	if err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(fmt.Appendf(nil, "shard/%04d", clusterstate.ShardOf(sid, shards)))
		for _, name := range []string{bkSessions, bkSessMeta} {
			if bb := b.Bucket([]byte(name)); bb != nil {
				record += len(sid) + len(bb.Get([]byte(sid)))
			}
		}
		if sb := b.Bucket([]byte(bkSessions)); sb != nil {
			c := sb.Cursor()
			for k, v := c.Seek(childPrefix(sid)); k != nil && bytes.HasPrefix(k, childPrefix(sid)); k, v = c.Next() {
				record += len(k) + len(v)
			}
		}
		if rb := b.Bucket([]byte(bkRequests)); rb != nil {
			// Its dedup entry, and the same key with 8 bytes of time in reqtime.
			c := rb.Cursor()
			for k, v := c.Seek(childPrefix(sid)); k != nil && bytes.HasPrefix(k, childPrefix(sid)); k, v = c.Next() {
				record += len(k) + len(v) + 8 + len(k)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	heap, rss := float64(int64(h1)-int64(h0))/n, float64(int64(r1)-int64(r0))/n
	t.Logf("%d sessions (256 B data each) applied in %v", total, elapsed.Round(time.Second))
	t.Logf("RAM per session per replica at %d sessions: Go heap %+.0f B, RSS %+.0f B (includes cached pages of the mmapped data file); data file %.0f B per session; the stored record (session, counts, request id) is %d B",
		total, heap, rss, float64(fi.Size())/float64(total), record)
	fmt.Printf("STORE_RAM sessions=%d heap_bytes_per_session=%.0f rss_bytes_per_session=%.0f file_bytes_per_session=%.0f record_bytes=%d\n",
		total, heap, rss, float64(fi.Size())/float64(total), record)
}

// heapAndRSS returns the live Go heap after a full GC and the process's
// resident set size, in bytes.
func heapAndRSS(t *testing.T) (uint64, uint64) {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatalf("read RSS: %v", err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		t.Fatalf("parse /proc/self/statm %q: %v", b, err)
	}
	return ms.HeapAlloc, pages * uint64(os.Getpagesize())
}
