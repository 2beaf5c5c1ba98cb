package worker

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// subscriptions/listen (MCP 2026-07-28) is a long-lived POST whose SSE
// stream carries the notifications the client opted in to: list changes
// and updates of the resources it names. Any worker may cause a change and
// any worker may hold the stream, so changes go through a Broker: etcd in
// a cluster (Run), in-process otherwise.

// ListenEvent is a change listen streams may be told about.
type ListenEvent struct {
	// Kind is ListenToolsChanged, ListenPromptsChanged,
	// ListenResourcesChanged or ListenResourceUpdated.
	Kind string `json:"kind"`
	// URI is the updated resource (ListenResourceUpdated).
	URI string `json:"uri,omitempty"`
}

// ListenEvent kinds.
const (
	ListenToolsChanged     = "tools"
	ListenPromptsChanged   = "prompts"
	ListenResourcesChanged = "resources"
	ListenResourceUpdated  = "resource"
)

// Broker carries ListenEvents to every worker's listen streams.
type Broker interface {
	// Publish sends ev to every subscriber, on every worker.
	Publish(ctx context.Context, ev ListenEvent) error
	// Subscribe returns the events published from now on; the channel is
	// closed when ctx ends.
	Subscribe(ctx context.Context) <-chan ListenEvent
}

// WithBroker sets how listen events reach other workers (default: this
// process only).
func WithBroker(b Broker) Option { return func(h *Handler) { h.broker = b } }

// WithMRTRKey sets the key that signs MRTR requestState; every worker of a
// cluster must use the same one (Run reads it from etcd). Default: a
// random key, good for one worker.
func WithMRTRKey(key []byte) Option { return func(h *Handler) { h.mrtrKey = key } }

func (h *Handler) publish(ctx context.Context, ev ListenEvent) error {
	return h.broker.Publish(ctx, ev)
}

// localBroker is a Broker within one process.
type localBroker struct {
	mu   sync.Mutex
	subs map[chan ListenEvent]struct{}
}

// NewLocalBroker returns an in-process Broker.
func NewLocalBroker() Broker { return &localBroker{subs: map[chan ListenEvent]struct{}{}} }

// listenBuffer is how many events a slow listen stream may lag behind
// before events to it are dropped.
const listenBuffer = 64

func (b *localBroker) Publish(_ context.Context, ev ListenEvent) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- ev:
		default: // a stuck stream loses events rather than blocking others
		}
	}
	return nil
}

func (b *localBroker) Subscribe(ctx context.Context) <-chan ListenEvent {
	ch := make(chan ListenEvent, listenBuffer)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	go func() {
		<-ctx.Done()
		b.mu.Lock()
		delete(b.subs, ch)
		close(ch)
		b.mu.Unlock()
	}()
	return ch
}

// etcdBroker publishes events as puts of one etcd key that every worker
// watches.
type etcdBroker struct {
	cli *clientv3.Client
	key string
}

// NewEtcdBroker returns a Broker over etcd key <prefix>notify/listen.
func NewEtcdBroker(cli *clientv3.Client, prefix string) Broker {
	return &etcdBroker{cli: cli, key: prefix + "notify/listen"}
}

func (b *etcdBroker) Publish(ctx context.Context, ev ListenEvent) error {
	v, _ := json.Marshal(ev)
	_, err := b.cli.Put(ctx, b.key, string(v))
	return err
}

func (b *etcdBroker) Subscribe(ctx context.Context) <-chan ListenEvent {
	out := make(chan ListenEvent, listenBuffer)
	wc := b.cli.Watch(clientv3.WithRequireLeader(ctx), b.key)
	go func() {
		defer close(out)
		for resp := range wc {
			for _, e := range resp.Events {
				var ev ListenEvent
				if e.Type != clientv3.EventTypePut || json.Unmarshal(e.Kv.Value, &ev) != nil {
					continue
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				default:
				}
			}
		}
	}()
	return out
}

// subscriptionFilter is subscriptions/listen's params.notifications.
type subscriptionFilter struct {
	ToolsListChanged      bool     `json:"toolsListChanged,omitempty"`
	PromptsListChanged    bool     `json:"promptsListChanged,omitempty"`
	ResourcesListChanged  bool     `json:"resourcesListChanged,omitempty"`
	ResourceSubscriptions []string `json:"resourceSubscriptions,omitempty"`
}

// honored is the part of f the server serves: tools list changes and
// resource updates (its prompt and resource lists never change).
func (h *Handler) honored(f subscriptionFilter) subscriptionFilter {
	out := subscriptionFilter{ToolsListChanged: f.ToolsListChanged}
	if len(h.server.resources)+len(h.server.templates) > 0 {
		out.ResourceSubscriptions = f.ResourceSubscriptions
	}
	return out
}

// notification is the listen-stream message for ev under filter f, if the
// client asked for it.
func (f subscriptionFilter) notification(ev ListenEvent) (string, map[string]any, bool) {
	switch ev.Kind {
	case ListenToolsChanged:
		return "notifications/tools/list_changed", map[string]any{}, f.ToolsListChanged
	case ListenPromptsChanged:
		return "notifications/prompts/list_changed", map[string]any{}, f.PromptsListChanged
	case ListenResourcesChanged:
		return "notifications/resources/list_changed", map[string]any{}, f.ResourcesListChanged
	case ListenResourceUpdated:
		for _, u := range f.ResourceSubscriptions {
			if u == ev.URI {
				return "notifications/resources/updated", map[string]any{"uri": ev.URI}, true
			}
		}
	}
	return "", nil, false
}

// listen serves subscriptions/listen: an SSE stream that starts with
// notifications/subscriptions/acknowledged and then carries the events the
// client opted in to, each tagged with the subscription id, until the
// client goes away or the worker shuts down (then the request's result
// ends it).
func (h *Handler) listen(w http.ResponseWriter, r *http.Request, msg *Message) {
	var p struct {
		Notifications *subscriptionFilter `json:"notifications"`
	}
	if e := decodeParams(msg.Params, &p); e != nil {
		h.fail(w, http.StatusBadRequest, msg.ID, e)
		return
	}
	if p.Notifications == nil {
		h.fail(w, http.StatusBadRequest, msg.ID, errorf(CodeInvalidParams, `Invalid params: subscriptions/listen needs "notifications"`))
		return
	}
	filter := h.honored(*p.Notifications)
	subID := randomHex(16)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	events := h.broker.Subscribe(ctx)

	meta := map[string]any{metaSubscriptionID: subID}
	send := func(method string, params map[string]any) {
		params["_meta"] = meta
		b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": method, "params": params})
		writeEvent(w, "", b)
	}
	sseHeaders(w)
	send("notifications/subscriptions/acknowledged", map[string]any{"notifications": filter})
	keep := time.NewTicker(h.cfg.SSEKeepAlive)
	defer keep.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			if method, params, want := filter.notification(ev); want {
				send(method, params)
			}
		case <-keep.C:
			writeComment(w)
		case <-h.base.Done():
			b, _ := encodeResult(msg.ID, map[string]any{"resultType": "complete", "_meta": meta})
			writeEvent(w, "", b)
			return
		case <-ctx.Done():
			return
		}
	}
}

// NotifyListChanged tells the listen streams (MCP 2026-07-28) of every
// worker that a list changed: kind is ListenToolsChanged,
// ListenPromptsChanged or ListenResourcesChanged.
func (r *Request) NotifyListChanged(ctx context.Context, kind string) error {
	return r.h.publish(ctx, ListenEvent{Kind: kind})
}
