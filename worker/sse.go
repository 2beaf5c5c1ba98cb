package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// SSE on /mcp. Every message a worker sends over SSE is first appended to
// a per-session stream in the store, so any worker can replay it:
//
//   - "p/<hash of request id>" carries one POST request's messages and
//     ends with its response;
//   - "g" is the standalone stream that GET /mcp opens.
//
// An event id is "<stream>/<seq>": it names the stream, and the store's
// per-stream sequence makes it unique in the session. A GET with
// Last-Event-ID, on any worker, replays that stream after seq and then
// long-polls the store, so events another worker appends keep flowing.

// requestStream is the stream name of a POST request with id.
func requestStream(id json.RawMessage) string {
	sum := sha256.Sum256(id)
	return "p/" + hex.EncodeToString(sum[:8])
}

func eventID(stream string, seq uint64) string { return stream + "/" + strconv.FormatUint(seq, 10) }

// parseEventID splits "<stream>/<seq>"; ok is false for an id we did not
// issue.
func parseEventID(id string) (stream string, seq uint64, ok bool) {
	i := strings.LastIndexByte(id, '/')
	if i <= 0 {
		return "", 0, false
	}
	stream = id[:i]
	seq, err := strconv.ParseUint(id[i+1:], 10, 64)
	if err != nil {
		return "", 0, false
	}
	if !isGetStream(stream) && !(strings.HasPrefix(stream, "p/") && len(stream) == 2+16) {
		return "", 0, false
	}
	return stream, seq, true
}

func writeEvent(w io.Writer, id string, data []byte) {
	var b strings.Builder
	if id != "" {
		b.WriteString("id: ")
		b.WriteString(id)
		b.WriteByte('\n')
	}
	// data is compact JSON: encoding/json escapes newlines in strings.
	b.WriteString("data: ")
	b.Write(data)
	b.WriteString("\n\n")
	_, _ = io.WriteString(w, b.String())
	flush(w)
}

// writePriming writes the 2025-11-25 priming event: an id, the retry
// interval and empty data.
func writePriming(w io.Writer, id string, retry time.Duration) {
	_, _ = fmt.Fprintf(w, "id: %s\nretry: %d\ndata: \n\n", id, retry.Milliseconds())
	flush(w)
}

func writeComment(w io.Writer) {
	_, _ = io.WriteString(w, ": keep-alive\n\n")
	flush(w)
}

func flush(w io.Writer) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

func sseHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	flush(w)
}

// primes reports whether a version gets priming events and retry
// (SEP-1699, 2025-11-25).
func primes(version string) bool { return version >= "2025-11-25" }

// get serves GET /mcp: the standalone stream, or the resumption of any
// stream of the session with Last-Event-ID.
func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	if _, sse := accepts(r.Header.Values("Accept")); !sse {
		h.fail(w, http.StatusNotAcceptable, nil, errorf(CodeTransport, "Not Acceptable: GET /mcp needs Accept: text/event-stream"))
		return
	}
	sid, ok := h.sessionHeader(w, r, nil)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.cfg.RequestTimeout)
	defer cancel()
	sess, err := h.loadSession(ctx, sid)
	if err != nil {
		h.storeFail(w, nil, "get", err)
		return
	}
	version := sess.rec.ProtocolVersion
	stream, after := newGetStream(), uint64(0)
	resume := false
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		var ok bool
		if stream, after, ok = parseEventID(last); !ok {
			h.fail(w, http.StatusBadRequest, nil, errorf(CodeInvalidRequest, "Bad Request: Last-Event-ID %q is not an event id of this server", last))
			return
		}
		resume = true
	}
	standalone := stream != streamGet && isGetStream(stream)
	var regVersion uint64
	if standalone {
		// Registered before the client sees an event id, so messages
		// sent from now on can choose this stream (standalone.go).
		if regVersion, err = h.registerGetStream(ctx, sid, stream, true, nil); err != nil {
			h.storeFail(w, nil, "update", err)
			return
		}
	}
	if !resume && primes(version) {
		seqs, err := h.store.AppendEvents(ctx, sid, stream, nil)
		if err != nil {
			h.storeFail(w, nil, "append", err)
			return
		}
		after = seqs[0]
	}
	sseHeaders(w)
	if primes(version) {
		if resume {
			_, _ = fmt.Fprintf(w, "retry: %d\n\n", h.cfg.SSERetry.Milliseconds())
			flush(w)
		} else {
			writePriming(w, eventID(stream, after), h.cfg.SSERetry)
		}
	}
	pctx, pcancel := context.WithCancel(r.Context())
	defer pcancel()
	defer context.AfterFunc(h.base, pcancel)()
	h.pump(pctx, w, sid, stream, after)
	if !standalone {
		return
	}
	uctx, ucancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.cfg.RequestTimeout)
	defer ucancel()
	if r.Context().Err() != nil && h.base.Err() == nil {
		// The client closed the stream: send it nothing more.
		err = h.unregisterGetStream(uctx, sid, stream)
	} else {
		// The server closed it (SSE polling, a drain): the client resumes
		// it; until then, connected streams get the messages.
		_, err = h.registerGetStream(uctx, sid, stream, false, &regVersion)
	}
	if err != nil && !errors.Is(err, ErrSessionNotFound) && !errors.Is(err, ErrVersionConflict) {
		h.log.WithError(err).Warn("could not update a closed GET stream's registration")
	}
}

// pump writes stream's events after seq to w until the stream ends (a
// request stream ends with its response), the stream's lifetime passes
// (the client then reconnects: SSE polling), the client goes away or the
// session ends.
func (h *Handler) pump(ctx context.Context, w io.Writer, sid, stream string, after uint64) {
	deadline := time.Now().Add(h.cfg.SSEStreamLifetime)
	lastWrite := time.Now()
	isRequest := !isGetStream(stream)
	for {
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return
		}
		ev, err := h.store.ReadEvents(ctx, sid, stream, after, 64, min(left, h.cfg.PollWait))
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, ErrSessionNotFound) {
				h.log.WithError(err).WithField("stream", stream).Warn("reading an SSE stream from the store")
			}
			return
		}
		for _, e := range ev.Events {
			after = e.Seq
			if len(e.Data) == 0 {
				continue // a priming event
			}
			writeEvent(w, eventID(stream, e.Seq), e.Data)
			lastWrite = time.Now()
			if isRequest && isResponse(e.Data) {
				return
			}
		}
		if len(ev.Events) > 0 {
			continue
		}
		if isRequest {
			if done := h.checkOwner(ctx, sid, stream, after); done {
				return
			}
		}
		if time.Since(lastWrite) >= h.cfg.SSEKeepAlive {
			writeComment(w)
			lastWrite = time.Now()
		}
	}
}

// isResponse reports whether data is a JSON-RPC response (the end of a
// request stream).
func isResponse(data []byte) bool {
	m, err := Decode(data)
	return err == nil && m.Kind == KindResponse
}

// inflight is the value of state key "inflight/<request id>": which worker
// runs the request and on which stream it answers.
type inflight struct {
	Worker string          `json:"worker"`
	Stream string          `json:"stream,omitempty"`
	ID     json.RawMessage `json:"id"`
}

const inflightPrefix = "inflight/"

func inflightKey(id json.RawMessage) string { return inflightPrefix + string(id) }

// CodeWorkerLost answers a request whose worker stopped while running it.
const CodeWorkerLost = CodeInternalError

// checkOwner is called when a request stream has nothing new. It reports
// true when the stream will get nothing more: the request ended without a
// response (it was cancelled). When the worker running the request is no
// longer alive, it appends an error response for it, which ends the
// stream on the next read.
func (h *Handler) checkOwner(ctx context.Context, sid, stream string, after uint64) bool {
	entries, err := h.store.ListState(ctx, sid, inflightPrefix)
	if err != nil {
		return false
	}
	for _, e := range entries {
		var in inflight
		if json.Unmarshal(e.Value, &in) != nil || in.Stream != stream {
			continue
		}
		if h.alive == nil || h.alive(in.Worker) {
			return false
		}
		// The same claim as the death sweep: one error, whoever is first.
		if err := h.resolveOrphan(ctx, sid, e, in); err == nil {
			h.log.WithField("owner", in.Worker).WithField("stream", stream).Warn("the worker running a request stopped; failed the request")
		}
		return false
	}
	// No owner: the request ended. Its response, if any, was appended
	// before the key went away; read once more to be sure.
	ev, err := h.store.ReadEvents(ctx, sid, stream, after, 1, 0)
	return err == nil && len(ev.Events) == 0
}
