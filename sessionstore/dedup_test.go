package sessionstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
)

// at applies cmd as a log entry of the given format would be applied: its
// bytes encoded and decoded, so the apply sees the format the entry had.
// It also checks the count of colocated records against the keys.
func (e *smEnv) at(format byte, cmd command) outcome {
	e.t.Helper()
	cmd.Limits = e.lm
	b, err := encodeCommandAt(cmd, format)
	if err != nil {
		e.t.Fatal(err)
	}
	dec, err := decodeCommand(b)
	if err != nil {
		e.t.Fatal(err)
	}
	if dec.format != format {
		e.t.Fatalf("decoded format %d, want %d", dec.format, format)
	}
	out, err := e.bs.apply(context.Background(), dec)
	if err != nil {
		e.t.Fatalf("%s: %v", cmd.Op, err)
	}
	e.checkColocatedCount()
	return out
}

func (e *smEnv) v3(cmd command) outcome { e.t.Helper(); return e.at(commandFormatColocated, cmd) }

// keys lists the keys of a bucket of shard 0 (nil if it does not exist).
func (e *smEnv) keys(bucket string) []string {
	var out []string
	_ = e.bs.db.View(func(tx *bolt.Tx) error {
		if b := (shardTx{root: tx.Bucket(shardRoot(0))}).existing(bucket); b != nil {
			return b.ForEach(func(k, _ []byte) error {
				out = append(out, string(k))
				return nil
			})
		}
		return nil
	})
	return out
}

// colocated lists the request ids kept beside session id.
func (e *smEnv) colocated(id string) []string {
	var out []string
	for _, k := range e.keys(bkSessions) {
		if rest, ok := bytes.CutPrefix([]byte(k), childPrefix(id)); ok {
			out = append(out, string(rest))
		}
	}
	return out
}

// shared reports whether the shard-wide requests tree holds request rid
// of session id.
func (e *smEnv) shared(id, rid string) bool {
	return slices.Contains(e.keys(bkRequests), string(childKey(id, rid)))
}

func (e *smEnv) checkColocatedCount() {
	e.t.Helper()
	n := 0
	for _, k := range e.keys(bkSessions) {
		if isColocatedKey([]byte(k)) {
			n++
		}
	}
	var got uint64
	_ = e.bs.view(context.Background(), 0, func(st shardTx) error {
		got = colocatedCount(st)
		return nil
	})
	if got != uint64(n) {
		e.t.Fatalf("count of colocated records %d, the sessions bucket holds %d", got, n)
	}
}

// same reports whether two outcomes are the same answer.
func same(t *testing.T, a, b outcome) bool {
	t.Helper()
	ea, err := encodeOutcome(a)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := encodeOutcome(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ea, eb)
}

var dedupLimits = limits{EventRetention: 100, MaxStreams: 10, MaxStateKeys: 100, MaxTasks: 100}

// TestColocatedRetryReplaysFirstAnswer: a retried format-3 request is
// answered with its first outcome, after later writes, without applying it
// again; its record lies beside its session (in the shard-wide tree when
// the session is gone after it); the same request_id for a different
// request is refused.
func TestColocatedRetryReplaysFirstAnswer(t *testing.T) {
	cases := []struct {
		name string
		cmd  command
		// other is a different request under the same request_id.
		other command
		// beside: the record is kept beside the session.
		beside bool
	}{
		{"create", command{Op: opCreate, ID: "new", Data: []byte("d"), IdleTTLMs: 60000},
			command{Op: opCreate, ID: "new", Data: []byte("other")}, true},
		{"create existing", command{Op: opCreate, ID: "s"},
			command{Op: opCreate, ID: "s", Data: []byte("x")}, true},
		{"cas", command{Op: opCompareAndSet, ID: "s", ExpectedVersion: 1, HasExpected: true, Data: []byte("v2")},
			command{Op: opCompareAndSet, ID: "s", ExpectedVersion: 1, HasExpected: true, Data: []byte("v3")}, true},
		{"cas conflict", command{Op: opCompareAndSet, ID: "s", ExpectedVersion: 7, HasExpected: true},
			command{Op: opCompareAndSet, ID: "s", ExpectedVersion: 8, HasExpected: true}, true},
		{"cas missing", command{Op: opCompareAndSet, ID: "none", ExpectedVersion: 1, HasExpected: true},
			command{Op: opCompareAndSet, ID: "none", ExpectedVersion: 2, HasExpected: true}, false},
		{"append", command{Op: opAppendEvents, ID: "s", Stream: "a", Events: [][]byte{{1}, {2}}},
			command{Op: opAppendEvents, ID: "s", Stream: "a", Events: [][]byte{{1}}}, true},
		{"put state", command{Op: opPutState, ID: "s", Key: "k", Data: []byte("v")},
			command{Op: opPutState, ID: "s", Key: "k", Data: []byte("w")}, true},
		{"delete state", command{Op: opDeleteState, ID: "s", Key: "k"},
			command{Op: opDeleteState, ID: "s", Key: "k2"}, true},
		{"put task", command{Op: opPutTask, ID: "s", Task: &pb.Task{TaskId: "t", Result: []byte("res")}},
			command{Op: opPutTask, ID: "s", Task: &pb.Task{TaskId: "t", Result: []byte("other")}}, true},
		{"delete", command{Op: opDelete, ID: "s"},
			command{Op: opCreate, ID: "s"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newSM(t, dedupLimits)
			e.v3(command{Op: opCreate, ID: "s", RequestID: "c0", NowMs: 1000})
			e.v3(command{Op: opPutState, ID: "s", Key: "k", RequestID: "k0", NowMs: 1000})
			c.cmd.RequestID, c.cmd.NowMs = "r", 1001
			first := e.v3(c.cmd)
			// A later write changes what the request would do now.
			if c.cmd.ID == "s" && c.cmd.Op != opDelete {
				if out := e.v3(command{Op: opCompareAndSet, ID: "s", ExpectedVersion: first.Session.GetVersion(), HasExpected: true,
					RequestID: "later", NowMs: 1002}); c.cmd.Op == opCompareAndSet && first.Status == nil && out.Status != nil {
					t.Fatal(out.err())
				}
				e.v3(command{Op: opPutState, ID: "s", Key: "k", Data: []byte("later"), RequestID: "later2", NowMs: 1002})
			}
			before := e.keysUnder("s")
			retry := c.cmd
			retry.NowMs = 5000
			again := e.v3(retry)
			if !same(t, first, again) {
				t.Fatalf("retry answered %+v (%v), first %+v (%v)", again, again.err(), first, first.err())
			}
			if after := e.keysUnder("s"); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("the retry changed the session's entries: %v, before %v", after, before)
			}
			if got := e.colocated(c.cmd.ID); slices.Contains(got, "r") != c.beside {
				t.Fatalf("records beside %q: %v; want r there: %v", c.cmd.ID, got, c.beside)
			}
			if got := e.shared(c.cmd.ID, "r"); got == c.beside {
				t.Fatalf("record in the shard-wide tree: %v, want %v", got, !c.beside)
			}
			c.other.RequestID, c.other.NowMs = "r", 5001
			if out := e.v3(c.other); out.Status.Code() != codes.InvalidArgument {
				t.Fatalf("request_id reused for another request: %v", out.err())
			}
		})
	}
}

// TestColocatedRetryAfterDelete: a session's records move to the
// shard-wide trees when it is deleted, swept or found expired, so a retry
// after that still gets its first answer, and nothing is left beside it.
func TestColocatedRetryAfterDelete(t *testing.T) {
	for _, how := range []string{"delete", "sweep", "lazy expiry"} {
		t.Run(how, func(t *testing.T) {
			e := newSM(t, dedupLimits)
			create := command{Op: opCreate, ID: "s", Data: []byte("d"), IdleTTLMs: 1000, RequestID: "c", NowMs: 1000}
			cas := command{Op: opCompareAndSet, ID: "s", ExpectedVersion: 1, HasExpected: true, Data: []byte("v2"), RequestID: "cas", NowMs: 1001}
			put := command{Op: opPutState, ID: "s", Key: "k", Data: []byte("v"), RequestID: "put", NowMs: 1002}
			first := []outcome{e.v3(create), e.v3(cas), e.v3(put)}
			if got := e.colocated("s"); len(got) != 3 {
				t.Fatalf("beside the session: %v", got)
			}
			switch how {
			case "delete":
				if out := e.v3(command{Op: opDelete, ID: "s", RequestID: "del", NowMs: 1003}); out.Status != nil {
					t.Fatal(out.err())
				}
			case "sweep":
				if out := e.v3(command{Op: opSweep, IDs: []string{"s"}, NowMs: 3000}); len(out.Swept) != 1 {
					t.Fatalf("swept %v", out.Swept)
				}
			case "lazy expiry":
				if out := e.v3(command{Op: opExpire, ID: "s", NowMs: 3000}); !out.expired {
					t.Fatal("not expired")
				}
			}
			if got := e.colocated("s"); len(got) != 0 || slices.Contains(e.keys(bkSessions), "s") {
				t.Fatalf("left in sessions: %v", e.keys(bkSessions))
			}
			for i, cmd := range []command{create, cas, put} {
				cmd.NowMs = 4000
				if again := e.v3(cmd); !same(t, first[i], again) {
					t.Fatalf("%s after %s: %+v (%v), first %+v", cmd.Op, how, again, again.err(), first[i])
				}
				if !e.shared("s", cmd.RequestID) {
					t.Fatalf("%s not in the shard-wide tree", cmd.RequestID)
				}
			}
			if slices.Contains(e.keys(bkSessions), "s") {
				t.Fatal("the retried create made the session again")
			}
			// The moved records keep their time: they leave with the
			// shard-wide window.
			e.v3(command{Op: opCreate, ID: "x", RequestID: "x", NowMs: 1002 + dedupWindowMs + 1})
			for _, rid := range []string{"c", "cas", "put"} {
				if e.shared("s", rid) {
					t.Fatalf("%s still in the shard-wide tree after its window: %q", rid, e.keys(bkRequests))
				}
			}
		})
	}
}

// TestColocatedWindowPerSession: a session keeps at most
// dedupMaxPerSession records, the oldest (by time, then key) forgotten
// first but never the one just written, and records past the window are
// ignored and then pruned; every replica forgets the same.
func TestColocatedWindowPerSession(t *testing.T) {
	beside := func(rids ...string) string {
		want := []string{"s"}
		for _, r := range rids {
			want = append(want, string(childKey("s", r)))
		}
		return fmt.Sprintf("%q", want)
	}
	pRange := func(from, to int) []string {
		var out []string
		for i := from; i <= to; i++ {
			out = append(out, fmt.Sprintf("p%02d", i))
		}
		return out
	}
	t.Run("oldest first", func(t *testing.T) {
		run := func(t *testing.T) *smEnv {
			e := newSM(t, dedupLimits)
			e.v3(command{Op: opCreate, ID: "s", RequestID: "c", NowMs: 1000})
			// 39 puts, in pairs sharing a millisecond, their ids in
			// reverse order within each pair: p01 p00 @1001, p03 p02
			// @1002, ..., p39 @1020.
			for i := range 39 {
				e.v3(command{Op: opPutState, ID: "s", Key: "k", RequestID: fmt.Sprintf("p%02d", i^1), NowMs: int64(1001 + i/2)})
			}
			return e
		}
		e := run(t)
		// 40 records, 8 forgotten: the create (1000), p00..p05
		// (1001..1003) and, of p06 and p07 (1004), p06 by its key.
		got := fmt.Sprintf("%q", e.keys(bkSessions))
		if want := beside(append(pRange(7, 37), "p39")...); got != want {
			t.Fatalf("kept %s\nwant %s", got, want)
		}
		if again := fmt.Sprintf("%q", run(t).keys(bkSessions)); again != got {
			t.Fatalf("a second replica kept %s, the first %s", again, got)
		}
		put := func(rid string, now int64) uint64 {
			out := e.v3(command{Op: opPutState, ID: "s", Key: "k", RequestID: rid, NowMs: now})
			if out.Status != nil {
				t.Fatal(out.err())
			}
			return out.Entry.GetVersion()
		}
		// A forgotten request is applied again; a kept one is replayed.
		if v := put("p05", 2000); v != 40 {
			t.Fatalf("forgotten request: version %d, want 40 (applied again)", v)
		}
		if v := put("p39", 2001); v != 39 {
			t.Fatalf("kept request: version %d, want its first answer 39", v)
		}
		// Past the window (p39 was first recorded at 1020) a record is
		// ignored, though still stored until the session's next record.
		late := int64(1020 + dedupWindowMs + 1)
		if out := e.v3(command{Op: opTouch, ID: "s", NowMs: late}); out.Status != nil {
			t.Fatal(out.err())
		}
		if n := len(e.colocated("s")); n != dedupMaxPerSession {
			t.Fatalf("%d records before the next write, want %d", n, dedupMaxPerSession)
		}
		if v := put("p39", late); v != 41 {
			t.Fatalf("request past the window: version %d, want 41 (applied again)", v)
		}
		// That write pruned every record past the window: p05 (2000) and
		// the rewritten p39 are left.
		if got := e.colocated("s"); fmt.Sprint(got) != "[p05 p39]" {
			t.Fatalf("after a write past the window: %q", got)
		}
	})
	t.Run("burst in one millisecond", func(t *testing.T) {
		e := newSM(t, dedupLimits)
		e.v3(command{Op: opCreate, ID: "s", RequestID: "c", NowMs: 1000})
		// Each request's id sorts before every kept one: by key alone
		// it would be the first forgotten.
		for i := 39; i >= 0; i-- {
			e.v3(command{Op: opPutState, ID: "s", Key: "k", RequestID: fmt.Sprintf("p%02d", i), NowMs: 1001})
		}
		if got, want := fmt.Sprintf("%q", e.keys(bkSessions)), beside(append([]string{"p00"}, pRange(9, 39)...)...); got != want {
			t.Fatalf("kept %s\nwant %s", got, want)
		}
	})
}

// TestColocatedHonoursOlderRecords: a request recorded by a format-1 or
// format-2 entry, in the shard-wide tree, is still answered once to a
// format-3 retry; and a format-2 retry finds a record kept beside its
// session.
func TestColocatedHonoursOlderRecords(t *testing.T) {
	for _, format := range []byte{commandFormatJSON, commandFormatBinary} {
		t.Run(fmt.Sprint("format", format), func(t *testing.T) {
			e := newSM(t, dedupLimits)
			create := command{Op: opCreate, ID: "s", Data: []byte("d"), RequestID: "c", NowMs: 1000}
			cas := command{Op: opCompareAndSet, ID: "s", ExpectedVersion: 1, HasExpected: true, Data: []byte("v2"), RequestID: "cas", NowMs: 1001}
			first := []outcome{e.at(format, create), e.at(format, cas)}
			if !e.shared("s", "c") || !e.shared("s", "cas") || len(e.colocated("s")) != 0 {
				t.Fatalf("format %d kept its records beside the session: %q", format, e.keys(bkSessions))
			}
			for i, cmd := range []command{create, cas} {
				cmd.NowMs = 2000
				if again := e.v3(cmd); !same(t, first[i], again) {
					t.Fatalf("%s: format-3 retry answered %+v (%v), first %+v", cmd.Op, again, again.err(), first[i])
				}
			}
			other := cas
			other.Data = []byte("v3")
			if out := e.v3(other); out.Status.Code() != codes.InvalidArgument {
				t.Fatalf("request_id reused: %v", out.err())
			}
			put := command{Op: opPutState, ID: "s", Key: "k", Data: []byte("v"), RequestID: "put", NowMs: 2001}
			p := e.v3(put)
			if again := e.at(format, put); !same(t, p, again) {
				t.Fatalf("format-%d retry of a format-3 request: %+v, first %+v", format, again, p)
			}
		})
	}
}

// TestColocatedScansSkipRecords: what scans the sessions bucket sees
// sessions only: findExpired, the count of sessions, and a backup
// restored elsewhere keeps the records (they are state).
func TestColocatedScansSkipRecords(t *testing.T) {
	e := newSM(t, dedupLimits)
	for _, id := range []string{"a", "b", "c"} {
		e.v3(command{Op: opCreate, ID: id, IdleTTLMs: 100, RequestID: "c-" + id, NowMs: 1000})
		e.v3(command{Op: opPutState, ID: id, Key: "k", RequestID: "p-" + id, NowMs: 1001})
	}
	e.v3(command{Op: opCreate, ID: "live", RequestID: "c-live", NowMs: 1001})
	var ids []string
	var sessions float64
	var dump []*pb.BackupRecord
	err := e.bs.view(context.Background(), 0, func(st shardTx) error {
		var err error
		if ids, err = findExpired(st, 5000, 100); err != nil {
			return err
		}
		sessions = float64(st.existing(bkSessions).Stats().KeyN) - float64(colocatedCount(st))
		dump, err = dumpShard(st)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids) != "[a b c]" {
		t.Fatalf("findExpired: %q", ids)
	}
	if sessions != 4 {
		t.Fatalf("counted %v sessions, want 4", sessions)
	}
	if out := e.v3(command{Op: opSweep, IDs: ids, NowMs: 5000}); len(out.Swept) != 3 {
		t.Fatalf("swept %v", out.Swept)
	}
	if got := e.keys(bkSessions); fmt.Sprint(got) != "[live live\x00c-live]" {
		t.Fatalf("after the sweep: %q", got)
	}
	// The backup, loaded into an empty shard, answers a retry the same.
	r := newSM(t, dedupLimits)
	var recs []backupRecord
	for _, rec := range dump {
		recs = append(recs, backupRecord{B: rec.GetBucket(), K: rec.GetKey(), V: rec.GetValue()})
	}
	if out := r.v3(command{Op: opImport, RestoreID: "x", Records: recs, NowMs: 1002}); out.Status != nil {
		t.Fatal(out.err())
	}
	cmd := command{Op: opPutState, ID: "a", Key: "k", RequestID: "p-a", NowMs: 1003}
	first := e.v3(cmd) // "a" is gone here: the moved record answers
	if again := r.v3(cmd); !same(t, first, again) || again.Entry.GetVersion() != 1 {
		t.Fatalf("restored replay %+v (%v), original %+v", again, again.err(), first)
	}
}

// TestColocatedTouchesNoSharedTrees: on a fresh shard a format-3 create
// with a request id, and more writes to it, create neither of the
// shard-wide request trees; and those trees drain under format-3 writes
// alone.
func TestColocatedTouchesNoSharedTrees(t *testing.T) {
	e := newSM(t, dedupLimits)
	e.v3(command{Op: opCreate, ID: "s", RequestID: "c", NowMs: 1000})
	e.v3(command{Op: opPutState, ID: "s", Key: "k", RequestID: "p", NowMs: 1001})
	e.v3(command{Op: opAppendEvents, ID: "s", Stream: "a", Events: [][]byte{{1}}, RequestID: "a", NowMs: 1002})
	_ = e.bs.view(context.Background(), 0, func(st shardTx) error {
		for _, name := range []string{bkRequests, bkReqTime} {
			if st.existing(name) != nil {
				t.Errorf("bucket %s exists after format-3 writes", name)
			}
		}
		return nil
	})

	// Format-1 records, then only format-3 writes past their window.
	for i := range 5 {
		e.at(commandFormatJSON, command{Op: opPutState, ID: "s", Key: "k", RequestID: fmt.Sprint("old", i), NowMs: 1003})
	}
	if got := len(e.keys(bkReqTime)); got != 5 {
		t.Fatalf("reqtime holds %d", got)
	}
	e.v3(command{Op: opPutState, ID: "s", Key: "k", RequestID: "new", NowMs: 1004})
	if got := len(e.keys(bkReqTime)); got != 5 {
		t.Fatalf("pruned inside the window: reqtime holds %d", got)
	}
	e.v3(command{Op: opTouch, ID: "s", NowMs: 1003 + dedupWindowMs + 1})
	if got, got2 := e.keys(bkReqTime), e.keys(bkRequests); len(got) != 0 || len(got2) != 0 {
		t.Fatalf("not drained: reqtime %q, requests %q", got, got2)
	}
	_ = e.bs.view(context.Background(), 0, func(st shardTx) error {
		if n := getCount(st.existing(bkReqCount), "n"); n != 0 {
			t.Errorf("count of shard-wide requests %d after draining", n)
		}
		return nil
	})
}

// TestEncodeCommandAt: every format this build knows round-trips and says
// which it was; an unknown one is refused both ways.
func TestEncodeCommandAt(t *testing.T) {
	cmd := command{Op: opCreate, ID: "s", Data: []byte("d"), RequestID: "r", NowMs: 5}
	for f := byte(1); f <= maxCommandFormat; f++ {
		b, err := encodeCommandAt(cmd, f)
		if err != nil || b[0] != f {
			t.Fatalf("format %d: %v, %x", f, err, b)
		}
		got, err := decodeCommand(b)
		if err != nil || got.format != f || got.ID != "s" || string(fingerprint(got)) != string(fingerprint(cmd)) {
			t.Fatalf("format %d: decoded %+v, %v", f, got, err)
		}
	}
	if _, err := encodeCommandAt(cmd, maxCommandFormat+1); err == nil {
		t.Fatal("encoded an unknown format")
	}
	b, _ := encodeCommandAt(cmd, commandFormatColocated)
	b[0] = maxCommandFormat + 1
	if _, err := decodeCommand(b); !errors.Is(err, errBadCommand) || !errors.Is(err, errUnknownFormat) {
		t.Fatalf("unknown format decoded: %v", err)
	}
	// Damage in a known format is not an unknown format.
	if _, err := decodeCommand([]byte{commandFormatColocated, 0}); !errors.Is(err, errBadCommand) || errors.Is(err, errUnknownFormat) {
		t.Fatalf("truncated format-3 entry: %v", err)
	}
}

// TestColocatedRecordCodec: a colocated record decodes to what was
// stored, empty answers as nil (as the JSON form's omitempty), and damage
// is refused.
func TestColocatedRecordCodec(t *testing.T) {
	for _, e := range []dedupEntry{
		{AtMs: 1, Op: opDelete, Fingerprint: []byte("fp")},
		{AtMs: 1 << 40, Op: opCreate, Fingerprint: []byte("fp"), Session: []byte("s")},
		{AtMs: 7, Op: opAppendEvents, Fingerprint: []byte("fp"), Result: []byte{}, Status: []byte("st")},
	} {
		v := encodeColocated(e)
		got, err := decodeColocated(v)
		if err != nil {
			t.Fatal(err)
		}
		if len(e.Result) == 0 {
			e.Result = nil
		}
		if fmt.Sprint(got) != fmt.Sprint(e) || got.Result != nil && e.Result == nil {
			t.Fatalf("decoded %+v, want %+v", got, e)
		}
		for n := range len(v) {
			if _, err := decodeColocated(v[:n]); err == nil {
				t.Fatalf("%d of %d bytes decoded", n, len(v))
			}
		}
		if _, err := decodeColocated(append(v, 0)); err == nil {
			t.Fatal("trailing byte decoded")
		}
	}
}
