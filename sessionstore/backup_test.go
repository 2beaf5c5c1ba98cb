package sessionstore_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBackupImport: a shard's Backup from its leader (a follower answers
// with a leader hint) holds every acknowledged session and state write;
// Import of the dump into a fresh cluster's leader makes them readable on
// every replica; a chunk applied again answers OK without applying,
// a chunk out of order, a dump of another shard count or a record of an
// unknown bucket is refused, and
// chunk 0 of another import into a shard holding sessions is refused.
func TestBackupImport(t *testing.T) {
	const shards = 2
	stores := []string{"a", "b", "c"}
	src := newRCluster(t, shards, stores...)
	for s := range shards {
		src.place(s, 1, stores, nil, nil)
	}
	src.start(stores...)
	cl := src.client()
	var ids []string
	versions := map[string]uint64{} // of the counter state key
	for i := range 6 {
		id := fmt.Sprintf("bk-%d", i)
		ids = append(ids, id)
		// Retried while the new groups elect leaders on a busy machine (a
		// create whose first try was applied answers "exists" on retry).
		testcluster.WaitFor(t, raftWait, "create "+id, func() error {
			_, err := cl.Create(ctxT(t), id, []byte("data-"+id), 0)
			if status.Code(err) == codes.AlreadyExists {
				return nil
			}
			return err
		})
		testcluster.WaitFor(t, raftWait, "put state of "+id, func() error {
			e, err := cl.PutState(ctxT(t), id, "counter", []byte(fmt.Sprint(i*10)), nil)
			versions[id] = e.Version
			return err
		})
	}

	dump := map[uint32][]*pb.BackupRecord{}
	for s := range uint32(shards) {
		lead := src.leader(s)
		for _, other := range stores {
			if other == lead {
				continue
			}
			stream, err := adminClient(t, src.node(other).Addr()).Backup(ctxT(t), &pb.BackupRequest{Shard: s})
			if err == nil {
				_, err = stream.Recv()
			}
			// Leadership may have moved to other meanwhile on a busy box:
			// only a refusal of another kind fails.
			if err == nil {
				continue
			}
			if status.Code(err) != codes.FailedPrecondition || hintOf(err) == nil {
				t.Fatalf("Backup of shard %d on follower %s: %v, want FAILED_PRECONDITION with a leader hint", s, other, err)
			}
			break
		}
		testcluster.WaitFor(t, raftWait, fmt.Sprintf("backup of shard %d", s), func() error {
			stream, err := adminClient(t, src.node(src.leader(s)).Addr()).Backup(ctxT(t), &pb.BackupRequest{Shard: s})
			if err != nil {
				return err
			}
			var recs []*pb.BackupRecord
			for {
				c, err := stream.Recv()
				if err != nil {
					return err
				}
				if c.GetShard() != s || c.GetShardCount() != shards || c.GetReadIndex() == 0 {
					t.Fatalf("chunk of shard %d: shard %d, shard count %d, read index %d", s, c.GetShard(), c.GetShardCount(), c.GetReadIndex())
				}
				recs = append(recs, c.GetRecords()...)
				if c.GetDone() {
					break
				}
			}
			if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
				return fmt.Errorf("after the last chunk: %v, want EOF", err)
			}
			dump[s] = recs
			return nil
		})
		sessions := 0
		for _, r := range dump[s] {
			if r.GetBucket() == "sessions" {
				sessions++
			}
		}
		if sessions == 0 {
			t.Fatalf("shard %d: dump has no session record (%d records)", s, len(dump[s]))
		}
	}

	dst := newRCluster(t, shards, stores...)
	for s := range shards {
		dst.place(s, 1, stores, nil, nil)
	}
	dst.start(stores...)
	importOn := func(s uint32, req *pb.ImportRequest) (*pb.ImportResponse, error) {
		var resp *pb.ImportResponse
		var callErr error
		testcluster.WaitFor(t, raftWait, fmt.Sprintf("import into shard %d", s), func() error {
			resp, callErr = adminClient(t, dst.node(dst.leader(s)).Addr()).Import(ctxT(t), req)
			if status.Code(callErr) == codes.Unavailable || hintOf(callErr) != nil {
				return callErr // leadership moving: retry
			}
			return nil
		})
		return resp, callErr
	}
	bogus := []*pb.BackupRecord{{Bucket: "bogus", Key: []byte("k")}}
	if _, err := importOn(0, &pb.ImportRequest{Shard: 0, RestoreId: "r1", ShardCount: shards, Records: bogus}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("import of a record of an unknown bucket: %v, want INVALID_ARGUMENT", err)
	}
	if _, err := importOn(0, &pb.ImportRequest{Shard: 0, RestoreId: "r1", ShardCount: shards + 1}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("import of a dump of another shard count: %v, want FAILED_PRECONDITION", err)
	}
	for s := range uint32(shards) {
		recs := dump[s]
		half := len(recs) / 2
		if _, err := importOn(s, &pb.ImportRequest{Shard: s, RestoreId: "r1", Seq: 1, ShardCount: shards, Records: recs[half:]}); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("shard %d: chunk 1 before chunk 0: %v, want FAILED_PRECONDITION", s, err)
		}
		r, err := importOn(s, &pb.ImportRequest{Shard: s, RestoreId: "r1", Seq: 0, ShardCount: shards, Records: recs[:half]})
		if err != nil || !r.GetApplied() {
			t.Fatalf("shard %d chunk 0: %v, applied %v", s, err, r.GetApplied())
		}
		if r, err := importOn(s, &pb.ImportRequest{Shard: s, RestoreId: "r1", Seq: 0, ShardCount: shards, Records: recs[:half]}); err != nil || r.GetApplied() {
			t.Fatalf("shard %d chunk 0 again: %v, applied %v; want OK, not applied", s, err, r.GetApplied())
		}
		if r, err := importOn(s, &pb.ImportRequest{Shard: s, RestoreId: "r1", Seq: 1, ShardCount: shards, Records: recs[half:]}); err != nil || !r.GetApplied() {
			t.Fatalf("shard %d chunk 1: %v, applied %v", s, err, r.GetApplied())
		}
		if _, err := importOn(s, &pb.ImportRequest{Shard: s, RestoreId: "r2", Seq: 0, ShardCount: shards}); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("shard %d: another import into a shard holding sessions: %v, want FAILED_PRECONDITION", s, err)
		}
	}

	dcl := dst.client()
	for i, id := range ids {
		// Reads and the write retry through leadership changes on a busy
		// machine; wrong contents fail at once.
		testcluster.WaitFor(t, raftWait, "restored session "+id, func() error {
			sess, err := dcl.Get(ctxT(t), id, false)
			if err != nil {
				return err
			}
			if string(sess.Data) != "data-"+id {
				t.Fatalf("restored session %s data %q", id, sess.Data)
			}
			e, err := dcl.GetState(ctxT(t), id, "counter")
			if err != nil {
				return err
			}
			if string(e.Value) != fmt.Sprint(i*10) || e.Version != versions[id] {
				t.Fatalf("restored state of %s: %q version %d; want %d version %d", id, e.Value, e.Version, i*10, versions[id])
			}
			return nil
		})
		// A restored session takes writes like any other.
		testcluster.WaitFor(t, raftWait, "write to restored session "+id, func() error {
			_, err := dcl.PutState(ctxT(t), id, "counter", []byte("next"), nil)
			return err
		})
	}
	// Every replica applied the import (it went through the log).
	for s := range uint32(shards) {
		dst.caughtUp(s, stores...)
		for _, st := range stores {
			id := idsInShard(ids, s, shards)
			if len(id) == 0 {
				continue
			}
			ok, err := dst.node(st).HasLocalSession(s, id[0])
			if err != nil || !ok {
				t.Fatalf("store %s shard %d: session %s not applied locally (%v)", st, s, id[0], err)
			}
		}
	}
}

func idsInShard(ids []string, shard uint32, count int) []string {
	var out []string
	for _, id := range ids {
		if clusterstate.ShardOf(id, count) == int(shard) {
			out = append(out, id)
		}
	}
	return out
}
