package worker

import (
	"context"
	"encoding/json"
	"strings"
)

// Standalone (GET) streams. A client may hold several GET streams on one
// session at once, on different workers. MCP 2025-11-25 (transports,
// "Multiple Connections") says the server MUST send each of its messages
// on only one of the connected streams and MUST NOT broadcast it; earlier
// versions say the same. So every GET without Last-Event-ID opens a
// stream of its own in the store, "g/<16 hex>", and registers it under
// state key "getstream/<stream>" with the worker serving it. A server
// message meant for the standalone stream (notifications and requests
// not tied to a request's own stream) is appended to exactly one
// registered stream, chosen round robin among the streams whose worker
// is alive, preferring streams connected now. A stream stays registered
// while its client may resume it: the server closing it (SSE polling, a
// drain) keeps the registration, marked not connected, and the resuming
// worker takes it over; the client closing it removes it. A message goes
// to a registered stream nobody is connected to only when no stream is
// connected: the client gets it when it resumes that stream.
// With no stream registered the message goes to the legacy stream "g",
// which nobody reads live: there is no connection to deliver it on.

// getStreamPrefix is the state key prefix of registered GET streams.
const getStreamPrefix = "getstream/"

// getStream is the value of a GET stream's registration.
type getStream struct {
	Worker string `json:"worker"`
	// Connected is false once the server closed the connection and until
	// the client resumes the stream.
	Connected bool `json:"connected"`
}

// newGetStream names a new standalone stream.
func newGetStream() string { return streamGet + "/" + randomHex(8) }

// isGetStream reports whether stream is a standalone stream (the legacy
// shared one or a per-GET one).
func isGetStream(stream string) bool {
	return stream == streamGet || (strings.HasPrefix(stream, streamGet+"/") && len(stream) == len(streamGet)+1+16)
}

// registerGetStream records that this worker serves stream (connected
// true: now; false: the server closed it and the client may resume it)
// and returns the registration's version. expected, when set, writes only
// over that version: a worker the client resumed on meanwhile keeps its
// registration.
func (h *Handler) registerGetStream(ctx context.Context, sid, stream string, connected bool, expected *uint64) (uint64, error) {
	b, _ := json.Marshal(getStream{Worker: h.cfg.Common.ID, Connected: connected})
	e, err := h.store.PutState(ctx, sid, getStreamPrefix+stream, b, expected)
	return e.Version, err
}

// unregisterGetStream forgets stream: its client closed it.
func (h *Handler) unregisterGetStream(ctx context.Context, sid, stream string) error {
	return h.store.DeleteState(ctx, sid, getStreamPrefix+stream)
}

// pickGetStream chooses the one stream a standalone message goes to.
func (h *Handler) pickGetStream(ctx context.Context, sid string) (string, error) {
	entries, err := h.store.ListState(ctx, sid, getStreamPrefix)
	if err != nil {
		return "", err
	}
	var live, all []string
	for _, e := range entries {
		stream := strings.TrimPrefix(e.Key, getStreamPrefix)
		var g getStream
		if json.Unmarshal(e.Value, &g) != nil || !isGetStream(stream) {
			continue
		}
		all = append(all, stream)
		// Asking about liveness costs an etcd read: only when there is a
		// choice to make.
		if !g.Connected || (len(entries) > 1 && h.alive != nil && !h.alive(g.Worker)) {
			continue
		}
		live = append(live, stream)
	}
	if len(live) == 0 {
		// No stream is connected (or every serving worker is gone): the
		// client resumes one of them and gets the message there.
		live = all
	}
	if len(live) == 0 {
		return streamGet, nil
	}
	return live[int(h.nextGetStream.Add(1)-1)%len(live)], nil
}

// appendStandalone appends a server message to one standalone stream of
// the session and returns its sequence number there.
func (h *Handler) appendStandalone(ctx context.Context, sid string, msg []byte) (string, uint64, error) {
	stream, err := h.pickGetStream(ctx, sid)
	if err != nil {
		return "", 0, err
	}
	seqs, err := h.store.AppendEvents(ctx, sid, stream, msg)
	if err != nil {
		return "", 0, err
	}
	return stream, seqs[0], nil
}
