package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// UpCluster injects faults into a cluster run by `erlmcp up`, found by its
// data dir. It picks victims through the control plane's admin API
// (members with their pids, shard leaders, the control-plane leader) and
// signals them directly; the supervisor of `up` restarts what exits.
type UpCluster struct {
	DataDir   string
	AdminURLs []string
	Token     string
	// MCPURL is the cluster's MCP endpoint (the front).
	MCPURL string
	HTTP   *http.Client
	// RestartTimeout bounds the wait for one process of a rolling restart
	// to be back, registered and healthy (and, for a store node, caught up).
	RestartTimeout time.Duration
}

// upClusterFile is the part of <data-dir>/cluster.json read here (written
// by erlmcp up).
type upClusterFile struct {
	MCPURL     string   `json:"mcp_url"`
	FrontURLs  []string `json:"front_urls"`
	AdminURLs  []string `json:"admin_urls"`
	AdminToken string   `json:"admin_token"`
}

// OpenUpCluster reads <dataDir>/cluster.json.
func OpenUpCluster(dataDir string) (*UpCluster, error) {
	path := filepath.Join(dataDir, "cluster.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--data-dir %s: no erlmcp up cluster there: %w", dataDir, err)
	}
	var f upClusterFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("cluster file %s: %w", path, err)
	}
	if len(f.AdminURLs) == 0 {
		return nil, fmt.Errorf("cluster file %s names no admin URL", path)
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("--data-dir %s: %w", dataDir, err)
	}
	return &UpCluster{
		DataDir: abs, AdminURLs: f.AdminURLs, Token: f.AdminToken, MCPURL: f.MCPURL,
		HTTP: &http.Client{Timeout: 3 * time.Second}, RestartTimeout: 90 * time.Second,
	}, nil
}

// FrontURLs lists the MCP endpoints of every front of the cluster (from
// cluster.json's front_urls when up wrote it, else its mcp_url).
func FrontURLs(dataDir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "cluster.json"))
	if err != nil {
		return nil, fmt.Errorf("--data-dir %s: no erlmcp up cluster there: %w", dataDir, err)
	}
	var f upClusterFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("cluster file in %s: %w", dataDir, err)
	}
	if len(f.FrontURLs) > 0 {
		return f.FrontURLs, nil
	}
	if f.MCPURL == "" {
		return nil, fmt.Errorf("cluster file in %s names no MCP endpoint", dataDir)
	}
	return []string{f.MCPURL}, nil
}

// Member is a registered process as the admin API lists it.
type Member struct {
	Role    string `json:"role"`
	ID      string `json:"id"`
	Region  string `json:"region"`
	PID     int    `json:"pid"`
	Healthy bool   `json:"healthy"`
}

// ShardInfo is one shard as the admin API lists it.
type ShardInfo struct {
	Shard    int    `json:"shard"`
	Leader   string `json:"leader"`
	Replicas []struct {
		Store string `json:"store"`
		Role  string `json:"role"`
		Lag   *int64 `json:"lag"`
	} `json:"replicas"`
}

// Get asks each admin URL in turn (a standby answers reads too) and
// decodes the first answer.
func (u *UpCluster) Get(ctx context.Context, path string, v any) error {
	var errs []error
	for _, base := range u.AdminURLs {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+path, nil)
		if err != nil {
			return fmt.Errorf("admin API %s: %w", base, err)
		}
		req.Header.Set("Authorization", "Bearer "+u.Token)
		resp, err := u.HTTP.Do(req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			errs = append(errs, fmt.Errorf("GET %s%s: %s %.200s", base, path, resp.Status, bytes.TrimSpace(body)))
			continue
		}
		if err := json.Unmarshal(body, v); err != nil {
			return fmt.Errorf("GET %s%s: %w", base, path, err)
		}
		return nil
	}
	return fmt.Errorf("admin API unreachable: %w", errors.Join(errs...))
}

// Members lists the registered processes, sorted by role and id.
func (u *UpCluster) Members(ctx context.Context) ([]Member, error) {
	var ms []Member
	if err := u.Get(ctx, "/v1/members", &ms); err != nil {
		return nil, err
	}
	sort.Slice(ms, func(i, j int) bool {
		if ms[i].Role != ms[j].Role {
			return ms[i].Role < ms[j].Role
		}
		return ms[i].ID < ms[j].ID
	})
	return ms, nil
}

// Shards lists the shards with their leaders and replicas.
func (u *UpCluster) Shards(ctx context.Context) ([]ShardInfo, error) {
	var ss []ShardInfo
	err := u.Get(ctx, "/v1/shards", &ss)
	return ss, err
}

// Leader is the id of the control-plane leader.
func (u *UpCluster) Leader(ctx context.Context) (string, error) {
	var li struct {
		ID string `json:"id"`
	}
	if err := u.Get(ctx, "/v1/leader", &li); err != nil {
		return "", err
	}
	if li.ID == "" {
		return "", errors.New("no control-plane leader right now")
	}
	return li.ID, nil
}

// ActiveRegion is the name of the region the control plane has active.
func (u *UpCluster) ActiveRegion(ctx context.Context) (string, error) {
	var rs []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	}
	if err := u.Get(ctx, "/v1/regions", &rs); err != nil {
		return "", err
	}
	for _, r := range rs {
		if r.State == "active" {
			return r.Name, nil
		}
	}
	return "", fmt.Errorf("no active region in %+v", rs)
}

// Victims resolves a fault's target to the processes it hits now.
func (u *UpCluster) Victims(ctx context.Context, f Fault) ([]Victim, error) {
	if f.Target == TargetEtcd {
		es, err := u.etcdVictims()
		if err != nil {
			return nil, err
		}
		// The last member, so the first (the one clients list first) stays.
		return es[len(es)-1:], nil
	}
	ms, err := u.Members(ctx)
	if err != nil {
		return nil, err
	}
	healthy := func(role string) []Member {
		var out []Member
		for _, m := range ms {
			if m.Role == role && m.Healthy && m.PID > 0 {
				out = append(out, m)
			}
		}
		return out
	}
	victim := func(m Member, note string) Victim {
		return Victim{ID: m.ID, Role: m.Role, Region: m.Region, PID: m.PID, Note: note}
	}
	one := func(role string) ([]Victim, error) {
		c := healthy(role)
		if len(c) == 0 {
			return nil, fmt.Errorf("%s: %w (no healthy %s registered)", f.Target, errNoVictim, role)
		}
		return []Victim{victim(c[0], "")}, nil
	}
	switch t := f.Target; {
	case t == TargetWorker, t == TargetFront, t == TargetStore:
		role := t
		return one(role)
	case t == TargetStoreLeader, t == TargetStoreFollower:
		ss, err := u.Shards(ctx)
		if err != nil {
			return nil, err
		}
		leads := map[string]int{}
		holds := map[string]bool{}
		for _, s := range ss {
			leads[s.Leader]++
			for _, r := range s.Replicas {
				holds[r.Store] = true
			}
		}
		c := healthy("store")
		var cands []Member
		for _, m := range c {
			if holds[m.ID] {
				cands = append(cands, m)
			}
		}
		if len(cands) == 0 {
			return nil, fmt.Errorf("%s: %w (no healthy store holds a replica)", t, errNoVictim)
		}
		sort.SliceStable(cands, func(i, j int) bool {
			if t == TargetStoreLeader {
				return leads[cands[i].ID] > leads[cands[j].ID]
			}
			return leads[cands[i].ID] < leads[cands[j].ID]
		})
		m := cands[0]
		return []Victim{victim(m, fmt.Sprintf("leads %d of %d shards", leads[m.ID], len(ss)))}, nil
	case t == TargetCPLeader, t == TargetCPStandby:
		leader, err := u.Leader(ctx)
		if err != nil {
			return nil, err
		}
		for _, m := range healthy("controlplane") {
			if (m.ID == leader) == (t == TargetCPLeader) {
				note := "leader"
				if t == TargetCPStandby {
					note = "standby"
				}
				return []Victim{victim(m, note)}, nil
			}
		}
		return nil, fmt.Errorf("%s: %w (leader %s)", t, errNoVictim, leader)
	case strings.HasPrefix(t, TargetRegion+"="):
		region := strings.TrimPrefix(t, TargetRegion+"=")
		if region == "active" {
			if region, err = u.ActiveRegion(ctx); err != nil {
				return nil, err
			}
		}
		var out []Victim
		for _, m := range ms {
			if m.Region == region && m.PID > 0 {
				out = append(out, victim(m, ""))
			}
		}
		// etcd members do not register; up places etcd-i in region i-1
		// round robin, as it does every role.
		if es, err := u.etcdVictims(); err == nil {
			for _, e := range es {
				if n, err := strconv.Atoi(strings.TrimPrefix(e.ID, "etcd-")); err == nil && n >= 1 && upRegions[(n-1)%len(upRegions)] == region {
					e.Region = region
					out = append(out, e)
				}
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("%s: %w", t, errNoVictim)
		}
		return out, nil
	case strings.HasPrefix(t, TargetID+"="):
		id := strings.TrimPrefix(t, TargetID+"=")
		for _, m := range ms {
			if m.ID == id && m.PID > 0 {
				return []Victim{victim(m, "")}, nil
			}
		}
		return nil, fmt.Errorf("%s: %w", t, errNoVictim)
	}
	return nil, fmt.Errorf("unknown target %q", f.Target)
}

// upRegions are the regions erlmcp up spreads its processes over, round
// robin in this order (localcluster.Regions).
var upRegions = []string{"us-east-1", "eu-west-1", "ap-southeast-1"}

// etcdVictims finds the etcd member processes of this cluster, sorted by
// name: children `erlmcp etcd` of `up --etcd-members` whose data dir lies
// in the cluster's.
func (u *UpCluster) etcdVictims() ([]Victim, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("etcd: listing processes: %w", err)
	}
	var out []Victim
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if len(args) < 2 || args[1] != "etcd" {
			continue
		}
		name := ""
		ours := false
		for _, a := range args[2:] {
			if v, ok := strings.CutPrefix(a, "--data-dir="); ok && strings.HasPrefix(v, u.DataDir+string(filepath.Separator)) {
				ours = true
			}
			if v, ok := strings.CutPrefix(a, "--name="); ok {
				name = v
			}
		}
		if ours {
			out = append(out, Victim{ID: name, Role: "etcd", PID: pid})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("etcd: %w (etcd runs inside erlmcp up; start it with --etcd-members 3)", errNoVictim)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Inject carries out f (see Injector).
func (u *UpCluster) Inject(ctx context.Context, f Fault, log func(string, ...any)) ([]Victim, error) {
	if f.Action == ActionRollingRestart {
		return u.rollingRestart(ctx, log)
	}
	vs, err := u.Victims(ctx, f)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(f.Target, TargetRegion+"=") && len(vs) > 0 {
		// Said before the fault, from the map it hits: a failover time
		// that is the whole hold for some sessions is then explained.
		if qs, err := u.quorumsIn(ctx, vs[0].Region); err == nil && len(qs) > 0 {
			log("loadtest          fault %s: region %s holds a majority of the voters of %d shards %v: they have no quorum until it returns (placement has not spread them over the regions)",
				f.Spec, vs[0].Region, len(qs), qs)
		}
	}
	switch f.Action {
	case ActionKill:
		return vs, signalAll(vs, syscall.SIGKILL)
	case ActionTerm:
		return vs, signalAll(vs, syscall.SIGTERM)
	case ActionPartition:
		return vs, u.partition(ctx, vs[0], f.Hold)
	case ActionStop:
		if err := signalAll(vs, syscall.SIGSTOP); err != nil {
			_ = signalAll(vs, syscall.SIGCONT)
			return vs, err
		}
		t := time.NewTimer(f.Hold)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		// Always resumed, even when the run is cancelled: a process left
		// stopped would outlive the test that stopped it.
		return vs, signalAll(vs, syscall.SIGCONT)
	}
	return vs, fmt.Errorf("unknown action %q", f.Action)
}

func signalAll(vs []Victim, sig syscall.Signal) error {
	var errs []error
	for _, v := range vs {
		err := syscall.Kill(v.PID, sig)
		if sig == syscall.SIGCONT && errors.Is(err, syscall.ESRCH) {
			// Gone while stopped: the cluster's autoheal replaced it.
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s to %s (pid %d): %w", sig, v.ID, v.PID, err))
		}
	}
	return errors.Join(errs...)
}

// rollingRestart restarts every worker, then every store node, one at a
// time: SIGTERM, then a wait until the supervisor's new process is
// registered and healthy (a store node also until every shard has a leader
// again and its replicas report a lag of at most 100 entries), so that at
// most one process of a role is ever down.
func (u *UpCluster) rollingRestart(ctx context.Context, log func(string, ...any)) ([]Victim, error) {
	ms, err := u.Members(ctx)
	if err != nil {
		return nil, err
	}
	var out []Victim
	for _, role := range []string{"worker", "store"} {
		for _, m := range ms {
			if m.Role != role || m.PID <= 0 {
				continue
			}
			v := Victim{ID: m.ID, Role: m.Role, Region: m.Region, PID: m.PID}
			out = append(out, v)
			t0 := time.Now()
			if err := signalAll([]Victim{v}, syscall.SIGTERM); err != nil {
				return out, err
			}
			if err := u.waitBack(ctx, v); err != nil {
				return out, err
			}
			log("loadtest          rolling restart: %s back in %s", v.ID, time.Since(t0).Round(time.Millisecond))
		}
	}
	return out, nil
}

// waitBack waits until v's id is registered again with another pid and
// healthy, and for a store node until its shards are led and caught up.
func (u *UpCluster) waitBack(ctx context.Context, v Victim) error {
	ctx, cancel := context.WithTimeout(ctx, u.RestartTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var reason error
	for {
		err := u.isBack(ctx, v)
		if err == nil {
			return nil
		}
		// The poll that the deadline cut short says only that; the one
		// before it says why the process was not back.
		if reason == nil || ctx.Err() == nil {
			reason = err
		}
		select {
		case <-ctx.Done():
			log := filepath.Join(u.DataDir, "logs", v.ID+".log")
			if line := lastLogError(log); line != "" {
				return fmt.Errorf("%s not back after %s: %w; its log %s last said: %s", v.ID, u.RestartTimeout, reason, log, line)
			}
			return fmt.Errorf("%s not back after %s: %w", v.ID, u.RestartTimeout, reason)
		case <-tick.C:
		}
	}
}

// lastLogError is the last error or fatal line in the tail of a child's
// log (JSON or text, as logrus writes either), or "" when there is none
// or the log cannot be read: a process the supervisor keeps restarting
// says there why it exits (a port taken, a bad data dir).
func lastLogError(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const tail = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > tail {
		if _, err := f.Seek(st.Size()-tail, io.SeekStart); err != nil {
			return ""
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		for _, lv := range []string{`"level":"error"`, `"level":"fatal"`, "level=error", "level=fatal"} {
			if strings.Contains(l, lv) {
				return strings.TrimSpace(l)
			}
		}
	}
	return ""
}

func (u *UpCluster) isBack(ctx context.Context, v Victim) error {
	ms, err := u.Members(ctx)
	if err != nil {
		return err
	}
	back := false
	for _, m := range ms {
		back = back || (m.ID == v.ID && m.PID != v.PID && m.PID > 0 && m.Healthy)
	}
	if !back {
		return fmt.Errorf("%s not registered healthy with a new pid", v.ID)
	}
	if v.Role != "store" {
		return nil
	}
	ss, err := u.Shards(ctx)
	if err != nil {
		return err
	}
	for _, s := range ss {
		if s.Leader == "" {
			return fmt.Errorf("shard %d has no leader", s.Shard)
		}
		for _, r := range s.Replicas {
			if r.Store == v.ID && (r.Lag == nil || *r.Lag > 100) {
				return fmt.Errorf("shard %d replica on %s not caught up", s.Shard, v.ID)
			}
		}
	}
	return nil
}

// Healthy reports why the cluster is not in a steady state, or nil: a
// control-plane leader, every registered member healthy, every shard led,
// every replica reporting a lag of at most 100 entries.
func (u *UpCluster) Healthy(ctx context.Context) error {
	if _, err := u.Leader(ctx); err != nil {
		return err
	}
	ms, err := u.Members(ctx)
	if err != nil {
		return err
	}
	roles := map[string]int{}
	for _, m := range ms {
		if !m.Healthy {
			return fmt.Errorf("%s %s is registered but unhealthy", m.Role, m.ID)
		}
		roles[m.Role]++
	}
	for _, r := range []string{"worker", "store", "front"} {
		if roles[r] == 0 {
			return fmt.Errorf("no %s registered", r)
		}
	}
	ss, err := u.Shards(ctx)
	if err != nil {
		return err
	}
	if len(ss) == 0 {
		return errors.New("no shard placed yet")
	}
	for _, s := range ss {
		if s.Leader == "" {
			return fmt.Errorf("shard %d has no leader", s.Shard)
		}
		for _, r := range s.Replicas {
			if r.Lag == nil || *r.Lag > 100 {
				return fmt.Errorf("shard %d replica on %s not caught up", s.Shard, r.Store)
			}
		}
	}
	return nil
}

// quorumsIn lists the shards a majority of whose voters is on stores of
// region: stopping the region leaves them without a quorum until it
// returns, whatever the failover does. The first placement can run before
// every region's store has registered (seed 99 of the HA scenarios: 38 of
// 64 shards with two voters in the stopped region, unserved for the whole
// 20 s hold).
func (u *UpCluster) quorumsIn(ctx context.Context, region string) ([]int, error) {
	ms, err := u.Members(ctx)
	if err != nil {
		return nil, err
	}
	storeRegion := map[string]string{}
	for _, m := range ms {
		if m.Role == "store" {
			storeRegion[m.ID] = m.Region
		}
	}
	ss, err := u.Shards(ctx)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, s := range ss {
		voters, in := 0, 0
		for _, r := range s.Replicas {
			if r.Role != "voter" {
				continue
			}
			voters++
			if storeRegion[r.Store] == region {
				in++
			}
		}
		if voters > 0 && 2*in > voters {
			out = append(out, s.Shard)
		}
	}
	return out, nil
}

// WaitHealthy waits up to timeout for Healthy to hold.
func (u *UpCluster) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := u.Healthy(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not healthy after %s: %w", timeout, err)
		case <-tick.C:
		}
	}
}

// partitionFile is where `erlmcp up --store-fault-proxies` reads the store
// to cut off (localcluster.PartitionFile).
func (u *UpCluster) partitionFile() string { return filepath.Join(u.DataDir, "faults", "partition") }

// partition cuts store v off for hold, then heals it, even when ctx ends
// first.
func (u *UpCluster) partition(ctx context.Context, v Victim, hold time.Duration) error {
	path := u.partitionFile()
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		return fmt.Errorf("partition: %s: the cluster has no fault proxies (start erlmcp up with --store-fault-proxies): %w", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, []byte(v.ID+"\n"), 0o600); err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	t := time.NewTimer(hold)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("partition: healing: %w", err)
	}
	return nil
}
