package multiraft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	raftv1 "github.com/erlmcp/erlmcp/proto/erlmcp/raft/v1"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Resolver returns the gRPC address of a store's RaftService.
type Resolver func(StoreID) (string, error)

// GRPCConfig configures a GRPCTransport.
type GRPCConfig struct {
	// Store is the local store id.
	Store StoreID
	// Resolve maps a store id to its address; it is asked again after
	// every connection failure, so a store that moved is found.
	Resolve Resolver
	// DialOptions are added to the defaults (insecure credentials unless
	// these bring their own).
	DialOptions []grpc.DialOption
	// QueueLen is the number of Send batches queued per peer before new
	// ones are dropped and reported unreachable: 1024.
	QueueLen int
	// MaxBatch bounds the messages in one stream message: 4096.
	MaxBatch int
	// RetryBackoff: after a failed connection or send, messages to the peer
	// are dropped (and reported) for this long before the next attempt:
	// 200ms.
	RetryBackoff time.Duration
	// SnapshotTimeout bounds one Snapshot RPC: 1 minute.
	SnapshotTimeout time.Duration
}

// MaxMessageBytes is the largest gRPC message the transport sends or
// accepts: a snapshot travels as one message (no chunking yet), so this
// bounds a shard's state. Servers hosting the RaftService should be built
// with ServerOptions.
const MaxMessageBytes = 512 << 20

// ServerOptions are the grpc.ServerOptions a server hosting the
// RaftService needs (message size for snapshots).
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageBytes)}
}

// GRPCTransport is the gRPC Transport: per peer store one long-lived
// client stream (RaftService.Batch) fed by one goroutine that coalesces
// everything queued for the peer into one stream message; snapshots go by
// the unary Snapshot RPC, whose outcome is reported to raft. It also
// implements the server side; Register it on the node's gRPC server.
type GRPCTransport struct {
	raftv1.UnimplementedRaftServiceServer

	cfg     GRPCConfig
	ctx     context.Context
	cancel  context.CancelFunc
	mu      sync.Mutex
	handler Handler
	peers   map[StoreID]*peer
	closed  bool
	wg      sync.WaitGroup
}

// NewGRPCTransport returns a transport for cfg.Store.
func NewGRPCTransport(cfg GRPCConfig) *GRPCTransport {
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 1024
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = 4096
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = 200 * time.Millisecond
	}
	if cfg.SnapshotTimeout == 0 {
		cfg.SnapshotTimeout = time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &GRPCTransport{cfg: cfg, ctx: ctx, cancel: cancel, peers: map[StoreID]*peer{}}
}

// Register registers the RaftService on s.
func (t *GRPCTransport) Register(s grpc.ServiceRegistrar) {
	raftv1.RegisterRaftServiceServer(s, t)
}

// Start implements Transport.
func (t *GRPCTransport) Start(h Handler) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.handler = h
	return nil
}

func (t *GRPCTransport) getHandler() Handler {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.handler
}

// Close stops the peer goroutines and closes the connections.
func (t *GRPCTransport) Close() error {
	t.mu.Lock()
	t.closed = true
	peers := t.peers
	t.peers = map[StoreID]*peer{}
	t.mu.Unlock()
	t.cancel()
	t.wg.Wait()
	for _, p := range peers {
		p.resetConn()
	}
	return nil
}

// Send implements Transport.
func (t *GRPCTransport) Send(to StoreID, msgs []ShardMessage) {
	h := t.getHandler()
	var rest []ShardMessage
	for _, m := range msgs {
		if m.Message.GetType() == pb.MsgSnap {
			t.mu.Lock()
			closed := t.closed
			if !closed {
				t.wg.Add(1)
			}
			t.mu.Unlock()
			if closed {
				h.ReportSnapshot(to, m, errors.New("transport closed"))
			} else {
				go t.sendSnapshot(h, to, m)
			}
			continue
		}
		rest = append(rest, m)
	}
	if len(rest) == 0 {
		return
	}
	p := t.peer(to)
	if p == nil {
		h.ReportUnreachable(to, rest)
		return
	}
	select {
	case p.q <- rest:
	default:
		h.ReportUnreachable(to, rest)
	}
}

func (t *GRPCTransport) peer(to StoreID) *peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	p := t.peers[to]
	if p == nil {
		p = &peer{t: t, to: to, q: make(chan []ShardMessage, t.cfg.QueueLen)}
		t.peers[to] = p
		t.wg.Add(1)
		go p.run()
	}
	return p
}

func encodeMessages(msgs []ShardMessage) ([]*raftv1.ShardMessage, error) {
	out := make([]*raftv1.ShardMessage, 0, len(msgs))
	for _, m := range msgs {
		b, err := proto.Marshal(m.Message)
		if err != nil {
			return nil, err
		}
		out = append(out, &raftv1.ShardMessage{Shard: m.Shard, Message: b})
	}
	return out, nil
}

func decodeMessage(m *raftv1.ShardMessage) (ShardMessage, error) {
	msg := &pb.Message{}
	if err := proto.Unmarshal(m.GetMessage(), msg); err != nil {
		return ShardMessage{}, err
	}
	return ShardMessage{Shard: m.GetShard(), Message: msg}, nil
}

func (t *GRPCTransport) sendSnapshot(h Handler, to StoreID, m ShardMessage) {
	defer t.wg.Done()
	err := func() error {
		p := t.peer(to)
		if p == nil {
			return errors.New("transport closed")
		}
		conn, err := p.conn()
		if err != nil {
			return err
		}
		enc, err := encodeMessages([]ShardMessage{m})
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(t.ctx, t.cfg.SnapshotTimeout)
		defer cancel()
		_, err = raftv1.NewRaftServiceClient(conn).Snapshot(ctx, &raftv1.SnapshotRequest{
			FromStore: uint32(t.cfg.Store), ToStore: uint32(to), Message: enc[0],
		}, grpc.MaxCallSendMsgSize(MaxMessageBytes))
		return err
	}()
	h.ReportSnapshot(to, m, err)
}

// peer is the sending side towards one store.
type peer struct {
	t  *GRPCTransport
	to StoreID
	q  chan []ShardMessage

	mu     sync.Mutex
	addr   string
	cc     *grpc.ClientConn
	stream raftv1.RaftService_BatchClient
	cancel context.CancelFunc

	// Owned by run: the encoding of a batch, reused for the next one
	// (Send has serialized the request when it returns, so nothing of it
	// is referenced afterwards). Saves an allocation per message.
	buf  []byte
	msgs []raftv1.ShardMessage
	ptrs []*raftv1.ShardMessage
}

func (p *peer) conn() (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cc != nil {
		return p.cc, nil
	}
	addr, err := p.t.cfg.Resolve(p.to)
	if err != nil {
		return nil, fmt.Errorf("resolve store %d: %w", p.to, err)
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes)),
	}, p.t.cfg.DialOptions...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, err
	}
	p.addr, p.cc = addr, cc
	return cc, nil
}

// resetConn drops the stream and the connection, so the next attempt
// resolves the address again.
func (p *peer) resetConn() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cancel != nil {
		p.cancel()
		p.cancel, p.stream = nil, nil
	}
	if p.cc != nil {
		p.cc.Close()
		p.cc = nil
	}
}

func (p *peer) send(batch []ShardMessage) error {
	cc, err := p.conn()
	if err != nil {
		return err
	}
	if p.stream == nil {
		ctx, cancel := context.WithCancel(p.t.ctx)
		s, err := raftv1.NewRaftServiceClient(cc).Batch(ctx)
		if err != nil {
			cancel()
			return err
		}
		p.mu.Lock()
		p.stream, p.cancel = s, cancel
		p.mu.Unlock()
	}
	enc, err := p.encode(batch)
	if err != nil {
		return err
	}
	err = p.stream.Send(&raftv1.BatchRequest{
		FromStore: uint32(p.t.cfg.Store), ToStore: uint32(p.to), Messages: enc,
	})
	clear(p.ptrs) // the messages' bytes are overwritten by the next batch
	return err
}

// encode marshals batch into the peer's reused buffers; the result is
// valid until the next call.
func (p *peer) encode(batch []ShardMessage) ([]*raftv1.ShardMessage, error) {
	p.buf = p.buf[:0]
	ends := make([]int, 0, 64)
	for _, m := range batch {
		var err error
		if p.buf, err = (proto.MarshalOptions{}).MarshalAppend(p.buf, m.Message); err != nil {
			return nil, err
		}
		ends = append(ends, len(p.buf))
	}
	// Slices into buf are taken only once it has stopped growing.
	if cap(p.msgs) < len(batch) {
		p.msgs = make([]raftv1.ShardMessage, len(batch))
		p.ptrs = make([]*raftv1.ShardMessage, len(batch))
	}
	msgs, ptrs := p.msgs[:len(batch)], p.ptrs[:len(batch)]
	start := 0
	for i, m := range batch {
		msgs[i].Reset()
		msgs[i].Shard, msgs[i].Message = m.Shard, p.buf[start:ends[i]:ends[i]]
		ptrs[i] = &msgs[i]
		start = ends[i]
	}
	return ptrs, nil
}

func (p *peer) run() {
	defer p.t.wg.Done()
	var downUntil time.Time
	for {
		var batch []ShardMessage
		select {
		case <-p.t.ctx.Done():
			return
		case batch = <-p.q:
		}
	drain:
		for len(batch) < p.t.cfg.MaxBatch {
			select {
			case more := <-p.q:
				batch = append(batch, more...)
			default:
				break drain
			}
		}
		h := p.t.getHandler()
		if time.Now().Before(downUntil) {
			h.ReportUnreachable(p.to, batch)
			continue
		}
		if err := p.send(batch); err != nil {
			p.resetConn()
			downUntil = time.Now().Add(p.t.cfg.RetryBackoff)
			h.ReportUnreachable(p.to, batch)
		}
	}
}

// Batch implements raftv1.RaftServiceServer. The stream ends when the
// transport is closed, so a server's GracefulStop does not wait for peers'
// long-lived streams.
func (t *GRPCTransport) Batch(stream raftv1.RaftService_BatchServer) error {
	type recv struct {
		req *raftv1.BatchRequest
		err error
	}
	// One receiving goroutine for the stream's life (not one per message):
	// the handler itself waits on it or on the transport's close, and when
	// the handler returns the stream ends, which ends the pending Recv.
	ch := make(chan recv, 1)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			req, err := stream.Recv()
			select {
			case ch <- recv{req, err}:
			case <-done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		var r recv
		select {
		case r = <-ch:
		case <-t.ctx.Done():
			return status.Error(codes.Unavailable, "raft transport closed")
		}
		req, err := r.req, r.err
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&raftv1.BatchResponse{})
		}
		if err != nil {
			return err
		}
		if StoreID(req.GetToStore()) != t.cfg.Store {
			continue // meant for a store that used to be at this address
		}
		h := t.getHandler()
		if h == nil {
			continue
		}
		msgs := make([]ShardMessage, 0, len(req.GetMessages()))
		for _, m := range req.GetMessages() {
			sm, err := decodeMessage(m)
			if err != nil {
				return fmt.Errorf("decode raft message: %w", err)
			}
			msgs = append(msgs, sm)
		}
		h.HandleMessages(StoreID(req.GetFromStore()), msgs)
	}
}

// Snapshot implements raftv1.RaftServiceServer.
func (t *GRPCTransport) Snapshot(ctx context.Context, req *raftv1.SnapshotRequest) (*raftv1.SnapshotResponse, error) {
	if StoreID(req.GetToStore()) != t.cfg.Store {
		return nil, fmt.Errorf("snapshot for store %d reached store %d", req.GetToStore(), t.cfg.Store)
	}
	h := t.getHandler()
	if h == nil {
		return nil, errors.New("node not started")
	}
	m, err := decodeMessage(req.GetMessage())
	if err != nil {
		return nil, err
	}
	if err := h.HandleSnapshot(StoreID(req.GetFromStore()), m); err != nil {
		return nil, err
	}
	return &raftv1.SnapshotResponse{}, nil
}
