package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/membership"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// stores reaches the store nodes registered in etcd, one connection each.
type stores struct {
	cli    *clientv3.Client
	prefix string

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // by address
}

func newStores(cli *clientv3.Client, prefix string) *stores {
	return &stores{cli: cli, prefix: prefix, conns: map[string]*grpc.ClientConn{}}
}

func (s *stores) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		_ = c.Close()
	}
}

func (s *stores) admin(addr string) (pb.StoreAdminServiceClient, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cc, ok := s.conns[addr]
	if !ok {
		var err error
		cc, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("store at %s: %w", addr, err)
		}
		s.conns[addr] = cc
	}
	return pb.NewStoreAdminServiceClient(cc), nil
}

// view is the shard map and the registered store nodes now.
type view struct {
	cc     clusterstate.ClusterConfig
	shards []clusterstate.Shard
	addrs  map[string]string // store id → gRPC address
}

func (s *stores) view(ctx context.Context) (view, error) {
	cc, err := clusterstate.GetConfig(ctx, s.cli, s.prefix)
	if err != nil {
		return view{}, err
	}
	resp, err := s.cli.Get(ctx, clusterstate.ShardsPrefix(s.prefix), clientv3.WithPrefix())
	if err != nil {
		return view{}, fmt.Errorf("read the shard map: %w", err)
	}
	kvs := map[string][]byte{}
	for _, kv := range resp.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	ms, err := membership.List(ctx, s.cli, s.prefix, membership.RoleStore)
	if err != nil {
		return view{}, fmt.Errorf("list store nodes: %w", err)
	}
	v := view{cc: cc, shards: clusterstate.DecodeShards(s.prefix, cc.ShardCount, kvs), addrs: map[string]string{}}
	for _, m := range ms {
		v.addrs[m.ID] = m.Addr
	}
	return v, nil
}

// candidates are the addresses to try for shard's leader: the map's
// preferred store first, then its other replicas that are registered.
func (v view) candidates(shard int) []string {
	sh := v.shards[shard]
	var out []string
	seen := map[string]bool{}
	add := func(store string) {
		if a, ok := v.addrs[store]; ok && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	add(sh.Preferred())
	for _, r := range sh.Replicas {
		add(r.Store)
	}
	return out
}

// hint returns the leader address a refusal names, if any.
func hint(err error) string {
	for _, d := range status.Convert(err).Details() {
		if h, ok := d.(*pb.ShardHint); ok {
			return h.GetAddr()
		}
	}
	return ""
}

// errNoReplica is a shard with no registered replica yet.
var errNoReplica = errors.New("no registered store node hosts the shard yet")

// onLeader calls fn with the admin client of shard's leader: it tries the
// map's candidates, follows a refusal's leader hint, and returns the first
// answer that is not "not the leader" or "unavailable", or the last error.
func (s *stores) onLeader(ctx context.Context, shard int, fn func(addr string, adm pb.StoreAdminServiceClient) error) (final bool, err error) {
	v, err := s.view(ctx)
	if err != nil {
		return false, err
	}
	if shard >= len(v.shards) {
		return true, fmt.Errorf("shard %d: the cluster has %d shards", shard, len(v.shards))
	}
	addrs := v.candidates(shard)
	if len(addrs) == 0 {
		return false, fmt.Errorf("shard %d: %w", shard, errNoReplica)
	}
	tried := map[string]bool{}
	var last error
	for len(addrs) > 0 {
		addr := addrs[0]
		addrs = addrs[1:]
		if tried[addr] {
			continue
		}
		tried[addr] = true
		adm, err := s.admin(addr)
		if err != nil {
			return true, err
		}
		err = fn(addr, adm)
		if err == nil {
			return true, nil
		}
		last = fmt.Errorf("shard %d on %s: %w", shard, addr, err)
		if h := hint(err); h != "" {
			addrs = append([]string{h}, addrs...)
			continue
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.NotFound, codes.Canceled:
			continue
		default:
			return true, last
		}
	}
	return false, last
}

// readShard dumps shard from its leader.
func readShard(ctx context.Context, adm pb.StoreAdminServiceClient, shard int) (recs []*pb.BackupRecord, readIndex uint64, shardCount int, err error) {
	stream, err := adm.Backup(ctx, &pb.BackupRequest{Shard: uint32(shard)})
	if err != nil {
		return nil, 0, 0, err
	}
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, 0, 0, status.Error(codes.Unavailable, "the stream ended before the last chunk")
		}
		if err != nil {
			return nil, 0, 0, err
		}
		readIndex, shardCount = c.GetReadIndex(), int(c.GetShardCount())
		recs = append(recs, c.GetRecords()...)
		if c.GetDone() {
			return recs, readIndex, shardCount, nil
		}
	}
}
