package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"time"

	"github.com/erlmcp/erlmcp/controlplane"
	"github.com/erlmcp/erlmcp/internal/loadgen"
	storev1 "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// drSwitch makes the region of the role asked for active (the admin API's
// failback, which makes a named region active whatever its role) and
// verifies the switch end to end.
func drSwitch(ctx context.Context, o drOptions, stdout, stderr io.Writer) error {
	role := o.args[0]
	urls, token, err := ctlTarget(o.ctl)
	if err != nil {
		return err
	}
	var rs []controlplane.RegionDoc
	if err := adminGet(ctx, urls, token, "/v1/regions", &rs); err != nil {
		return err
	}
	target, from := pickRegion(rs, role), ""
	for _, r := range rs {
		if r.State == "active" {
			from = r.Name
		}
	}
	if target == "" {
		return fmt.Errorf("no region has role %s (regions: %s)", role, regionList(rs))
	}
	start := time.Now()
	if from == target {
		fmt.Fprintf(stderr, "switch: %s (%s) is already the active region; verifying\n", target, role)
	} else {
		fmt.Fprintf(stderr, "switch: active region %s → %s (%s) through the admin API\n", dash(from), target, role)
		var h controlplane.HistoryEntry
		if err := adminPost(ctx, urls, token, "/v1/regions/"+url.PathEscape(target)+"/failback", &h); err != nil {
			return err
		}
		if h.Outcome != "succeeded" && h.Outcome != "noop" {
			return fmt.Errorf("switch to %s: the control plane answered %s (%s)", target, h.Outcome, h.Reason)
		}
		fmt.Fprintf(stderr, "switch: %s recorded: %s → %s (%s)\n", h.Kind, dash(h.From), dash(h.To), h.Outcome)
	}
	if err := waitSwitched(ctx, urls, token, target, stderr); err != nil {
		return err
	}
	worker, value, err := sessionThroughRegion(ctx, urls, token, target)
	if err != nil {
		return fmt.Errorf("switch to %s: %w", target, err)
	}
	fmt.Fprintf(stderr, "switch: an MCP session works through worker %s in %s (counter reached %d)\n", worker, target, value)
	fmt.Fprintf(stdout, "active region: %s (%s), verified in %s\n", target, role, time.Since(start).Round(time.Millisecond))
	return nil
}

// pickRegion is the region a switch to role goes to: the role's region of
// the highest weight (then first by name). A cluster with no dr region
// (erlmcp up has one primary and two secondaries) uses its last secondary
// as the DR site, so secondary and dr name different regions.
func pickRegion(rs []controlplane.RegionDoc, role string) string {
	of := func(role string) []controlplane.RegionDoc {
		var out []controlplane.RegionDoc
		for _, r := range rs {
			if r.Role == role {
				out = append(out, r)
			}
		}
		sort.SliceStable(out, func(i, j int) bool {
			if out[i].Weight != out[j].Weight {
				return out[i].Weight > out[j].Weight
			}
			return out[i].Name < out[j].Name
		})
		return out
	}
	if c := of(role); len(c) > 0 {
		return c[0].Name
	}
	if c := of("secondary"); role == "dr" && len(c) > 1 {
		return c[len(c)-1].Name
	}
	return ""
}

func regionList(rs []controlplane.RegionDoc) string {
	s := ""
	for i, r := range rs {
		if i > 0 {
			s += ", "
		}
		s += r.Name + ":" + r.Role + ":" + r.State
	}
	return dash(s)
}

// waitSwitched waits until target is the only active region and every
// shard with a voter in target is led by a store in target. The control
// plane names a preferred leader in the active region (target_leader in
// the shard map), but store nodes do not act on it yet; so after a grace
// period the switch asks each such shard's leader to hand over itself
// (StoreAdminService.TransferLeader to the preferred voter in target).
func waitSwitched(ctx context.Context, urls []string, token, target string, progress io.Writer) error {
	last := ""
	start := time.Now()
	st := &storeAdmins{conns: map[string]*grpc.ClientConn{}}
	defer st.close()
	for {
		p, err := switchPending(ctx, urls, token, target)
		why := p.why
		if err == nil && why == "" {
			fmt.Fprintf(progress, "switch: %s active, shard leaders in %s\n", target, target)
			return nil
		}
		if err != nil {
			why = err.Error()
		}
		if why != last {
			fmt.Fprintf(progress, "switch: waiting: %s\n", why)
			last = why
		}
		if err == nil && len(p.moves) > 0 && time.Since(start) > leaderGrace {
			moved := 0
			for _, m := range p.moves {
				if st.transfer(ctx, m) == nil {
					moved++
				}
			}
			fmt.Fprintf(progress, "switch: asked %d shard leaders to hand over to a voter in %s (%d moved)\n", len(p.moves), target, moved)
		}
		t := time.NewTimer(500 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("switch to %s not verified: %s: %w", target, why, ctx.Err())
		case <-t.C:
		}
	}
}

// leaderGrace is how long the switch leaves leader moves to the cluster
// before it asks the leaders itself.
const leaderGrace = 3 * time.Second

// leaderMove is one shard whose leader (at addr) should hand over to store.
type leaderMove struct {
	shard uint32
	addr  string
	to    string
}

type pending struct {
	why   string
	moves []leaderMove
}

func switchPending(ctx context.Context, urls []string, token, target string) (pending, error) {
	var rs []controlplane.RegionDoc
	if err := adminGet(ctx, urls, token, "/v1/regions", &rs); err != nil {
		return pending{}, err
	}
	for _, r := range rs {
		if r.Name == target && r.State != "active" {
			return pending{why: fmt.Sprintf("region %s is %s", target, r.State)}, nil
		}
		if r.Name != target && r.State == "active" {
			return pending{why: fmt.Sprintf("region %s is still active", r.Name)}, nil
		}
	}
	var ms []controlplane.MemberStatus
	if err := adminGet(ctx, urls, token, "/v1/members", &ms); err != nil {
		return pending{}, err
	}
	region, addr := map[string]string{}, map[string]string{}
	for _, m := range ms {
		if m.Role == "store" {
			region[m.ID], addr[m.ID] = m.Region, m.Addr
		}
	}
	var ss []controlplane.ShardView
	if err := adminGet(ctx, urls, token, "/v1/shards", &ss); err != nil {
		return pending{}, err
	}
	var p pending
	for _, s := range ss {
		to := ""
		for _, r := range s.Replicas {
			if (r.Role == "voter" || r.Role == "") && region[r.Store] == target && (to == "" || r.Store == s.TargetLeader) {
				to = r.Store
			}
		}
		if to != "" && region[s.Leader] != target {
			p.moves = append(p.moves, leaderMove{shard: uint32(s.Shard), addr: addr[s.Leader], to: to})
		}
	}
	if len(p.moves) > 0 {
		p.why = fmt.Sprintf("%d of %d shards still led outside %s", len(p.moves), len(ss), target)
	}
	return p, nil
}

// storeAdmins holds connections to store nodes' admin service.
type storeAdmins struct {
	conns map[string]*grpc.ClientConn
}

func (s *storeAdmins) close() {
	for _, c := range s.conns {
		_ = c.Close()
	}
}

func (s *storeAdmins) transfer(ctx context.Context, m leaderMove) error {
	if m.addr == "" {
		return errors.New("leader not registered")
	}
	cc, ok := s.conns[m.addr]
	if !ok {
		var err error
		if cc, err = grpc.NewClient(m.addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			return err
		}
		s.conns[m.addr] = cc
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err := storev1.NewStoreAdminServiceClient(cc).TransferLeader(ctx, &storev1.TransferLeaderRequest{Shard: m.shard, ToStore: m.to})
	return err
}

// sessionThroughRegion opens an MCP session on a healthy worker of region
// and calls the demo counter twice: the second answer must follow the
// first (the session's state round-trips through the store).
func sessionThroughRegion(ctx context.Context, urls []string, token, region string) (string, int64, error) {
	var ms []controlplane.MemberStatus
	if err := adminGet(ctx, urls, token, "/v1/members", &ms); err != nil {
		return "", 0, err
	}
	var lastErr error = fmt.Errorf("no healthy worker in region %s", region)
	for _, m := range ms {
		if m.Role != "worker" || m.Region != region || !m.Healthy {
			continue
		}
		v, err := counterSession(ctx, "http://"+m.Addr+"/mcp")
		if err == nil {
			return m.ID, v, nil
		}
		lastErr = fmt.Errorf("worker %s: %w", m.ID, err)
	}
	return "", 0, lastErr
}

func counterSession(ctx context.Context, mcpURL string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c := &loadgen.Client{URL: mcpURL, HTTP: loadgen.NewHTTPClient(2, 3*time.Second), Protocol: "2025-11-25", ClientName: "erlmcp-dr"}
	s, err := c.Initialize(ctx)
	if err != nil {
		return 0, fmt.Errorf("initialize: %w", err)
	}
	defer func() { _ = s.Delete(context.WithoutCancel(ctx)) }()
	var prev int64
	for i := range 2 {
		res, err := s.Call(ctx, "tools/call", map[string]any{"name": "counter", "arguments": map[string]any{"by": 1}})
		if err != nil {
			return 0, fmt.Errorf("counter: %w", err)
		}
		var r struct {
			Structured struct {
				Value int64 `json:"value"`
			} `json:"structuredContent"`
		}
		if err := json.Unmarshal(res.Result, &r); err != nil {
			return 0, fmt.Errorf("counter answer %.200s: %w", res.Result, err)
		}
		if i == 1 && r.Structured.Value != prev+1 {
			return 0, errors.New("the counter did not follow its previous value: session state lost")
		}
		prev = r.Structured.Value
	}
	return prev, nil
}
