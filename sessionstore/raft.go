package sessionstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore/multiraft"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ownerFile records, in the data dir, the member id of the store node that
// created it: opening the dir as another node is refused, so two nodes
// never serve one node's data under different names (and Raft store ids).
const ownerFile = "node_id"

func claimDataDir(dataDir, nodeID string) error {
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return fmt.Errorf("create data dir %s: %w", dataDir, err)
	}
	path := filepath.Join(dataDir, ownerFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if owner := strings.TrimSpace(string(b)); owner != nodeID {
			return fmt.Errorf("data dir %s belongs to store node %q, not %q: start it with --id %s or give this node another --data-dir", dataDir, owner, nodeID, owner)
		}
		return nil
	case errors.Is(err, os.ErrNotExist):
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(nodeID+"\n"), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", tmp, err)
		}
		return os.Rename(tmp, path)
	default:
		return fmt.Errorf("read %s: %w", path, err)
	}
}

// raftStorage is the node's storage: one multiraft.Node hosting a replica
// of every shard the shard map lists this store for, its Raft logs in
// <data-dir>/wal/ and its state in <data-dir>/raft.db.
type raftStorage struct {
	n  *Node
	mr *multiraft.Node

	mu sync.Mutex
	// clocks caches each shard's clock (the largest command time applied
	// on this replica).
	clocks map[uint32]int64
	// wakes are the long-poll wake-ups of entries applied in the current
	// apply round, run at its end (OnApplied): the woken poll's
	// linearizable read waits for, and asks for, the commit of the
	// applier's transaction.
	wakes map[uint32][]func()
}

// stateMachine adapts applyCommand to multiraft.StateMachine.
type stateMachine struct{ rs *raftStorage }

func (sm stateMachine) Apply(b *bolt.Bucket, shard uint32, _ uint64, data []byte) ([]byte, error) {
	cmd, err := decodeCommand(data)
	if errors.Is(err, errUnknownFormat) {
		// A newer build proposed it: refusing it here while the newer
		// replicas apply it would diverge silently. Stop instead.
		return nil, fmt.Errorf("shard %d: %w; upgrade this store to a build that reads it", shard, err)
	}
	if err != nil {
		// Every replica refuses the same bytes the same way.
		return encodeOutcome(outcome{Status: status.Newf(codes.Internal, "%v", err)})
	}
	out, err := applyCommand(b, cmd)
	if err != nil {
		return nil, err
	}
	clock := shardClock(shardTx{root: b})
	sm.rs.mu.Lock()
	sm.rs.clocks[shard] = clock
	n := sm.rs.n
	if w := wakeFor(cmd, out); w != nil && n != nil {
		sm.rs.wakes[shard] = append(sm.rs.wakes[shard], func() { w(n.waiters) })
	}
	sm.rs.mu.Unlock()
	return encodeOutcome(out)
}

func (sm stateMachine) Snapshot(b *bolt.Bucket, _ uint32, w io.Writer) error {
	return multiraft.SnapshotBucket(b, w)
}

func (sm stateMachine) Restore(b *bolt.Bucket, shard uint32, r io.Reader) error {
	if err := multiraft.RestoreBucket(b, r); err != nil {
		return err
	}
	clock := shardClock(shardTx{root: b})
	sm.rs.mu.Lock()
	sm.rs.clocks[shard] = clock
	sm.rs.mu.Unlock()
	return nil
}

// onApplied runs the wake-ups of shard's entries once they are applied, on
// every replica (a long-poll may be served by any of them); the poll's
// linearizable read then waits for them to be readable.
func (rs *raftStorage) onApplied(shard uint32, _ uint64, snapshot bool) {
	rs.mu.Lock()
	ws := rs.wakes[shard]
	delete(rs.wakes, shard)
	rs.mu.Unlock()
	for _, w := range ws {
		w()
	}
	if snapshot && rs.n != nil {
		rs.n.waiters.wakeAll()
	}
}

// wakeFor is the wake-up an applied command causes: the stream's waiters on
// an append, every stream's of a session that went.
func wakeFor(cmd command, out outcome) func(*waiters) {
	switch {
	case len(out.Swept) > 0:
		ids := out.Swept
		return func(w *waiters) {
			for _, id := range ids {
				w.wakeSession(id)
			}
		}
	case out.expired || (cmd.Op == opDelete && out.Status == nil):
		return func(w *waiters) { w.wakeSession(cmd.ID) }
	case cmd.Op == opAppendEvents && out.Status == nil:
		return func(w *waiters) { w.wake(cmd.ID, cmd.Stream) }
	}
	return nil
}

func (rs *raftStorage) apply(ctx context.Context, cmd command) (outcome, error) {
	shard := uint32(cmd.Shard)
	if err := rs.leading(ctx, shard); err != nil {
		return outcome{}, err
	}
	data, err := encodeCommandAt(cmd, rs.n.commandFormat())
	if err != nil {
		return outcome{}, status.Errorf(codes.Internal, "encode command: %v", err)
	}
	res, err := rs.mr.Propose(ctx, shard, data)
	if err != nil {
		return outcome{}, rs.mapErr(shard, err)
	}
	out, err := decodeOutcome(res)
	if err != nil {
		return outcome{}, status.Errorf(codes.Internal, "decode outcome: %v", err)
	}
	return out, nil
}

func (rs *raftStorage) view(ctx context.Context, shard int, fn func(shardTx) error) error {
	s := uint32(shard)
	if err := rs.leading(ctx, s); err != nil {
		return err
	}
	var fnErr error
	err := rs.mr.Read(ctx, s, func(b *bolt.Bucket) error {
		fnErr = fn(shardTx{root: b})
		return fnErr
	})
	if err != nil && fnErr == nil {
		return rs.mapErr(s, err)
	}
	return err
}

func (rs *raftStorage) nowMs(shard int) int64 {
	now := rs.n.now().UnixMilli()
	s := uint32(shard)
	rs.mu.Lock()
	clock, ok := rs.clocks[s]
	rs.mu.Unlock()
	if !ok {
		_ = rs.mr.View(s, func(b *bolt.Bucket) error {
			clock = shardClock(shardTx{root: b})
			return nil
		})
		rs.mu.Lock()
		if c, ok := rs.clocks[s]; !ok || c < clock {
			rs.clocks[s] = clock
		}
		rs.mu.Unlock()
	}
	return max(now, clock)
}

func (rs *raftStorage) close() error { return rs.mr.Close() }

// leaderWait bounds how long a request waits for a shard with no known
// leader to elect one before it is answered UNAVAILABLE.
func (rs *raftStorage) leaderWait() time.Duration {
	return 3 * rs.n.cfg.RaftTickInterval * time.Duration(raftElectionTicks)
}

// leading returns nil if this replica leads shard, else the status to
// answer: FAILED_PRECONDITION with a ShardHint naming the leader, or
// UNAVAILABLE while the shard has no leader (waiting a little for one).
func (rs *raftStorage) leading(ctx context.Context, shard uint32) error {
	self, err := rs.mr.Replica(shard)
	if err != nil {
		return rs.mapErr(shard, err)
	}
	lead, err := rs.mr.Leader(shard)
	if err != nil {
		return rs.mapErr(shard, err)
	}
	if lead == 0 {
		wctx, cancel := context.WithTimeout(ctx, rs.leaderWait())
		lead, err = rs.mr.WaitLeader(wctx, shard)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			return status.Errorf(codes.Unavailable, "store node %q: shard %d has no Raft leader yet (election in progress or no quorum); retry shortly", rs.n.ID(), shard)
		}
	}
	if lead == self {
		return nil
	}
	return rs.n.notLeader(shard, lead)
}

// mapErr turns a multiraft error into the status to answer.
func (rs *raftStorage) mapErr(shard uint32, err error) error {
	var nl *multiraft.NotLeaderError
	switch {
	case errors.Is(err, multiraft.ErrStorageUnavailable):
		return statusStorageUnavailable(rs.n.ID(), err).Err()
	case errors.As(err, &nl):
		if nl.Leader == 0 {
			return status.Errorf(codes.Unavailable, "store node %q: shard %d has no Raft leader right now; retry shortly", rs.n.ID(), shard)
		}
		return rs.n.notLeader(shard, nl.Leader)
	case errors.Is(err, multiraft.ErrShardNotFound):
		return status.Errorf(codes.Unavailable, "store node %q: its replica of shard %d is not running yet (being created or removed); retry shortly", rs.n.ID(), shard)
	case errors.Is(err, multiraft.ErrProposalDropped):
		return status.Errorf(codes.Unavailable, "store node %q: shard %d: the write was not applied (leadership changed or the log is full); retry", rs.n.ID(), shard)
	case errors.Is(err, multiraft.ErrResultUnknown):
		return status.Errorf(codes.Unavailable, "store node %q: shard %d: the write's outcome is unknown; retry with the same request_id", rs.n.ID(), shard)
	case errors.Is(err, multiraft.ErrStopped):
		return status.Errorf(codes.Unavailable, "store node %q is stopping; retry elsewhere", rs.n.ID())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return err // storage failure: "disk write failed"
}

// notLeader is FAILED_PRECONDITION with a ShardHint naming the store of
// replica lead, if this node knows its address.
func (n *Node) notLeader(shard uint32, lead multiraft.ReplicaID) error {
	hint := &pb.ShardHint{Shard: shard}
	msg := fmt.Sprintf("store node %q does not lead shard %d", n.ID(), shard)
	r := n.route.Load()
	if r != nil {
		if id, ok := r.raftStores[uint32(lead.Store())]; ok {
			hint.NodeId = id
			if m, ok := r.stores[id]; ok {
				hint.Addr = m.Addr
				msg += fmt.Sprintf("; store %q at %s does", id, m.Addr)
			} else {
				msg += fmt.Sprintf("; store %q does, but it is not registered", id)
			}
		}
	}
	if hint.Addr == "" {
		return status.Errorf(codes.Unavailable, "%s; its leader (Raft replica %v) cannot be reached now; retry shortly", msg, lead)
	}
	return statusWrongShard(hint, msg).Err()
}

// raftElectionTicks is the Raft election timeout in ticks.
const raftElectionTicks = 10

// effectiveID is a map replica's Raft id: its ID, or for a map written
// without ids (a single-replica shard) the id of incarnation 1.
func effectiveID(r clusterstate.Replica) multiraft.ReplicaID {
	if r.ID != 0 {
		return multiraft.ReplicaID(r.ID)
	}
	return multiraft.ReplicaID(clusterstate.ReplicaID(r.Store, 1))
}

func isVoter(r clusterstate.Replica) bool {
	return r.Role == clusterstate.RoleVoter || r.Role == ""
}
