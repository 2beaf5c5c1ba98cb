package sessionstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Backup and Import (StoreAdminService): a logical dump of a shard's state
// machine, and its load back through the Raft log. The dump is a list of
// (bucket, key, value) records of the shard's buckets as statemachine.go
// lays them out, so it does not depend on how the multi-Raft engine keeps
// them on disk; Import proposes bounded chunks of it as opImport commands,
// so every replica (and any replica added later, through Raft snapshots)
// gets the same state.

// bkRestore records the import in progress or done in the shard: "id" →
// restore id, "next" → 8-byte big-endian number of the next chunk. It is
// bookkeeping of the import, not session state, so Backup leaves it out.
const bkRestore = "restore"

// backupChunkBytes bounds the records of one Backup message and, on the
// client side, of one Import chunk (one Raft entry, JSON-encoded: a third
// larger), well under the Raft message limit (1 MiB) and gRPC's 4 MiB.
const backupChunkBytes = 256 << 10

// importable are the buckets of a shard's state (statemachine.go) that an
// import may write.
var importable = map[string]bool{
	bkSessions: true, bkSessMeta: true, bkEvents: true, bkStreams: true, bkStreamAge: true, bkState: true, bkTasks: true,
	bkRequests: true, bkReqTime: true, bkReqCount: true, bkClock: true,
}

// backupRecord is one key of the dump, in an opImport command.
type backupRecord struct {
	B string `json:"b"`
	K []byte `json:"k"`
	V []byte `json:"v"`
}

// dumpShard reads every record of the shard's buckets but bkRestore. The
// records are copied out so the read transaction ends before they are sent
// (a slow client must not hold a bbolt read transaction open).
func dumpShard(st shardTx) ([]*pb.BackupRecord, error) {
	if st.root == nil {
		return nil, nil
	}
	var out []*pb.BackupRecord
	err := st.root.ForEach(func(name, v []byte) error {
		if v != nil {
			return fmt.Errorf("unexpected key %q at the top of the shard's state: a newer store wrote it?", name)
		}
		if string(name) == bkRestore {
			return nil
		}
		b := st.root.Bucket(name)
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				return fmt.Errorf("unexpected nested bucket %q in bucket %q of the shard's state", k, name)
			}
			out = append(out, &pb.BackupRecord{Bucket: string(name), Key: bytes.Clone(k), Value: bytes.Clone(v)})
			return nil
		})
	})
	return out, err
}

func (a *adminService) Backup(req *pb.BackupRequest, stream pb.StoreAdminService_BackupServer) error {
	ctx := stream.Context()
	n := a.n
	shard := req.GetShard()
	r := n.route.Load()
	if r == nil {
		return status.Errorf(codes.Unavailable, "store node %q has not read the shard map yet; retry shortly", n.ID())
	}
	if int(shard) >= r.cluster.ShardCount {
		return status.Errorf(codes.InvalidArgument, "shard %d: the cluster has %d shards (0..%d)", shard, r.cluster.ShardCount, r.cluster.ShardCount-1)
	}
	var readIndex uint64
	if n.raft != nil {
		if err := n.raft.leading(ctx, shard); err != nil {
			return err
		}
		idx, err := n.raft.mr.ReadIndex(ctx, shard)
		if err != nil {
			return n.raft.mapErr(shard, err)
		}
		readIndex = idx
	}
	var recs []*pb.BackupRecord
	err := n.store.view(ctx, int(shard), func(st shardTx) error {
		var err error
		recs, err = dumpShard(st)
		return err
	})
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Errorf(codes.Unavailable, "store node %q: shard %d: reading the state failed: %v", n.ID(), shard, err)
	}
	chunk := &pb.BackupResponse{Shard: shard, ReadIndex: readIndex, ShardCount: uint32(r.cluster.ShardCount)}
	size := 0
	for _, rec := range recs {
		chunk.Records = append(chunk.Records, rec)
		size += len(rec.Bucket) + len(rec.Key) + len(rec.Value)
		if size >= backupChunkBytes {
			if err := stream.Send(chunk); err != nil {
				return err
			}
			chunk = &pb.BackupResponse{Shard: shard, ReadIndex: readIndex, ShardCount: uint32(r.cluster.ShardCount)}
			size = 0
		}
	}
	chunk.Done = true
	if err := stream.Send(chunk); err != nil {
		return err
	}
	n.log.WithField("shard", shard).WithField("records", len(recs)).WithField("read_index", readIndex).Info("backup of shard sent")
	return nil
}

func (a *adminService) Import(ctx context.Context, req *pb.ImportRequest) (*pb.ImportResponse, error) {
	n := a.n
	shard := req.GetShard()
	r := n.route.Load()
	if r == nil {
		return nil, status.Errorf(codes.Unavailable, "store node %q has not read the shard map yet; retry shortly", n.ID())
	}
	switch {
	case req.GetRestoreId() == "":
		return nil, status.Error(codes.InvalidArgument, "restore_id is empty: name the import (the same for every chunk of it)")
	case int(shard) >= r.cluster.ShardCount:
		return nil, status.Errorf(codes.InvalidArgument, "shard %d: the cluster has %d shards (0..%d)", shard, r.cluster.ShardCount, r.cluster.ShardCount-1)
	case int(req.GetShardCount()) != r.cluster.ShardCount:
		return nil, status.Errorf(codes.FailedPrecondition, "the dump comes from a cluster of %d shards, this one has %d: session ids hash onto shards by the count, so restore into a cluster created with --shard-count %d", req.GetShardCount(), r.cluster.ShardCount, req.GetShardCount())
	}
	sh := r.shards[shard]
	if !sh.Hosts(n.ID()) {
		return nil, status.Errorf(codes.FailedPrecondition, "store node %q does not host shard %d (the map names %q): call the shard's leader", n.ID(), shard, sh.Preferred())
	}
	cmd := command{Op: opImport, Shard: int(shard), RestoreID: req.GetRestoreId(), Seq: req.GetSeq(), NowMs: n.store.nowMs(int(shard)), Limits: n.limits()}
	for _, rec := range req.GetRecords() {
		if len(rec.GetKey()) == 0 || !importable[rec.GetBucket()] {
			return nil, status.Errorf(codes.InvalidArgument, "a record of bucket %q with a %d-byte key: this store keeps no such state (a dump of another version?)", rec.GetBucket(), len(rec.GetKey()))
		}
		cmd.Records = append(cmd.Records, backupRecord{B: rec.GetBucket(), K: rec.GetKey(), V: rec.GetValue()})
	}
	out, err := n.store.apply(ctx, cmd)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Errorf(codes.Unavailable, "store node %q: shard %d: disk write failed, nothing was applied: %v", n.ID(), shard, err)
	}
	if err := out.err(); err != nil {
		return nil, err
	}
	applied := len(out.Seqs) == 1 // importChunk names a chunk it applied now
	if applied {
		n.log.WithField("shard", shard).WithField("seq", req.GetSeq()).WithField("records", len(cmd.Records)).Debug("import chunk applied")
	}
	return &pb.ImportResponse{Applied: applied, Records: uint32(len(cmd.Records))}, nil
}

// importChunk applies an opImport command: chunk Seq of import RestoreID,
// exactly once and in order (see Import).
func importChunk(st shardTx, cmd command) (outcome, error) {
	rb, err := st.bucket(bkRestore)
	if err != nil {
		return outcome{}, err
	}
	id := string(rb.Get([]byte("id")))
	var next uint64
	if v := rb.Get([]byte("next")); len(v) == 8 {
		next = binary.BigEndian.Uint64(v)
	}
	switch {
	case id == cmd.RestoreID && cmd.Seq < next:
		return outcome{}, nil // a retry of a chunk already applied
	case id == cmd.RestoreID && cmd.Seq > next:
		return outcome{Status: status.Newf(codes.FailedPrecondition, "import %q: chunk %d arrived before chunk %d", cmd.RestoreID, cmd.Seq, next)}, nil
	case id != cmd.RestoreID && cmd.Seq != 0:
		return outcome{Status: status.Newf(codes.FailedPrecondition, "import %q: chunk %d without chunk 0 (the shard last recorded import %q)", cmd.RestoreID, cmd.Seq, id)}, nil
	case id != cmd.RestoreID:
		if b := st.existing(bkSessions); b != nil {
			if k, _ := b.Cursor().First(); k != nil {
				return outcome{Status: status.Newf(codes.FailedPrecondition, "import %q: shard %d already holds sessions; a backup is restored only into an empty cluster (it never merges)", cmd.RestoreID, cmd.Shard)}, nil
			}
		}
		if err := rb.Put([]byte("id"), []byte(cmd.RestoreID)); err != nil {
			return outcome{}, err
		}
	}
	for _, rec := range cmd.Records {
		switch rec.B {
		case bkRestore:
			continue
		case bkClock:
			// The shard's clock never goes back: keep the later time.
			if len(rec.V) == 8 && int64(binary.BigEndian.Uint64(rec.V)) <= cmd.NowMs {
				continue
			}
		}
		b, err := st.bucket(rec.B)
		if err != nil {
			return outcome{}, fmt.Errorf("import into bucket %q: %w", rec.B, err)
		}
		if err := b.Put(rec.K, rec.V); err != nil {
			return outcome{}, fmt.Errorf("import into bucket %q: %w", rec.B, err)
		}
	}
	if err := rb.Put([]byte("next"), binary.BigEndian.AppendUint64(nil, cmd.Seq+1)); err != nil {
		return outcome{}, err
	}
	// Seqs names the chunk applied now (a retry answers none), for
	// Import's answer; nothing of it is stored.
	return outcome{Seqs: []uint64{cmd.Seq}}, nil
}
