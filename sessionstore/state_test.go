package sessionstore_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"github.com/erlmcp/erlmcp/sessionstore/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func ver(v uint64) *uint64 { return &v }

func TestStateCAS(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	cfg := e.nodeConfig("s1", t.TempDir())
	cfg.MaxValueBytes = 100
	n := e.startNode(cfg)
	c := e.client()
	ctx := ctxT(t)
	if _, err := c.Create(ctx, "st", nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetState(ctx, "st", "k"); !errors.Is(err, client.ErrNotFound) || errors.Is(err, client.ErrSessionNotFound) {
		t.Fatalf("get absent key: %v; want ErrNotFound, not ErrSessionNotFound", err)
	}
	steps := []struct {
		name     string
		expected *uint64
		value    string
		want     uint64 // version after; 0 means conflict
		current  string // current_version named in the conflict
	}{
		{"absent, expected 3", ver(3), "x", 0, "current version 0"},
		{"absent, only if absent", ver(0), "v1", 1, ""},
		{"present, only if absent", ver(0), "x", 0, "current version 1"},
		{"unconditional", nil, "v2", 2, ""},
		{"at version 2", ver(2), "v3", 3, ""},
		{"stale version 2", ver(2), "x", 0, "current version 3"},
	}
	for _, s := range steps {
		got, err := c.PutState(ctx, "st", "k", []byte(s.value), s.expected)
		if s.want == 0 {
			if !errors.Is(err, client.ErrVersionConflict) || !strings.Contains(err.Error(), s.current) {
				t.Fatalf("%s: %v; want ErrVersionConflict with %s", s.name, err, s.current)
			}
			continue
		}
		if err != nil || got.Version != s.want || string(got.Value) != s.value || got.Key != "k" {
			t.Fatalf("%s: %+v, %v; want version %d", s.name, got, err, s.want)
		}
	}
	if g, err := c.GetState(ctx, "st", "k"); err != nil || g.Version != 3 || string(g.Value) != "v3" {
		t.Fatalf("get = %+v, %v", g, err)
	}
	// The raw conflict carries VERSION_CONFLICT and current_version.
	_, err := raw(t, n.Addr()).PutState(ctx, &pb.PutStateRequest{SessionId: "st", Key: "k", ExpectedVersion: ver(9), RequestId: "r"})
	if ei := errInfo(err); status.Code(err) != codes.Aborted || ei.GetReason() != "VERSION_CONFLICT" || ei.GetMetadata()["current_version"] != "3" {
		t.Fatalf("raw conflict: %v", err)
	}
	// Delete; deleting again succeeds; the key starts again at 1.
	if err := c.DeleteState(ctx, "st", "k"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteState(ctx, "st", "k"); err != nil {
		t.Fatalf("delete absent key: %v", err)
	}
	if _, err := c.GetState(ctx, "st", "k"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get deleted key: %v", err)
	}
	if g, err := c.PutState(ctx, "st", "k", nil, ver(0)); err != nil || g.Version != 1 {
		t.Fatalf("re-put: %+v, %v", g, err)
	}

	// List by prefix, in key order.
	for _, k := range []string{"b/2", "a/1", "b/1", "b", "c"} {
		if _, err := c.PutState(ctx, "st", k, []byte("v-"+k), nil); err != nil {
			t.Fatal(err)
		}
	}
	list := func(prefix string) string {
		es, err := c.ListState(ctx, "st", prefix)
		if err != nil {
			t.Fatalf("list %q: %v", prefix, err)
		}
		var ks []string
		for _, e := range es {
			if string(e.Value) != "v-"+e.Key && e.Key != "k" {
				t.Fatalf("entry %+v", e)
			}
			ks = append(ks, e.Key)
		}
		return strings.Join(ks, ",")
	}
	if got := list("b/"); got != "b/1,b/2" {
		t.Fatalf("list b/ = %s", got)
	}
	if got := list(""); got != "a/1,b,b/1,b/2,c,k" {
		t.Fatalf("list all = %s", got)
	}
	if got := list("zz"); got != "" {
		t.Fatalf("list zz = %s", got)
	}

	// Limits and missing sessions.
	if _, err := c.PutState(ctx, "st", strings.Repeat("k", 257), nil, nil); err == nil || !strings.Contains(err.Error(), "limit is 256 bytes") {
		t.Fatalf("long key: %v", err)
	}
	if _, err := c.PutState(ctx, "st", "a key", nil, nil); err == nil || !strings.Contains(err.Error(), "not visible ASCII") {
		t.Fatalf("key with a space: %v", err)
	}
	if _, err := c.PutState(ctx, "st", "big", make([]byte, 101), nil); err == nil || !strings.Contains(err.Error(), "limit is 100 bytes") {
		t.Fatalf("big value: %v", err)
	}
	for name, err := range map[string]error{
		"get":    func() error { _, err := c.GetState(ctx, "nope", "k"); return err }(),
		"put":    func() error { _, err := c.PutState(ctx, "nope", "k", nil, nil); return err }(),
		"delete": c.DeleteState(ctx, "nope", "k"),
		"list":   func() error { _, err := c.ListState(ctx, "nope", ""); return err }(),
	} {
		if !errors.Is(err, client.ErrSessionNotFound) {
			t.Errorf("%s on a missing session: %v; want ErrSessionNotFound", name, err)
		}
	}
}

func TestTasks(t *testing.T) {
	e := newEnv(t, 4, true)
	e.spread("s1")
	n := e.startNode(e.nodeConfig("s1", t.TempDir()))
	c := e.client()
	ctx := ctxT(t)
	if _, err := c.Create(ctx, "tk", nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetTask(ctx, "tk", "t1"); !errors.Is(err, client.ErrNotFound) || errors.Is(err, client.ErrSessionNotFound) {
		t.Fatalf("get absent task: %v", err)
	}
	_, err := raw(t, n.Addr()).GetTask(ctx, &pb.GetTaskRequest{SessionId: "tk", TaskId: "t1"})
	if ei := errInfo(err); status.Code(err) != codes.NotFound || ei.GetReason() != "TASK_NOT_FOUND" {
		t.Fatalf("raw get absent task: %v", err)
	}
	t1, err := c.PutTask(ctx, "tk", client.Task{ID: "t1", Status: "working", Owner: "w1", Data: []byte("d"), TTL: time.Minute, CreatedAt: time.Unix(1, 0), Version: 77}, ver(0))
	if err != nil || t1.Version != 1 || t1.Status != "working" || t1.Owner != "w1" || string(t1.Data) != "d" || t1.TTL != time.Minute ||
		t1.CreatedAt.Unix() < 1000 || !t1.UpdatedAt.Equal(t1.CreatedAt) {
		t.Fatalf("create task = %+v, %v", t1, err)
	}
	if _, err := c.PutTask(ctx, "tk", client.Task{ID: "t1", Status: "x"}, ver(0)); !errors.Is(err, client.ErrVersionConflict) {
		t.Fatalf("create existing task: %v", err)
	}
	var t2 client.Task
	retryUntil(t, func() bool {
		t2, err = c.PutTask(ctx, "tk", client.Task{ID: "t1", Status: "completed", Result: []byte(`{"ok":true}`), Owner: "w1"}, ver(t1.Version))
		if err != nil {
			t.Fatal(err)
		}
		t1 = t2
		return t2.UpdatedAt.After(t2.CreatedAt)
	})
	if t2.Status != "completed" || string(t2.Result) != `{"ok":true}` || len(t2.Data) != 0 {
		t.Fatalf("update = %+v", t2)
	}
	g, err := c.GetTask(ctx, "tk", "t1")
	if err != nil || g.Version != t2.Version || !g.CreatedAt.Equal(t2.CreatedAt) || !g.UpdatedAt.Equal(t2.UpdatedAt) || g.Status != "completed" {
		t.Fatalf("get = %+v, %v; want %+v", g, err, t2)
	}
	if _, err := c.PutTask(ctx, "tk", client.Task{ID: "t1"}, ver(1)); !errors.Is(err, client.ErrVersionConflict) || !strings.Contains(err.Error(), fmt.Sprintf("current version %d", g.Version)) {
		t.Fatalf("stale task put: %v", err)
	}

	// Paging in id order.
	for i := 9; i >= 2; i-- {
		if _, err := c.PutTask(ctx, "tk", client.Task{ID: fmt.Sprintf("t%d", i), Status: "working"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	var pages []string
	after := ""
	for {
		ts, next, err := c.ListTasks(ctx, "tk", after, 4)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, tk := range ts {
			ids = append(ids, tk.ID)
		}
		pages = append(pages, strings.Join(ids, ","))
		if next == "" {
			break
		}
		after = next
	}
	if got := strings.Join(pages, " | "); got != "t1,t2,t3,t4 | t5,t6,t7,t8 | t9" {
		t.Fatalf("pages = %s", got)
	}
	if ts, next, err := c.ListTasks(ctx, "tk", "t9", 0); err != nil || len(ts) != 0 || next != "" {
		t.Fatalf("after the last: %v %q %v", ts, next, err)
	}
	if _, err := c.PutTask(ctx, "tk", client.Task{ID: ""}, nil); err == nil || !strings.Contains(err.Error(), "task_id is empty") {
		t.Fatalf("empty task id: %v", err)
	}
	if _, _, err := c.ListTasks(ctx, "nope", "", 0); !errors.Is(err, client.ErrSessionNotFound) {
		t.Fatalf("list on a missing session: %v", err)
	}
}

// retryUntil retries f until it returns true (the store's millisecond
// clock has moved), failing after a deadline.
func retryUntil(t *testing.T, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatal("updated_at never moved past created_at")
		}
	}
}
