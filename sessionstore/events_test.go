package sessionstore_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/testcluster"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore"
	"github.com/erlmcp/erlmcp/sessionstore/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func seqsOf(evs client.Events) []uint64 {
	var out []uint64
	for _, e := range evs.Events {
		out = append(out, e.Seq)
	}
	return out
}

func TestEventsAppendRead(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	n := e.startNode(e.nodeConfig("s1", t.TempDir()))
	c := e.client()
	ctx := ctxT(t)
	if _, err := c.Create(ctx, "ev", nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	seqs, err := c.AppendEvents(ctx, "ev", "sse/1", []byte("a"), []byte("b"))
	if err != nil || fmt.Sprint(seqs) != "[1 2]" {
		t.Fatalf("append = %v, %v; want [1 2]", seqs, err)
	}
	seqs, err = c.AppendEvents(ctx, "ev", "sse/1", []byte("c"))
	if err != nil || fmt.Sprint(seqs) != "[3]" {
		t.Fatalf("append = %v, %v; want [3]", seqs, err)
	}
	// Another stream numbers from 1.
	if seqs, err := c.AppendEvents(ctx, "ev", "signals", []byte("x")); err != nil || fmt.Sprint(seqs) != "[1]" {
		t.Fatalf("other stream = %v, %v", seqs, err)
	}
	evs, err := c.ReadEvents(ctx, "ev", "sse/1", 0, 0, 0)
	if err != nil || fmt.Sprint(seqsOf(evs)) != "[1 2 3]" || evs.FirstRetainedSeq != 1 || evs.LastSeq != 3 {
		t.Fatalf("read = %+v, %v", evs, err)
	}
	for i, want := range []string{"a", "b", "c"} {
		ev := evs.Events[i]
		if string(ev.Data) != want || ev.Stream != "sse/1" || ev.CreatedAt.IsZero() {
			t.Fatalf("event %d = %+v", i, ev)
		}
	}
	evs, err = c.ReadEvents(ctx, "ev", "sse/1", 1, 1, 0)
	if err != nil || fmt.Sprint(seqsOf(evs)) != "[2]" || evs.LastSeq != 3 {
		t.Fatalf("read after 1 limit 1 = %+v, %v", evs, err)
	}
	evs, err = c.ReadEvents(ctx, "ev", "sse/1", 3, 0, 0)
	if err != nil || len(evs.Events) != 0 || evs.LastSeq != 3 {
		t.Fatalf("read at the end = %+v, %v", evs, err)
	}
	// An unknown stream of a live session is empty.
	evs, err = c.ReadEvents(ctx, "ev", "nothing-yet", 0, 0, 0)
	if err != nil || len(evs.Events) != 0 || evs.LastSeq != 0 {
		t.Fatalf("unknown stream = %+v, %v", evs, err)
	}
	// An unknown session is NOT_FOUND SESSION_NOT_FOUND.
	_, err = c.ReadEvents(ctx, "nope", "sse/1", 0, 0, 0)
	if !errors.Is(err, client.ErrSessionNotFound) || !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("read of unknown session: %v; want ErrSessionNotFound", err)
	}
	_, err = raw(t, n.Addr()).ReadEvents(ctx, &pb.ReadEventsRequest{SessionId: "nope", Stream: "s"})
	if ei := errInfo(err); status.Code(err) != codes.NotFound || ei.GetReason() != "SESSION_NOT_FOUND" {
		t.Fatalf("raw read of unknown session: %v", err)
	}
	if _, err := c.AppendEvents(ctx, "nope", "s", []byte("x")); !errors.Is(err, client.ErrSessionNotFound) {
		t.Fatalf("append to unknown session: %v", err)
	}
	// Bad input.
	rc := raw(t, n.Addr())
	for _, tc := range []struct {
		req  *pb.AppendEventsRequest
		want string
	}{
		{&pb.AppendEventsRequest{SessionId: "ev", Stream: "", Data: [][]byte{{1}}, RequestId: "r"}, "stream is empty"},
		{&pb.AppendEventsRequest{SessionId: "ev", Stream: strings.Repeat("s", 129), Data: [][]byte{{1}}, RequestId: "r"}, "limit is 128 bytes"},
		{&pb.AppendEventsRequest{SessionId: "ev", Stream: "a b", Data: [][]byte{{1}}, RequestId: "r"}, "not visible ASCII"},
		{&pb.AppendEventsRequest{SessionId: "ev", Stream: "s", RequestId: "r"}, "data is empty"},
		{&pb.AppendEventsRequest{SessionId: "ev", Stream: "s", Data: [][]byte{make([]byte, 1<<20), {1}}, RequestId: "r"}, "--max-value-bytes"},
	} {
		if _, err := rc.AppendEvents(ctx, tc.req); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("append %q: %v; want INVALID_ARGUMENT %q", tc.req.Stream, err, tc.want)
		}
	}
}

func TestEventsIdempotentAppend(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	n := e.startNode(e.nodeConfig("s1", t.TempDir()))
	rc := raw(t, n.Addr())
	ctx := ctxT(t)
	if _, err := rc.CreateSession(ctx, &pb.CreateSessionRequest{Id: "idem", RequestId: "c"}); err != nil {
		t.Fatal(err)
	}
	req := &pb.AppendEventsRequest{SessionId: "idem", Stream: "s", Data: [][]byte{[]byte("a"), []byte("b")}, RequestId: "append-1"}
	for i := 0; i < 3; i++ {
		r, err := rc.AppendEvents(ctx, req)
		if err != nil || fmt.Sprint(r.GetSeqs()) != "[1 2]" {
			t.Fatalf("attempt %d = %v, %v; want [1 2] every time", i, r, err)
		}
	}
	rr, err := rc.ReadEvents(ctx, &pb.ReadEventsRequest{SessionId: "idem", Stream: "s"})
	if err != nil || rr.LastSeq != 2 || len(rr.Events) != 2 {
		t.Fatalf("after retries: %v, %v; want the events once", rr, err)
	}
	// The same request id with other data is refused.
	req.Data = [][]byte{[]byte("other")}
	if _, err := rc.AppendEvents(ctx, req); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "append-1") {
		t.Fatalf("reused request id: %v", err)
	}
}

func TestEventsRetention(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	cfg := e.nodeConfig("s1", t.TempDir())
	cfg.EventRetention = 3
	cfg.MaxStreamsPerSession = 2
	e.startNode(cfg)
	c := e.client()
	ctx := ctxT(t)
	if _, err := c.Create(ctx, "ret", nil, 0); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		if _, err := c.AppendEvents(ctx, "ret", "a", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := c.ReadEvents(ctx, "ret", "a", 0, 0, 0)
	if err != nil || fmt.Sprint(seqsOf(evs)) != "[3 4 5]" || evs.FirstRetainedSeq != 3 || evs.LastSeq != 5 {
		t.Fatalf("after 5 appends with retention 3: %+v, %v", evs, err)
	}
	// A reader resuming after 1 learns of the gap: 2 is gone.
	evs, _ = c.ReadEvents(ctx, "ret", "a", 1, 0, 0)
	if evs.FirstRetainedSeq <= 2 || evs.Events[0].Seq != 3 {
		t.Fatalf("resume after 1: %+v", evs)
	}
	// One append larger than the retention keeps its newest events.
	seqs, err := c.AppendEvents(ctx, "ret", "a", []byte{6}, []byte{7}, []byte{8}, []byte{9})
	if err != nil || fmt.Sprint(seqs) != "[6 7 8 9]" {
		t.Fatalf("big append: %v, %v", seqs, err)
	}
	evs, _ = c.ReadEvents(ctx, "ret", "a", 0, 0, 0)
	if fmt.Sprint(seqsOf(evs)) != "[7 8 9]" || evs.FirstRetainedSeq != 7 {
		t.Fatalf("after big append: %+v", evs)
	}

	// Streams: a, then b, then a again: b is the least recently appended,
	// so a third stream drops b.
	if _, err := c.AppendEvents(ctx, "ret", "b", []byte("b")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AppendEvents(ctx, "ret", "a", []byte{10}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AppendEvents(ctx, "ret", "c", []byte("c")); err != nil {
		t.Fatal(err)
	}
	if evs, _ := c.ReadEvents(ctx, "ret", "b", 0, 0, 0); evs.LastSeq != 0 || len(evs.Events) != 0 {
		t.Fatalf("dropped stream b: %+v", evs)
	}
	if evs, _ := c.ReadEvents(ctx, "ret", "a", 0, 0, 0); evs.LastSeq != 10 || len(evs.Events) != 3 {
		t.Fatalf("kept stream a: %+v", evs)
	}
	if evs, _ := c.ReadEvents(ctx, "ret", "c", 0, 0, 0); evs.LastSeq != 1 {
		t.Fatalf("new stream c: %+v", evs)
	}
}

func TestEventsLongPoll(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	n := e.startNode(e.nodeConfig("s1", t.TempDir()))
	reader, writer := e.client(), e.client()
	ctx := ctxT(t)
	if _, err := writer.Create(ctx, "lp", nil, 0); err != nil {
		t.Fatal(err)
	}
	// The reader's connection exists before the baseline is taken.
	if _, err := reader.ReadEvents(ctx, "lp", "s", 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	baseline := runtime.NumGoroutine()

	type result struct {
		evs client.Events
		err error
		at  time.Time
	}
	poll := func(ctx context.Context, after uint64, wait time.Duration) <-chan result {
		ch := make(chan result, 1)
		go func() {
			evs, err := reader.ReadEvents(ctx, "lp", "s", after, 0, wait)
			ch <- result{evs, err, time.Now()}
		}()
		return ch
	}
	waitWaiting := func(want int) {
		t.Helper()
		testcluster.WaitFor(t, 3*time.Second, fmt.Sprintf("%d waiting streams", want), func() error {
			if got := n.Waiting(); got != want {
				return fmt.Errorf("waiting %d", got)
			}
			return nil
		})
	}

	// Wakes on an append from another client, promptly (not after wait).
	ch := poll(ctx, 0, 20*time.Second)
	waitWaiting(1)
	appended := time.Now()
	if _, err := writer.AppendEvents(ctx, "lp", "s", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-ch:
		if r.err != nil || len(r.evs.Events) != 1 || string(r.evs.Events[0].Data) != "hello" {
			t.Fatalf("woken read = %+v, %v", r.evs, r.err)
		}
		if d := r.at.Sub(appended); d > time.Second {
			t.Fatalf("woken %s after the append; want promptly", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("long-poll not woken by the append")
	}
	waitWaiting(0)

	// Times out empty after the wait.
	start := time.Now()
	r := <-poll(ctx, 1, 150*time.Millisecond)
	if r.err != nil || len(r.evs.Events) != 0 || r.evs.LastSeq != 1 {
		t.Fatalf("timed-out read = %+v, %v", r.evs, r.err)
	}
	if d := r.at.Sub(start); d < 150*time.Millisecond {
		t.Fatalf("returned after %s, before the wait", d)
	}

	// Cancellable: returns at once with the context's error, and leaves no
	// waiter or goroutine behind.
	cctx, cancel := context.WithCancel(ctx)
	ch = poll(cctx, 1, 20*time.Second)
	waitWaiting(1)
	cancel()
	select {
	case r := <-ch:
		if !errors.Is(r.err, context.Canceled) {
			t.Fatalf("cancelled read: %v; want context.Canceled", r.err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("cancelled long-poll did not return")
	}
	waitWaiting(0)

	// Deleting the session wakes its readers with SESSION_NOT_FOUND.
	ch = poll(ctx, 1, 20*time.Second)
	waitWaiting(1)
	if err := writer.Delete(ctx, "lp"); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-ch:
		if !errors.Is(r.err, client.ErrSessionNotFound) {
			t.Fatalf("read of a deleted session: %v", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("delete did not wake the long-poll")
	}
	waitWaiting(0)

	testcluster.WaitFor(t, 5*time.Second, "goroutines to settle", func() error {
		if got := runtime.NumGoroutine(); got > baseline+2 {
			return fmt.Errorf("%d goroutines, baseline %d", got, baseline)
		}
		return nil
	})
}

// TestEventsClientWaitTimeout: a wait longer than RequestTimeout is not cut
// by the per-attempt timeout.
func TestEventsClientWaitTimeout(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	e.startNode(e.nodeConfig("s1", t.TempDir()))
	c, err := client.New(context.Background(), client.Config{Etcd: e.cli, Prefix: e.prefix, RequestTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t)
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, "w", nil, 0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	evs, err := c.ReadEvents(ctx, "w", "s", 0, 0, 400*time.Millisecond)
	if err != nil || len(evs.Events) != 0 {
		t.Fatalf("read = %+v, %v", evs, err)
	}
	if d := time.Since(start); d < 400*time.Millisecond || d > 2*time.Second {
		t.Fatalf("returned after %s; want the 400ms wait", d)
	}
}

var _ = sessionstore.DefaultEventRetention
