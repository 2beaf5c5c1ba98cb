package worker

// These tests run workers against a real embedded etcd and a real session
// store node. Importing the store node package is test-only: the worker
// itself imports only sessionstore/client.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/config"
	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	"github.com/erlmcp/erlmcp/sessionstore"
	"github.com/erlmcp/erlmcp/sessionstore/client"
)

const testShards = 4

// realStore starts etcd, writes a cluster config and a shard map the way the
// control plane would, and starts one store node hosting every shard.
func realStore(t *testing.T) (*testcluster.Etcd, *clientv3.Client) {
	t.Helper()
	e, cli, _ := realStoreNode(t)
	return e, cli
}

// realStoreNode is realStore, also returning the store node (closed when
// the test ends, or before by the test).
func realStoreNode(t *testing.T) (*testcluster.Etcd, *clientv3.Client, *sessionstore.Node) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts etcd and a store node")
	}
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	put := func(key string, v any) {
		b, _ := json.Marshal(v)
		if _, err := cli.Put(context.Background(), key, string(b)); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
	}
	put(clusterstate.ConfigKey(e.Prefix), clusterstate.ClusterConfig{ShardCount: testShards, ReplicationFactor: 1, CreatedAt: time.Now()})
	for i := range testShards {
		put(clusterstate.ShardKey(e.Prefix, i), clusterstate.Shard{Shard: i, ConfEpoch: 1,
			Replicas: []clusterstate.Replica{{Store: "store-1", Role: clusterstate.RoleVoter}}})
	}
	cfg := sessionstore.DefaultConfig()
	cfg.Common = testCommon(e, "store-1")
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := sessionstore.Start(ctx, cfg, logging.Discard())
	if err != nil {
		t.Fatalf("start store node: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	select {
	case <-n.Ready():
	case <-ctx.Done():
		t.Fatal("store node not ready")
	}
	return e, cli, n
}

func testCommon(e *testcluster.Etcd, id string) config.Common {
	c := config.DefaultCommon()
	c.ID = id
	c.EtcdEndpoints = e.Endpoint
	c.Prefix = e.Prefix
	c.LeaseTTL = 2 * time.Second
	return c
}

// storeClient is what one worker process would hold.
func storeClient(t *testing.T, e *testcluster.Etcd, cli *clientv3.Client) *client.Client {
	t.Helper()
	c, err := client.New(context.Background(), client.Config{Etcd: cli, Prefix: e.Prefix, RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRealStoreCallEndsWithinRequestTimeout: a worker's store client
// gives up on a store that cannot answer (here: gone) after the worker's
// RequestTimeout (storeClientConfig sets its retry budget), with an error
// the worker answers as the store's failure, although the call's ctx runs
// for minutes (a tools/call's CallTimeout) and the client's own default
// budget is 30 s. Without that wiring the call runs past the 10 s bound.
func TestRealStoreCallEndsWithinRequestTimeout(t *testing.T) {
	e, cli, node := realStoreNode(t)
	cfg := DefaultConfig()
	cfg.Common = testCommon(e, "w1")
	cfg.RequestTimeout = time.Second
	sc, err := client.New(context.Background(), storeClientConfig(cfg, cli, logging.Discard()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sc.Close() })
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	if err := sc.Ready(rctx); err != nil {
		t.Fatal(err)
	}
	store := StoreFromClient(sc)
	srv := testWorker(t, store, "w1")
	sid := initSession(t, srv.URL)
	if err := node.Close(); err != nil {
		t.Fatal(err)
	}

	const bound = 10 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), DefaultCallTimeout)
	defer cancel()
	start := time.Now()
	_, err = store.GetState(ctx, sid, stateKeyPrefix+"counter")
	took := time.Since(start)
	if took > bound || !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("GetState with the store gone: %v after %s, want ErrStoreUnavailable within %s (budget %s)", err, took, bound, cfg.RequestTimeout)
	}
	t.Logf("GetState with the store gone ended after %s (budget %s)", took, cfg.RequestTimeout)
	// Through the handler: the counter's state call fails the same way and
	// the client gets a 503 with -32003 it may retry.
	if r := post(t, srv.URL, counterCall, sessionHeaders(sid)); r.status != http.StatusServiceUnavailable || r.rpc.Error == nil || r.rpc.Error.Code != CodeStoreUnavailable {
		t.Fatalf("counter with the store gone: %d %s", r.status, r.body)
	}
}

// TestRealStoreTwoWorkers: initialize on worker A, serve the session on
// worker B, each with its own store client, against a real store node.
func TestRealStoreTwoWorkers(t *testing.T) {
	e, cli := realStore(t)
	a := testWorker(t, StoreFromClient(storeClient(t, e, cli)), "worker-a")
	b := testWorker(t, StoreFromClient(storeClient(t, e, cli)), "worker-b")

	r := post(t, a.URL, initBody, nil)
	sid := r.header.Get(HeaderSessionID)
	if r.status != 200 || sid == "" || r.header.Get(HeaderWorker) != "worker-a" {
		t.Fatalf("initialize on A: %d %s", r.status, r.body)
	}
	h := sessionHeaders(sid)
	if r := post(t, b.URL, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, h); r.status != 202 {
		t.Fatalf("initialized on B: %d %s", r.status, r.body)
	}
	// The flag written by B is visible to A.
	sc := storeClient(t, e, cli)
	s, err := sc.Get(context.Background(), sid, false)
	if err != nil {
		t.Fatal(err)
	}
	var rec sessionRecord
	mustUnmarshal(t, s.Data, &rec)
	if !rec.Initialized || rec.ProtocolVersion != "2025-06-18" || rec.CreatedBy != "worker-a" || s.Version != 2 {
		t.Fatalf("stored session v%d %s", s.Version, s.Data)
	}
	r = post(t, b.URL, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"via b"}}}`, h)
	var res ToolResult
	mustUnmarshal(t, r.rpc.Result, &res)
	if r.header.Get(HeaderWorker) != "worker-b" || len(res.Content) != 1 || res.Content[0].Text != "via b" {
		t.Fatalf("tools/call on B: %d %s", r.status, r.body)
	}
	if r := post(t, a.URL, `{"jsonrpc":"2.0","id":3,"method":"tools/list"}`, h); r.status != 200 || r.rpc.Error != nil {
		t.Fatalf("tools/list on A: %d %s", r.status, r.body)
	}
	if r := del(t, b.URL, sid); r.status != 204 {
		t.Fatalf("DELETE on B: %d %s", r.status, r.body)
	}
	if r := post(t, a.URL, `{"jsonrpc":"2.0","id":4,"method":"ping"}`, h); r.status != 404 || r.rpc.Error == nil || r.rpc.Error.Code != CodeSessionNotFound {
		t.Fatalf("ping on A after DELETE: %d %s", r.status, r.body)
	}
	if r := del(t, a.URL, sid); r.status != 404 {
		t.Fatalf("second DELETE: %d %s", r.status, r.body)
	}
	if _, err := sc.Get(context.Background(), sid, false); !errors.Is(mapClientErr(err), ErrSessionNotFound) {
		t.Fatalf("Get after DELETE: %v", err)
	}
}

// TestRealStoreExpiry: a session idle past its TTL answers 404.
func TestRealStoreExpiry(t *testing.T) {
	e, cli := realStore(t)
	cfg := DefaultConfig()
	cfg.Common.ID = "w"
	cfg.SessionIdleTTL = time.Second
	sc := storeClient(t, e, cli)
	srv := httptest.NewServer(NewHandler(StoreFromClient(sc), WithConfig(cfg)))
	t.Cleanup(srv.Close)
	sid := initSession(t, srv.URL)
	// Poll without touching: a ping would keep the session alive.
	testcluster.WaitFor(t, 10*time.Second, "session to expire", func() error {
		if _, err := sc.Get(context.Background(), sid, false); !errors.Is(err, client.ErrNotFound) {
			return fmt.Errorf("get: %v", err)
		}
		return nil
	})
	r := post(t, srv.URL, `{"jsonrpc":"2.0","id":1,"method":"ping"}`, sessionHeaders(sid))
	if r.status != http.StatusNotFound || r.rpc.Error == nil || r.rpc.Error.Code != CodeSessionNotFound {
		t.Fatalf("ping on expired session: %d %s", r.status, r.body)
	}
}

// TestRunRegistersServesAndDrains runs Run against etcd and the store:
// it registers with its real address, is ready, serves MCP, and on cancel
// leaves membership and returns nil.
func TestRunRegistersServesAndDrains(t *testing.T) {
	e, cli := realStore(t)
	cfg := DefaultConfig()
	cfg.Common = testCommon(e, "worker-run")
	cfg.Listen = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, logging.Discard()) }()

	var addr string
	testcluster.WaitFor(t, 15*time.Second, "worker registered", func() error {
		ms, err := membership.List(context.Background(), cli, e.Prefix, membership.RoleWorker)
		if err != nil {
			return err
		}
		if len(ms) != 1 || ms[0].ID != "worker-run" || ms[0].Draining {
			return fmt.Errorf("members %+v", ms)
		}
		addr = ms[0].Addr
		return nil
	})
	url := "http://" + addr
	testcluster.WaitFor(t, 10*time.Second, "/readyz 200", func() error {
		resp, err := http.Get(url + "/readyz")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%d %s", resp.StatusCode, b)
		}
		return nil
	})
	sid := initSession(t, url)
	r := post(t, url, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"run"}}}`, sessionHeaders(sid))
	if r.status != 200 || r.header.Get(HeaderWorker) != "worker-run" || r.rpc.Error != nil {
		t.Fatalf("tools/call: %d %s", r.status, r.body)
	}

	// Watch the member key: on stop it must turn draining, then vanish.
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	key := membership.Key(e.Prefix, membership.RoleWorker, "worker-run")
	cur, err := cli.Get(wctx, key)
	if err != nil {
		t.Fatal(err)
	}
	// From the next revision on, so no event is missed however late the
	// watch is set up.
	events := cli.Watch(wctx, key, clientv3.WithRev(cur.Header.Revision+1))

	cancel()
	var sawDraining, sawDelete bool
	for !sawDelete {
		select {
		case wr, ok := <-events:
			if !ok {
				t.Fatalf("watch ended: draining %v, deleted %v", sawDraining, sawDelete)
			}
			for _, ev := range wr.Events {
				switch ev.Type {
				case clientv3.EventTypePut:
					m, err := membership.Decode(ev.Kv.Value)
					if err != nil {
						t.Fatal(err)
					}
					sawDraining = sawDraining || m.Draining
				case clientv3.EventTypeDelete:
					sawDelete = true
				}
			}
		case <-wctx.Done():
			t.Fatalf("member key: draining %v, deleted %v", sawDraining, sawDelete)
		}
	}
	if !sawDraining {
		t.Error("the worker left membership without marking itself draining first")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	ms, err := membership.List(context.Background(), cli, e.Prefix, membership.RoleWorker)
	if err != nil || len(ms) != 0 {
		t.Fatalf("members after stop: %+v %v", ms, err)
	}
	if _, err := http.Get(url + "/healthz"); err == nil {
		t.Fatal("still serving after Run returned")
	}
}

// TestRunBadConfig: Run refuses a config that does not validate.
func TestRunBadConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Common.ID = ""
	if err := Run(context.Background(), cfg, logging.Discard()); err == nil {
		t.Fatal("Run accepted an empty id")
	}
}

// TestRealStoreStreams: the cross-worker paths over a real store node,
// each worker with its own store client: log level set on B honoured on
// A, a stream resumed on B, a cancellation on B, a sampling answer on B.
func TestRealStoreStreams(t *testing.T) {
	e, cli := realStore(t)
	c := clusterOver(t, []string{"a", "b"}, nil, func() SessionStore { return StoreFromClient(storeClient(t, e, cli)) })
	v := "2025-11-25"
	sid := initOn(t, c.urls["a"], v, `{"sampling":{}}`)
	if r := post(t, c.urls["b"], `{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"error"}}`, hdr(sid, v)); r.rpc.Error != nil {
		t.Fatalf("setLevel: %s", r.body)
	}
	var levels []string
	for _, ev := range openSSE(t, postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"levels"}}`, hdr(sid, v))).rest() {
		if ev.data != "" && decodeMsg(t, ev.data).Method == "notifications/message" {
			levels = append(levels, ev.data)
		}
	}
	if len(levels) != 4 {
		t.Fatalf("messages at error and above: %q", levels)
	}

	// Resume on B.
	post(t, c.urls["b"], `{"jsonrpc":"2.0","id":20,"method":"logging/setLevel","params":{"level":"info"}}`, hdr(sid, v))
	s := openSSE(t, postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"gate"}}`, hdr(sid, v)))
	priming, _ := s.next()
	waitStarted(t, c.hk, "gate")
	s.close()
	r := openSSE(t, getReq(t, c.urls["b"], sid, v, priming.id))
	c.hk.release <- struct{}{}
	var datas []string
	for _, ev := range r.rest() {
		if ev.data != "" {
			datas = append(datas, ev.data)
		}
	}
	if len(datas) != 3 || !strings.Contains(datas[0], `"one"`) || !strings.Contains(datas[1], `"two"`) || !strings.Contains(datas[2], `"done"`) {
		t.Fatalf("resumed: %q", datas)
	}

	// Cancel on B.
	s = openSSE(t, postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"block"}}`, hdr(sid, v)))
	waitStarted(t, c.hk, "block")
	post(t, c.urls["b"], `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}`, hdr(sid, v))
	select {
	case cause := <-c.hk.finished:
		if !errors.Is(cause, errCancelled) {
			t.Fatalf("cause %v", cause)
		}
	case <-time.After(testDeadline):
		t.Fatal("not cancelled")
	}
	s.rest()

	// Sampling answered on B.
	s = openSSE(t, postReq(t, c.urls["a"], `{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"test_sampling","arguments":{"prompt":"x"}}}`, hdr(sid, v)))
	var req rpcMsg
	for req.Method == "" {
		ev, ok := s.next()
		if !ok {
			t.Fatal("stream ended")
		}
		if ev.data != "" {
			req = decodeMsg(t, ev.data)
		}
	}
	post(t, c.urls["b"], `{"jsonrpc":"2.0","id":`+string(req.ID)+`,"result":{"role":"assistant","content":{"type":"text","text":"ok"},"model":"m"}}`, hdr(sid, v))
	evs := s.rest()
	if last := evs[len(evs)-1].data; !strings.Contains(last, "LLM response: ok") {
		t.Fatalf("sampling: %s", last)
	}
}
