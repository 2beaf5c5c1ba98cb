package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// stallStore holds the first state call on the counter's key of the kind
// it is armed for until released: worker A frozen (SIGSTOP) at that point
// of a counter call, while the client has given up on it and moved on.
type stallStore struct {
	SessionStore
	kind    string // "get" or "put"
	once    sync.Once
	reached chan struct{}
	release chan struct{}
}

func (s *stallStore) stall(kind, key string) {
	if kind != s.kind || key != stateKeyPrefix+counterKey {
		return
	}
	s.once.Do(func() {
		close(s.reached)
		<-s.release
	})
}

func (s *stallStore) GetState(ctx context.Context, sid, key string) (StateEntry, error) {
	s.stall("get", key)
	return s.SessionStore.GetState(ctx, sid, key)
}

func (s *stallStore) PutState(ctx context.Context, sid, key string, value []byte, expected *uint64) (StateEntry, error) {
	s.stall("put", key)
	return s.SessionStore.PutState(ctx, sid, key, value, expected)
}

// The region HA run saw the counter skip (5, then 7): a counter call
// frozen on one worker while its client timed out and went on with the
// next call on another worker woke up and applied after that next call.
// The client, told nothing, then saw a value two ahead. The counter must
// not apply a request after a later one of the same session applied.
func TestCounterFrozenCallDoesNotSkip(t *testing.T) {
	for _, kind := range []string{"get", "put"} {
		t.Run("frozen before "+kind, func(t *testing.T) {
			e, cli := realStore(t)
			frozen := &stallStore{SessionStore: StoreFromClient(storeClient(t, e, cli)), kind: kind,
				reached: make(chan struct{}), release: make(chan struct{})}
			a := testWorker(t, frozen, "worker-a")
			b := testWorker(t, StoreFromClient(storeClient(t, e, cli)), "worker-b")
			sid := initSession(t, b.URL)
			h := sessionHeaders(sid)
			if r := post(t, b.URL, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, h); r.status != http.StatusAccepted {
				t.Fatalf("initialized: %d %s", r.status, r.body)
			}
			counter := func(url string, id int) (int64, error) {
				r := post(t, url, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"counter","arguments":{}}}`, id), h)
				return counterValue(r)
			}
			if v, err := counter(b.URL, 2); err != nil || v != 1 {
				t.Fatalf("first increment: %d, %v", v, err)
			}

			// Call 3 goes to A and freezes there; the client gives up on it.
			abandoned := make(chan error, 1)
			go func() {
				body := `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"counter","arguments":{}}}`
				req, _ := http.NewRequest(http.MethodPost, a.URL+"/mcp", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				for k, v := range h {
					req.Header.Set(k, v)
				}
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					resp.Body.Close()
				}
				abandoned <- err
			}()
			select {
			case <-frozen.reached:
			case <-time.After(30 * time.Second):
				t.Fatal("call 3 never reached the counter's state on worker A")
			}
			// Call 4 on B: its outcome for call 3 unknown, the client expects
			// 2 (call 3 not applied) or 3 (applied).
			v4, err := counter(b.URL, 4)
			if err != nil {
				t.Fatalf("call 4: %v", err)
			}
			// A wakes up and finishes (or refuses) call 3 nobody waits for.
			close(frozen.release)
			select {
			case <-abandoned:
			case <-time.After(60 * time.Second):
				t.Fatal("worker A never finished call 3")
			}
			v5, err := counter(b.URL, 5)
			if err != nil {
				t.Fatalf("call 5: %v", err)
			}
			if v5 != v4+1 {
				t.Fatalf("counter answered %d to call 4 and %d to call 5: it skipped (call 3, abandoned, applied after call 4)", v4, v5)
			}
		})
	}
}

// counterValue reads the counter tool's value from a reply.
func counterValue(r reply) (int64, error) {
	if r.status != http.StatusOK || r.rpc.Error != nil {
		return 0, fmt.Errorf("counter: %d %s", r.status, r.body)
	}
	var res struct {
		IsError           bool       `json:"isError"`
		StructuredContent CounterOut `json:"structuredContent"`
	}
	if err := json.Unmarshal(r.rpc.Result, &res); err != nil || res.IsError {
		return 0, fmt.Errorf("counter result %s: %v", r.rpc.Result, err)
	}
	return res.StructuredContent.Value, nil
}

// TestLaterApplied: a higher numeric id refuses a call only when it was
// applied while the call ran; a client numbering again from 1 (a new client
// object on the same session) is not refused, and string ids never are.
func TestLaterApplied(t *testing.T) {
	start := time.UnixMilli(1_000_000)
	applied := []counterUpdate{{Key: "7", Value: 3, At: start.UnixMilli() - 5000}, {Key: "9", Value: 4, At: start.UnixMilli() + 10}}
	for _, c := range []struct {
		key     string
		started time.Time
		want    string
	}{
		{"8", start, "9"},                 // 9 applied after 8 began: stale
		{"1", start.Add(time.Second), ""}, // began after every apply: a client numbering again
		{"6", start, "9"},                 // 7 came before it began, 9 after
		{"10", start, ""},                 // nothing higher
		{`"a"`, start, ""},                // string ids are not ordered
	} {
		got, ok := laterApplied(c.key, c.started, applied)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("laterApplied(%s, %v) = %q, %v; want %q", c.key, c.started.UnixMilli(), got, ok, c.want)
		}
	}
}
