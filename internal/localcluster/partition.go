package localcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// Network partitions of one store node on one machine, without root or
// iptables: with --store-fault-proxies every store advertises a TCP proxy
// that up runs in front of it, so workers, the control planes and the other
// store nodes all reach it through that proxy. Writing a store id into
// <data-dir>/faults/partition cuts that store off: its proxy stops
// forwarding in both directions, and so does every other store's proxy on
// the connections the cut-off store dialed (told apart by which process
// owns the connecting socket). Forwarding stops rather than connections
// closing, as when packets are dropped; removing the file heals it.

// PartitionFile is where a partition is requested: the id of the store to
// cut off, or nothing.
func PartitionFile(dataDir string) string { return filepath.Join(dataDir, "faults", "partition") }

// storeProxy is one store's proxy.
type storeProxy struct {
	id     string // the store behind it
	listen string
	target string
}

// proxySet runs the proxies and follows the partition file.
type proxySet struct {
	proxies []storeProxy
	file    string
	pidOf   func(name string) int // the supervisor's pid of a child
	log     *logrus.Entry

	mu       sync.Mutex
	cut      string        // the store cut off ("" none)
	healed   chan struct{} // closed when the current partition heals
	lis      []net.Listener
	stopOnce sync.Once
}

func newProxySet(proxies []storeProxy, dataDir string, pidOf func(string) int, log *logrus.Entry) *proxySet {
	h := make(chan struct{})
	close(h)
	return &proxySet{proxies: proxies, file: PartitionFile(dataDir), pidOf: pidOf, log: log, healed: h}
}

// start listens on every proxy address and follows the partition file
// until ctx ends.
func (ps *proxySet) start(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(ps.file), 0o700); err != nil {
		return fmt.Errorf("store fault proxies: %w", err)
	}
	_ = os.Remove(ps.file) // a partition does not outlive the up that made it
	for _, p := range ps.proxies {
		l, err := net.Listen("tcp", p.listen)
		if err != nil {
			ps.close()
			return fmt.Errorf("store fault proxy for %s on %s: %w", p.id, p.listen, err)
		}
		ps.lis = append(ps.lis, l)
		go ps.accept(ctx, l, p)
	}
	go ps.follow(ctx)
	go func() { <-ctx.Done(); ps.close() }()
	return nil
}

func (ps *proxySet) close() {
	ps.stopOnce.Do(func() {
		for _, l := range ps.lis {
			_ = l.Close()
		}
	})
}

// follow polls the partition file.
func (ps *proxySet) follow(ctx context.Context) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(ps.file)
		want := strings.TrimSpace(string(b))
		ps.mu.Lock()
		if want != ps.cut {
			if ps.cut != "" {
				close(ps.healed)
			}
			if want != "" {
				ps.healed = make(chan struct{})
			}
			ps.log.WithField("store", want).WithField("was", ps.cut).Warn("store fault proxies: partition changed")
			ps.cut = want
		}
		ps.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// blocked returns a channel that is closed once traffic between from and
// to may flow, or nil when it may flow now.
func (ps *proxySet) blocked(from, to string) <-chan struct{} {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.cut != "" && (ps.cut == from || ps.cut == to) {
		return ps.healed
	}
	return nil
}

func (ps *proxySet) accept(ctx context.Context, l net.Listener, p storeProxy) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go ps.serve(ctx, c, p)
	}
}

// serve forwards one connection to p's store.
func (ps *proxySet) serve(ctx context.Context, c net.Conn, p storeProxy) {
	defer c.Close()
	from := ps.sourceStore(c)
	if ch := ps.blocked(from, p.id); ch != nil {
		select { // a cut-off node's connection attempts hang, as on a dropped link
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if ch := ps.blocked(from, p.id); ch != nil {
					select {
					case <-ctx.Done():
						return
					case <-ch:
					}
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	// One direction ended: close both so the other ends too.
	c.Close()
	up.Close()
	<-done
}

// sourceStore says which store process dialed c (by the owner of the
// socket at its remote end), "" when it is not a store.
func (ps *proxySet) sourceStore(c net.Conn) string {
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok || !ra.IP.IsLoopback() {
		return ""
	}
	la, _ := c.LocalAddr().(*net.TCPAddr)
	inode := socketInode(ra.Port, la.Port)
	if inode == "" {
		return ""
	}
	for _, p := range ps.proxies {
		pid := ps.pidOf(p.id)
		if pid > 0 && ownsSocket(pid, inode) {
			return p.id
		}
	}
	return ""
}

// socketInode finds the inode of the loopback TCP socket whose local port
// is lport and remote port rport, from /proc/net/tcp and tcp6.
func socketInode(lport, rport int) string {
	want := fmt.Sprintf(":%04X", lport)
	wantR := fmt.Sprintf(":%04X", rport)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 {
				continue
			}
			if strings.HasSuffix(fs[1], want) && strings.HasSuffix(fs[2], wantR) {
				return fs[9]
			}
		}
	}
	return ""
}

// ownsSocket reports whether process pid has socket inode open.
func ownsSocket(pid int, inode string) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	target := "socket:[" + inode + "]"
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && l == target {
			return true
		}
	}
	return false
}

// planStoreProxy gives store i (id, listening on addr) a fault proxy when
// StoreFaultProxies is set: the proxy listens on --store-proxy-port-base+i
// (0: after the stores' gRPC and HTTP ports, StorePortBase+2*Stores+i) and
// the store advertises it. It returns the store's arguments.
func (c Config) planStoreProxy(p *Plan, usePort portFunc, i int, id, addr string, args []string) ([]string, error) {
	if !c.StoreFaultProxies {
		return args, nil
	}
	base := c.StoreProxyPortBase
	if base == 0 {
		base = c.StorePortBase + 2*c.Stores
	}
	paddr, err := usePort(base+i, id+" fault proxy", "--store-proxy-port-base")
	if err != nil {
		return nil, err
	}
	p.StoreProxies = append(p.StoreProxies, storeProxy{id: id, listen: paddr, target: addr})
	return append(args, "--advertise="+paddr), nil
}

// startStoreProxies starts the plan's store fault proxies, if any, until
// ctx ends.
func startStoreProxies(ctx context.Context, plan Plan, pidOf func(string) int, log *logrus.Entry) error {
	if len(plan.StoreProxies) == 0 {
		return nil
	}
	return newProxySet(plan.StoreProxies, plan.DataDir, pidOf, log.WithField("component", "faultproxy")).start(ctx)
}
