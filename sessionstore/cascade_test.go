package sessionstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/testcluster"
	"github.com/erlmcp/erlmcp/sessionstore/client"
)

// fill gives session id events, state and a task.
func fill(t *testing.T, ctx context.Context, c *client.Client, id string) {
	t.Helper()
	if _, err := c.AppendEvents(ctx, id, "s", []byte("e1"), []byte("e2")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutState(ctx, id, "k", []byte("v"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutTask(ctx, id, client.Task{ID: "t", Status: "working"}, nil); err != nil {
		t.Fatal(err)
	}
}

// checkEmpty asserts that the (re-created) session id has no events, state
// or tasks.
func checkEmpty(t *testing.T, ctx context.Context, c *client.Client, id string) {
	t.Helper()
	if evs, err := c.ReadEvents(ctx, id, "s", 0, 0, 0); err != nil || evs.LastSeq != 0 || len(evs.Events) != 0 {
		t.Fatalf("events survived: %+v, %v", evs, err)
	}
	if es, err := c.ListState(ctx, id, ""); err != nil || len(es) != 0 {
		t.Fatalf("state survived: %+v, %v", es, err)
	}
	if ts, _, err := c.ListTasks(ctx, id, "", 0); err != nil || len(ts) != 0 {
		t.Fatalf("tasks survived: %+v, %v", ts, err)
	}
	// The counts went too: a new stream numbers from 1.
	if seqs, err := c.AppendEvents(ctx, id, "s", []byte("x")); err != nil || fmt.Sprint(seqs) != "[1]" {
		t.Fatalf("append after re-create: %v, %v", seqs, err)
	}
}

func TestSessionDeleteAndExpiryCascade(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	e.startNode(e.nodeConfig("s1", t.TempDir()))
	c := e.client()
	ctx := ctxT(t)

	// Delete.
	if _, err := c.Create(ctx, "del", nil, 0); err != nil {
		t.Fatal(err)
	}
	fill(t, ctx, c, "del")
	if err := c.Delete(ctx, "del"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetState(ctx, "del", "k"); !errors.Is(err, client.ErrSessionNotFound) {
		t.Fatalf("state of a deleted session: %v", err)
	}
	if _, err := c.Create(ctx, "del", nil, 0); err != nil {
		t.Fatal(err)
	}
	checkEmpty(t, ctx, c, "del")

	// Expiry: a read of the session's events finds it expired (the lazy
	// check), or not found once the sweep (every 200 ms here) removed it
	// first; either way the session and everything in it are gone.
	if _, err := c.Create(ctx, "exp", nil, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	fill(t, ctx, c, "exp")
	testcluster.WaitFor(t, 10*time.Second, "session to expire", func() error {
		_, err := c.ReadEvents(ctx, "exp", "s", 0, 0, 0)
		if !errors.Is(err, client.ErrSessionNotFound) {
			return fmt.Errorf("read: %v", err)
		}
		return nil
	})
	if _, err := c.Create(ctx, "exp", nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	checkEmpty(t, ctx, c, "exp")
}

// TestWritesRefreshIdleExpiry: appends, state and task writes keep a
// session alive; reads alone do not.
func TestWritesRefreshIdleExpiry(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	e.startNode(e.nodeConfig("s1", t.TempDir()))
	c := e.client()
	ctx := ctxT(t)
	const ttl = 400 * time.Millisecond
	if _, err := c.Create(ctx, "busy", nil, ttl); err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	// Write for three TTLs; the session must stay alive throughout.
	for i := 0; time.Since(created) < 3*ttl; i++ {
		var err error
		switch i % 3 {
		case 0:
			_, err = c.AppendEvents(ctx, "busy", "s", []byte{byte(i)})
		case 1:
			_, err = c.PutState(ctx, "busy", "k", []byte{byte(i)}, nil)
		case 2:
			_, err = c.PutTask(ctx, "busy", client.Task{ID: "t", Data: []byte{byte(i)}}, nil)
		}
		if err != nil {
			t.Fatalf("write %d at %s: %v", i, time.Since(created), err)
		}
		// Pace the writes on the store's answer to a waiting read rather
		// than a sleep: a read with a short wait.
		if _, err := c.ReadEvents(ctx, "busy", "idle", 0, 0, ttl/8); err != nil {
			t.Fatalf("read at %s: %v", time.Since(created), err)
		}
	}
	s, err := c.Get(ctx, "busy", false)
	if err != nil || !s.UpdatedAt.After(s.CreatedAt.Add(ttl)) {
		t.Fatalf("session after writes: %+v, %v; want updated_at moved", s, err)
	}
}

func TestRestartKeepsEventsStateTasks(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	cfg := e.nodeConfig("s1", t.TempDir())
	n := e.startNode(cfg)
	c := e.client()
	ctx := ctxT(t)
	if _, err := c.Create(ctx, "keep", nil, 0); err != nil {
		t.Fatal(err)
	}
	fill(t, ctx, c, "keep")
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	e.startNode(cfg)
	evs, err := c.ReadEvents(ctx, "keep", "s", 0, 0, 0)
	if err != nil || fmt.Sprint(seqsOf(evs)) != "[1 2]" || string(evs.Events[1].Data) != "e2" {
		t.Fatalf("events after restart: %+v, %v", evs, err)
	}
	if g, err := c.GetState(ctx, "keep", "k"); err != nil || g.Version != 1 || !bytes.Equal(g.Value, []byte("v")) {
		t.Fatalf("state after restart: %+v, %v", g, err)
	}
	if tk, err := c.GetTask(ctx, "keep", "t"); err != nil || tk.Version != 1 || tk.Status != "working" {
		t.Fatalf("task after restart: %+v, %v", tk, err)
	}
	// Numbering goes on.
	if seqs, err := c.AppendEvents(ctx, "keep", "s", []byte("e3")); err != nil || fmt.Sprint(seqs) != "[3]" {
		t.Fatalf("append after restart: %v, %v", seqs, err)
	}
}

// TestClientAcrossNodes: every new client method against two nodes with the
// shards split between them.
func TestClientAcrossNodes(t *testing.T) {
	const shards = 4
	e := newEnv(t, shards, true)
	e.spread("a", "b")
	e.startNode(e.nodeConfig("a", t.TempDir()))
	e.startNode(e.nodeConfig("b", t.TempDir()))
	c := e.client()
	other := e.client()
	ctx := ctxT(t)
	for shard := 0; shard < shards; shard++ {
		id := idInShard(shard, shards, "x")
		if _, err := c.Create(ctx, id, nil, 0); err != nil {
			t.Fatal(err)
		}
		fill(t, ctx, c, id)
		evs, err := other.ReadEvents(ctx, id, "s", 0, 0, time.Second)
		if err != nil || evs.LastSeq != 2 {
			t.Fatalf("shard %d events: %+v, %v", shard, evs, err)
		}
		if g, err := other.GetState(ctx, id, "k"); err != nil || string(g.Value) != "v" {
			t.Fatalf("shard %d state: %+v, %v", shard, g, err)
		}
		if err := other.DeleteState(ctx, id, "k"); err != nil {
			t.Fatal(err)
		}
		if es, err := c.ListState(ctx, id, ""); err != nil || len(es) != 0 {
			t.Fatalf("shard %d list after delete: %+v, %v", shard, es, err)
		}
		if tk, err := other.GetTask(ctx, id, "t"); err != nil || tk.Status != "working" {
			t.Fatalf("shard %d task: %+v, %v", shard, tk, err)
		}
		if ts, _, err := other.ListTasks(ctx, id, "", 0); err != nil || len(ts) != 1 {
			t.Fatalf("shard %d tasks: %+v, %v", shard, ts, err)
		}
	}
}
