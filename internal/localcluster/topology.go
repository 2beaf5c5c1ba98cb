package localcluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/internal/embedetcd"
	"github.com/sirupsen/logrus"
)

// The HA topology options of `up`: etcd as a cluster of supervised member
// processes instead of one member inside up (so an etcd member can be
// killed like any other process), and more than one front (so a client can
// fail over between fronts).

// Child names of the extra processes.
const (
	etcdMemberRole = "etcd"
	frontRole      = "front"
)

func (c Config) validateTopology() error {
	switch {
	case c.EtcdMembers != 1 && c.EtcdMembers != 3 && c.EtcdMembers != 5:
		return fmt.Errorf("--etcd-members %d: want 1 (inside up), 3 or 5 (supervised member processes)", c.EtcdMembers)
	case c.Fronts < 1 || c.Fronts > 9:
		return fmt.Errorf("--fronts %d: want 1 to 9", c.Fronts)
	}
	return nil
}

// portFunc reserves a port for a purpose and returns its loopback address.
type portFunc func(port int, purpose, flagName string) (string, error)

// planEtcdMembers adds the etcd member children when EtcdMembers > 1:
// member i (from 0) serves clients on --etcd-client-port + 2i and peers on
// --etcd-peer-port + 2i, keeps its data in <data-dir>/etcd-<i+1>, and is
// named etcd-<i+1>. Member 0's ports were reserved by the caller. It sets the plan's endpoint list.
func (c Config) planEtcdMembers(p *Plan, usePort portFunc) error {
	p.EtcdEndpoints = []string{p.EtcdClientURL}
	if c.EtcdMembers <= 1 {
		return nil
	}
	type member struct{ name, client, peer string }
	ms := []member{{name: "etcd-1", client: p.EtcdClientURL, peer: p.EtcdPeerURL}}
	for i := 1; i < c.EtcdMembers; i++ {
		name := "etcd-" + strconv.Itoa(i+1)
		ca, err := usePort(c.EtcdClientPort+2*i, name+" client URL", "--etcd-client-port")
		if err != nil {
			return err
		}
		pa, err := usePort(c.EtcdPeerPort+2*i, name+" peer URL", "--etcd-peer-port")
		if err != nil {
			return err
		}
		ms = append(ms, member{name: name, client: "http://" + ca, peer: "http://" + pa})
	}
	var initial, clients []string
	for _, m := range ms {
		initial = append(initial, m.name+"="+m.peer)
		clients = append(clients, m.client)
	}
	for _, m := range ms {
		args := []string{"etcd",
			"--name=" + m.name,
			"--data-dir=" + p.path(m.name),
			"--client-url=" + m.client,
			"--peer-url=" + m.peer,
			"--initial-cluster=" + strings.Join(initial, ","),
			// ignored by etcd once the data dir holds a member
			"--cluster-state=new",
			"--tick-ms=" + strconv.FormatUint(uint64(c.EtcdTickMs), 10),
			"--election-ms=" + strconv.FormatUint(uint64(c.EtcdElectionMs), 10),
			"--log-level=" + c.LogLevel,
			"--log-format=json",
		}
		p.Children = append(p.Children, Child{Name: m.name, Role: etcdMemberRole, Addr: strings.TrimPrefix(m.client, "http://"), Args: args})
	}
	p.EtcdEndpoints = clients
	p.EtcdClientURL = strings.Join(clients, ",")
	return nil
}

// planExtraFronts adds fronts 2..Fronts, front i (from 2) listening on
// 127.0.0.1:<--front-port-base + i-2> and labelled with region i-1.
func (c Config) planExtraFronts(p *Plan, usePort portFunc, common func(id string, i int) []string) error {
	p.FrontURLs = []string{p.MCPURL}
	for i := 1; i < c.Fronts; i++ {
		id := "front-" + strconv.Itoa(i+1)
		addr, err := usePort(c.FrontPortBase+i-1, id+" (MCP endpoint)", "--front-port-base")
		if err != nil {
			return err
		}
		args := append([]string{"front"}, common(id, i)...)
		args = append(args, "--listen="+addr)
		p.Children = append(p.Children, Child{Name: id, Role: frontRole, Addr: addr, Args: args})
		p.FrontURLs = append(p.FrontURLs, "http://"+addr+"/mcp")
	}
	return nil
}

// startEtcd starts etcd inside up when the plan has no etcd member
// children. It returns a channel that reports etcd failing (nil, never
// ready, when the members are children: the supervisor restarts them) and
// how to stop it.
func startEtcd(ctx context.Context, cfg Config, plan Plan, out io.Writer, log *logrus.Entry) (<-chan error, func(), error) {
	if cfg.EtcdMembers > 1 {
		fmt.Fprintf(out, "erlmcp up: etcd runs as %d supervised member processes on %s\n", cfg.EtcdMembers, plan.EtcdClientURL)
		return nil, func() {}, nil
	}
	fmt.Fprintf(out, "erlmcp up: starting embedded etcd on %s (data %s)\n", plan.EtcdClientURL, plan.path("etcd"))
	// etcd's own events (leadership, slow disk) go to a log file beside
	// the children's, not to up's terminal.
	logPath := filepath.Join(plan.LogDir(), "etcd.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded etcd log %s: %w", logPath, err)
	}
	etcd, err := embedetcd.Start(ctx, embedetcd.Config{
		Name:         "erlmcp-up",
		DataDir:      plan.path("etcd"),
		ClientURL:    plan.EtcdClientURL,
		PeerURL:      plan.EtcdPeerURL,
		ClusterState: "new", // ignored by etcd once the data dir holds a member
		TickMs:       cfg.EtcdTickMs,
		ElectionMs:   cfg.EtcdElectionMs,
		StartTimeout: 30 * time.Second,
		LogTo:        logFile,
	})
	if err != nil {
		_ = logFile.Close()
		return nil, nil, err
	}
	return etcd.Err(), func() {
		etcd.Close()
		_ = logFile.Close()
		log.Info("embedded etcd stopped")
	}, nil
}
