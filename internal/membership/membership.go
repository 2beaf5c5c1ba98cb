// Package membership registers a process under <prefix>members/<role>/<id>
// with its own etcd lease and lists the members of a role.
//
// One lease per process: the key vanishes when the process stops keeping
// the lease alive, at most the lease TTL (plus etcd's 0.5 s expiry check)
// after its last keepalive.
package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/erlmcp/erlmcp/internal/etcdclient"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Roles.
const (
	RoleWorker       = "worker"
	RoleStore        = "store"
	RoleControlPlane = "controlplane"
	RoleFront        = "front"
)

// Member is the JSON value of a membership key.
type Member struct {
	Role string `json:"role"`
	ID   string `json:"id"`
	// Addr is where the role serves: HTTP for workers, fronts and control
	// planes (admin API), gRPC for store nodes.
	Addr string `json:"addr"`
	// HTTPAddr serves /healthz, /readyz and /metrics when it differs from Addr.
	HTTPAddr  string    `json:"http_addr,omitempty"`
	Region    string    `json:"region"`
	Zone      string    `json:"zone"`
	Version   string    `json:"version"`
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
	Draining  bool      `json:"draining"`
	Load      float64   `json:"load"`
	// CommandFormat (stores only) is the newest session-store command
	// format the store's build applies; 0 (absent) means the first, JSON.
	// Stores propose a format only once every store advertises it, so no
	// replica ever receives an entry its build cannot apply.
	CommandFormat int `json:"command_format,omitempty"`
	// RaftTickMs and RaftElectionTicks (stores only) are the store's Raft
	// tick and election timeout in ticks. Leader leases are as long as the
	// followers' election timeout, so stores use them only while every
	// store advertises the same; 0 (absent) means unknown.
	RaftTickMs        int `json:"raft_tick_ms,omitempty"`
	RaftElectionTicks int `json:"raft_election_ticks,omitempty"`
}

// Key returns the membership key of role/id under prefix.
func Key(prefix, role, id string) string {
	return prefix + "members/" + role + "/" + id
}

// RolePrefix returns the key prefix under which a role's members live.
func RolePrefix(prefix, role string) string {
	return prefix + "members/" + role + "/"
}

// Registration keeps one member's key alive.
type Registration struct {
	cli    *clientv3.Client
	key    string
	ttl    time.Duration
	log    *logrus.Entry
	mu     sync.Mutex
	member Member
	lease  clientv3.LeaseID
	cancel context.CancelFunc
	done   chan struct{}
}

// Register grants a lease of ttl, writes m under it, and keeps it alive in
// the background until Close. If the lease is lost (etcd unreachable for
// longer than ttl), the background loop grants a new lease and writes the
// key again as soon as etcd answers. Register blocks until the first write
// succeeds or ctx ends.
func Register(ctx context.Context, cli *clientv3.Client, prefix string, m Member, ttl time.Duration, log *logrus.Entry) (*Registration, error) {
	if m.Role == "" || m.ID == "" {
		return nil, errors.New("membership: role and id are required")
	}
	r := &Registration{cli: cli, key: Key(prefix, m.Role, m.ID), ttl: ttl, log: log, member: m, done: make(chan struct{})}
	ka, err := r.grantAndPut(ctx)
	if err != nil {
		return nil, fmt.Errorf("register %s in etcd: %w", r.key, err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.keepAlive(lctx, ka)
	return r, nil
}

func (r *Registration) grantAndPut(ctx context.Context) (<-chan etcdclient.Renewal, error) {
	secs := int64((r.ttl + time.Second - 1) / time.Second)
	g, err := r.cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	r.mu.Lock()
	r.lease = g.ID
	val, _ := json.Marshal(r.member)
	r.mu.Unlock()
	if _, err := r.cli.Put(ctx, r.key, string(val), clientv3.WithLease(g.ID)); err != nil {
		return nil, fmt.Errorf("put %s: %w", r.key, err)
	}
	// The keepalive stream lives as long as the registration, not ctx.
	kctx, kcancel := context.WithCancel(context.Background())
	go func() { <-r.done; kcancel() }()
	// Renewals with per-call timeouts: a frozen etcd member must not
	// starve the lease (see etcdclient.KeepAlive).
	return etcdclient.KeepAlive(kctx, r.cli, g.ID), nil
}

func (r *Registration) keepAlive(ctx context.Context, ka <-chan etcdclient.Renewal) {
	for {
		for range ka {
		}
		// The channel closed: the lease expired, was revoked, or Close ran.
		if ctx.Err() != nil {
			return
		}
		lost := r.LeaseID()
		r.log.WithField("key", r.key).WithField("lease", fmt.Sprintf("%x", int64(lost))).Warn("membership lease lost; registering again")
		backoff := 200 * time.Millisecond
		for ctx.Err() == nil {
			actx, cancel := context.WithTimeout(ctx, r.ttl)
			next, err := r.grantAndPut(actx)
			cancel()
			if err == nil {
				ka = next
				// Asked only now, so the lookup (a second at most) does not
				// delay the new registration the member waits on to serve.
				r.log.WithField("key", r.key).WithField("etcd_says_of_lost_lease", r.leaseState(lost)).Info("membership registered again")
				break
			}
			r.log.WithError(err).WithField("key", r.key).Warn("membership re-register failed; will retry")
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// leaseState says, for the log, what etcd reports of the lease whose
// renewals ended: gone (etcd expired or revoked it) or still alive (the
// renewals failed on this side: no member answered in time). The two call
// for different searches when every member loses its lease at once.
func (r *Registration) leaseState(lease clientv3.LeaseID) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ttl, err := r.cli.TimeToLive(ctx, lease)
	switch {
	case err != nil:
		return fmt.Sprintf("unknown (lease lookup failed: %v)", err)
	case ttl.TTL <= 0:
		return "lease not found: etcd expired or revoked it"
	default:
		return fmt.Sprintf("lease still alive, %ds left: renewals failed on this side", ttl.TTL)
	}
}

// LeaseID is the lease the key is currently written under.
func (r *Registration) LeaseID() clientv3.LeaseID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease
}

// Update changes the registered value (draining, load) under the same lease.
func (r *Registration) Update(ctx context.Context, change func(*Member)) error {
	r.mu.Lock()
	change(&r.member)
	val, _ := json.Marshal(r.member)
	lease := r.lease
	r.mu.Unlock()
	_, err := r.cli.Put(ctx, r.key, string(val), clientv3.WithLease(lease))
	if err != nil {
		return fmt.Errorf("update %s: %w", r.key, err)
	}
	return nil
}

// Close stops the keepalive and revokes the lease, which deletes the key at
// once. It blocks until the revoke is answered or ctx ends; when etcd cannot
// be reached the key still goes when the lease expires.
func (r *Registration) Close(ctx context.Context) error {
	r.cancel()
	select {
	case <-r.done:
		return nil
	default:
		close(r.done)
	}
	_, err := r.cli.Revoke(ctx, r.LeaseID())
	return err
}

// Decode parses a membership value.
func Decode(val []byte) (Member, error) {
	var m Member
	if err := json.Unmarshal(val, &m); err != nil {
		return m, fmt.Errorf("decode member: %w", err)
	}
	return m, nil
}

// FromKVs decodes every member value in kvs (as from etcdwatch), sorted by
// role then id. Values that do not decode are skipped.
func FromKVs(kvs map[string][]byte) []Member {
	out := make([]Member, 0, len(kvs))
	for _, v := range kvs {
		if m, err := Decode(v); err == nil {
			out = append(out, m)
		}
	}
	sortMembers(out)
	return out
}

// List returns the members of role (all roles when role is ""), sorted.
func List(ctx context.Context, cli *clientv3.Client, prefix, role string) ([]Member, error) {
	p := prefix + "members/"
	if role != "" {
		p = RolePrefix(prefix, role)
	}
	resp, err := cli.Get(ctx, p, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", strings.TrimSuffix(p, "/"), err)
	}
	kvs := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	return FromKVs(kvs), nil
}

func sortMembers(ms []Member) {
	sort.Slice(ms, func(i, j int) bool {
		if ms[i].Role != ms[j].Role {
			return ms[i].Role < ms[j].Role
		}
		return ms[i].ID < ms[j].ID
	})
}
