package sessionstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Event stream limits.
const (
	DefaultEventRetention       = 1000
	DefaultMaxStreamsPerSession = 1000
	// MaxEventRetention and MaxMaxStreams cap the flags.
	MaxEventRetention = 1_000_000
	MaxMaxStreams     = 100_000
	MaxStreamBytes    = 128
	// MaxEventsPerAppend bounds one AppendEvents; their data together is
	// bounded by --max-value-bytes.
	MaxEventsPerAppend = 1000
	// DefaultReadLimit is ReadEvents' limit when the request sets 0, and
	// the most one read returns.
	DefaultReadLimit = 1000
	// MaxWait caps ReadEvents' wait_ms.
	MaxWait = 30 * time.Second
	// readBudgetBytes bounds the data one ReadEvents or ListTasks page
	// returns (at least one item is always returned), so the answer fits
	// the 4 MiB default message limit of most gRPC clients.
	readBudgetBytes = 4 << 20
)

// streamMeta is a stream's bookkeeping: First is the oldest seq kept, Last
// the newest (0 before the first append), Tick the session tick of its last
// append (its key in streamage).
type streamMeta struct {
	First, Last, Tick uint64
}

func (m streamMeta) encode() []byte {
	b := binary.BigEndian.AppendUint64(nil, m.First)
	b = binary.BigEndian.AppendUint64(b, m.Last)
	return binary.BigEndian.AppendUint64(b, m.Tick)
}

func decodeStreamMeta(v []byte) (streamMeta, error) {
	if len(v) != 24 {
		return streamMeta{}, fmt.Errorf("stored stream bookkeeping is %d bytes, want 24", len(v))
	}
	return streamMeta{
		First: binary.BigEndian.Uint64(v[0:8]),
		Last:  binary.BigEndian.Uint64(v[8:16]),
		Tick:  binary.BigEndian.Uint64(v[16:24]),
	}, nil
}

// eventPrefix is "id 0x00 stream 0x00", the prefix of a stream's events.
func eventPrefix(id, stream string) []byte {
	return append(childKey(id, stream), 0)
}

func eventKey(id, stream string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(eventPrefix(id, stream), seq)
}

func ageKey(id string, tick uint64) []byte {
	return binary.BigEndian.AppendUint64(childPrefix(id), tick)
}

// appendEvents appends cmd.Events to cmd.Stream of the live session
// cmd.ID, then applies retention: the stream keeps its newest
// Limits.EventRetention events, and the session its Limits.MaxStreams most
// recently appended streams.
func appendEvents(st shardTx, cmd command) (outcome, error) {
	metaB, meta, err := loadMeta(st, cmd.ID)
	if err != nil {
		return outcome{}, err
	}
	streams, err := st.bucket(bkStreams)
	if err != nil {
		return outcome{}, err
	}
	events, err := st.bucket(bkEvents)
	if err != nil {
		return outcome{}, err
	}
	age, err := st.bucket(bkStreamAge)
	if err != nil {
		return outcome{}, err
	}
	sk := childKey(cmd.ID, cmd.Stream)
	var sm streamMeta
	if v := streams.Get(sk); v != nil {
		if sm, err = decodeStreamMeta(v); err != nil {
			return outcome{}, fmt.Errorf("stream %q of session %q: %w", cmd.Stream, cmd.ID, err)
		}
		if err := age.Delete(ageKey(cmd.ID, sm.Tick)); err != nil {
			return outcome{}, err
		}
	} else {
		// A new stream: make room by dropping the streams appended to
		// least recently.
		prefix := childPrefix(cmd.ID)
		for meta.Streams >= max(cmd.Limits.MaxStreams, 1) {
			k, v := age.Cursor().Seek(prefix)
			if k == nil || !bytes.HasPrefix(k, prefix) {
				return outcome{}, fmt.Errorf("session %q counts %d streams but none is indexed", cmd.ID, meta.Streams)
			}
			if err := dropStream(streams, events, age, cmd.ID, string(v)); err != nil {
				return outcome{}, err
			}
			meta.Streams--
		}
		meta.Streams++
		sm = streamMeta{First: 1}
	}
	meta.Tick++
	sm.Tick = meta.Tick
	retention := uint64(max(cmd.Limits.EventRetention, 1))
	n := uint64(len(cmd.Events))
	seqs := make([]uint64, n)
	var keepFrom uint64 // events below it would be dropped at once: not written
	if sm.Last+n > retention {
		keepFrom = sm.Last + n - retention + 1
	}
	for i, d := range cmd.Events {
		seq := sm.Last + 1 + uint64(i)
		seqs[i] = seq
		if seq < keepFrom {
			continue
		}
		v := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(d)), uint64(cmd.NowMs))
		if err := events.Put(eventKey(cmd.ID, cmd.Stream, seq), append(v, d...)); err != nil {
			return outcome{}, err
		}
	}
	sm.Last += n
	if sm.Last-sm.First+1 > retention {
		newFirst := sm.Last - retention + 1
		if err := deleteEvents(events, cmd.ID, cmd.Stream, sm.First, newFirst); err != nil {
			return outcome{}, err
		}
		sm.First = newFirst
	}
	if err := streams.Put(sk, sm.encode()); err != nil {
		return outcome{}, err
	}
	if err := age.Put(ageKey(cmd.ID, sm.Tick), []byte(cmd.Stream)); err != nil {
		return outcome{}, err
	}
	if err := saveMeta(metaB, cmd.ID, meta); err != nil {
		return outcome{}, err
	}
	return outcome{Seqs: seqs}, nil
}

// deleteEvents deletes the stream's events with from <= seq < to.
func deleteEvents(events *bolt.Bucket, id, stream string, from, to uint64) error {
	c := events.Cursor()
	start := eventKey(id, stream, from)
	end := eventKey(id, stream, to)
	for k, _ := c.Seek(start); k != nil && bytes.Compare(k, end) < 0; k, _ = c.Seek(start) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// dropStream removes a stream, its events and its age index entry.
func dropStream(streams, events, age *bolt.Bucket, id, stream string) error {
	sk := childKey(id, stream)
	v := streams.Get(sk)
	if v == nil {
		return fmt.Errorf("session %q: indexed stream %q has no bookkeeping", id, stream)
	}
	sm, err := decodeStreamMeta(v)
	if err != nil {
		return err
	}
	if err := age.Delete(ageKey(id, sm.Tick)); err != nil {
		return err
	}
	if err := deletePrefix(events, eventPrefix(id, stream)); err != nil {
		return err
	}
	return streams.Delete(sk)
}

// readEvents reads up to limit events of the stream after afterSeq.
func readEvents(st shardTx, id, stream string, afterSeq uint64, limit int) (*pb.ReadEventsResponse, error) {
	resp := &pb.ReadEventsResponse{}
	streams := st.existing(bkStreams)
	if streams == nil {
		return resp, nil
	}
	v := streams.Get(childKey(id, stream))
	if v == nil {
		return resp, nil // unknown stream of a live session: empty
	}
	sm, err := decodeStreamMeta(v)
	if err != nil {
		return nil, fmt.Errorf("stream %q of session %q: %w", stream, id, err)
	}
	resp.FirstRetainedSeq, resp.LastSeq = sm.First, sm.Last
	if afterSeq >= sm.Last {
		return resp, nil
	}
	events := st.existing(bkEvents)
	if events == nil {
		return nil, fmt.Errorf("stream %q of session %q has events %d..%d but there is no events bucket", stream, id, sm.First, sm.Last)
	}
	prefix := eventPrefix(id, stream)
	c := events.Cursor()
	bytesOut := 0
	for k, v := c.Seek(eventKey(id, stream, max(afterSeq+1, sm.First))); k != nil && bytes.HasPrefix(k, prefix) && len(resp.Events) < limit; k, v = c.Next() {
		if len(k) != len(prefix)+8 || len(v) < 8 {
			return nil, fmt.Errorf("stream %q of session %q: malformed stored event", stream, id)
		}
		data := v[8:]
		if len(resp.Events) > 0 && bytesOut+len(data) > readBudgetBytes {
			break
		}
		bytesOut += len(data)
		resp.Events = append(resp.Events, &pb.Event{
			Stream:          stream,
			Seq:             binary.BigEndian.Uint64(k[len(prefix):]),
			Data:            bytes.Clone(data),
			CreatedAtUnixMs: int64(binary.BigEndian.Uint64(v[:8])),
		})
	}
	return resp, nil
}

func checkStream(stream string) error {
	return checkName("stream", stream, MaxStreamBytes)
}

func (s *service) AppendEvents(ctx context.Context, req *pb.AppendEventsRequest) (*pb.AppendEventsResponse, error) {
	if err := s.n.checkMutation(req.GetSessionId(), req.GetRequestId(), nil); err != nil {
		return nil, err
	}
	if err := checkStream(req.GetStream()); err != nil {
		return nil, err
	}
	if len(req.GetData()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "data is empty: give at least one event to append")
	}
	if len(req.GetData()) > MaxEventsPerAppend {
		return nil, status.Errorf(codes.InvalidArgument, "%d events in one append; the limit is %d", len(req.GetData()), MaxEventsPerAppend)
	}
	total := 0
	for _, d := range req.GetData() {
		total += len(d)
	}
	if total > s.n.cfg.MaxValueBytes {
		return nil, status.Errorf(codes.InvalidArgument, "the events' data is %d bytes in all; the limit is %d bytes per append (the store's --max-value-bytes)", total, s.n.cfg.MaxValueBytes)
	}
	out, err := s.n.apply(ctx, command{Op: opAppendEvents, ID: req.GetSessionId(), Stream: req.GetStream(), Events: req.GetData(), RequestID: req.GetRequestId()})
	if err != nil {
		return nil, err
	}
	return &pb.AppendEventsResponse{Seqs: out.Seqs}, nil
}

// ReadEvents reads, and with wait_ms blocks until an event after after_seq
// exists: it registers with the node's notifier before each read, so an
// append committed after the read wakes it, and releases the registration
// however it returns.
func (s *service) ReadEvents(ctx context.Context, req *pb.ReadEventsRequest) (*pb.ReadEventsResponse, error) {
	id, stream := req.GetSessionId(), req.GetStream()
	if err := checkID(id); err != nil {
		return nil, err
	}
	if err := checkStream(stream); err != nil {
		return nil, err
	}
	if req.GetWaitMs() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "wait_ms %d: must be 0 (do not wait) or positive", req.GetWaitMs())
	}
	limit := int(req.GetLimit())
	if limit == 0 || limit > DefaultReadLimit {
		limit = DefaultReadLimit
	}
	wait := min(time.Duration(req.GetWaitMs())*time.Millisecond, MaxWait)
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		var woken <-chan struct{}
		release := func() {}
		if wait > 0 {
			woken, release = s.n.waiters.watch(id, stream)
		}
		var resp *pb.ReadEventsResponse
		err := s.n.viewSession(ctx, id, func(st shardTx) error {
			var err error
			resp, err = readEvents(st, id, stream, req.GetAfterSeq(), limit)
			return err
		})
		if err != nil || len(resp.Events) > 0 || wait == 0 {
			release()
			return resp, err
		}
		select {
		case <-woken:
			release()
		case <-timeout:
			release()
			return resp, nil
		case <-s.n.stopping:
			release()
			return nil, status.Errorf(codes.Unavailable, "store node %q is stopping; read again elsewhere", s.n.ID())
		case <-ctx.Done():
			release()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}
