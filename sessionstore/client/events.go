package client

import (
	"context"
	"fmt"
	"math"
	"time"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
)

// MaxWait is the longest a ReadEvents waits; the store caps it there too.
const MaxWait = 30 * time.Second

// Event is one entry of a session's stream.
type Event struct {
	Stream string
	// Seq starts at 1 per stream and grows by one per event.
	Seq       uint64
	Data      []byte
	CreatedAt time.Time
}

// Events is one read of a stream.
type Events struct {
	Events []Event
	// FirstRetainedSeq is the oldest seq the stream still keeps: a reader
	// whose afterSeq+1 is below it missed the events in between (dropped
	// by retention). LastSeq is the newest seq (0: the stream is empty or
	// unknown).
	FirstRetainedSeq, LastSeq uint64
}

// AppendEvents appends data, one event each, to the session's stream and
// returns their sequence numbers. A retry after an unknown outcome is
// applied once. Appending counts as session activity (refreshes its idle
// expiry).
func (c *Client) AppendEvents(ctx context.Context, sessionID, stream string, data ...[]byte) ([]uint64, error) {
	req := &pb.AppendEventsRequest{SessionId: sessionID, Stream: stream, Data: data, RequestId: newRequestID()}
	resp, err := call(ctx, c, "AppendEvents", fmt.Sprintf("append to stream %q of", stream), sessionID, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.AppendEventsResponse, error) {
		return sc.AppendEvents(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	return resp.GetSeqs(), nil
}

// ReadEvents returns up to limit events of the stream after afterSeq, in
// order (limit 0: the store's default, 1000). With wait > 0 it blocks until
// an event after afterSeq exists, wait passes (capped at MaxWait; then it
// returns no events), or ctx ends. An unknown stream of a live session
// reads as empty; a missing session is ErrSessionNotFound.
func (c *Client) ReadEvents(ctx context.Context, sessionID, stream string, afterSeq uint64, limit int, wait time.Duration) (Events, error) {
	wait = min(max(wait, 0), MaxWait)
	waitMs := wait.Milliseconds()
	if wait > 0 && waitMs == 0 {
		waitMs = 1
	}
	req := &pb.ReadEventsRequest{SessionId: sessionID, Stream: stream, AfterSeq: afterSeq, Limit: uint32(min(max(int64(limit), 0), math.MaxUint32)), WaitMs: waitMs}
	resp, err := call(ctx, c, "ReadEvents", fmt.Sprintf("read stream %q of", stream), sessionID, wait, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.ReadEventsResponse, error) {
		return sc.ReadEvents(ctx, req)
	})
	if err != nil {
		return Events{}, err
	}
	out := Events{FirstRetainedSeq: resp.GetFirstRetainedSeq(), LastSeq: resp.GetLastSeq()}
	if n := len(resp.GetEvents()); n > 0 {
		out.Events = make([]Event, n)
		for i, e := range resp.GetEvents() {
			out.Events[i] = Event{Stream: e.GetStream(), Seq: e.GetSeq(), Data: e.GetData(), CreatedAt: time.UnixMilli(e.GetCreatedAtUnixMs())}
		}
	}
	return out, nil
}
