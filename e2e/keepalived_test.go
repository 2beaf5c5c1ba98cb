package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The keepalived example (deploy/haproxy/keepalived.conf.example) is checked
// with the real keepalived: its own config test, and a VRRP failover between
// two network namespaces that each run the shipped haproxy.cfg, following the
// example's instructions for the second machine literally.

const keepalivedExample = "../deploy/haproxy/keepalived.conf.example"

// keepalivedConfigTest runs `keepalived --config-test` on path and returns
// what it printed and whether the file was accepted. keepalived 2.2 ends a
// successful config test by sending itself SIGTERM, so "killed by SIGTERM
// with nothing printed" means accepted; any exit status means rejected.
func keepalivedConfigTest(t *testing.T, keepalived, path string) (string, bool) {
	t.Helper()
	out, err := exec.Command(keepalived, "--config-test", "-f", path).CombinedOutput()
	text := strings.TrimSpace(string(out))
	var ee *exec.ExitError
	switch {
	case err == nil:
		return text, text == ""
	case errors.As(err, &ee):
		ws, ok := ee.Sys().(syscall.WaitStatus)
		if ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return text, text == ""
		}
		return text, false
	default:
		t.Fatalf("run keepalived --config-test: %v", err)
		return "", false
	}
}

func TestKeepalivedExampleConfigTest(t *testing.T) {
	keepalived := needTool(t, "keepalived", "keepalived")
	if out, ok := keepalivedConfigTest(t, keepalived, keepalivedExample); !ok {
		t.Fatalf("keepalived rejects or warns about %s:\n%s", keepalivedExample, out)
	}
	// The check must be able to fail: an unknown keyword is reported.
	src, err := os.ReadFile(keepalivedExample)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.conf")
	if err := os.WriteFile(bad, []byte(strings.Replace(string(src), "    advert_int 1\n", "    advert_int 1\n    advert_every 1\n", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, ok := keepalivedConfigTest(t, keepalived, bad); ok || !strings.Contains(out, "advert_every") {
		t.Fatalf("keepalived accepted a misspelt keyword (ok=%v): %s", ok, out)
	}
	// The health check script must poll the stats port haproxy.cfg serves.
	cfg, err := os.ReadFile(haproxyConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), "ERLMCP_HAPROXY_STATS_BIND-*:8404}") || !strings.Contains(string(src), "127.0.0.1:8404/stats") {
		t.Fatal("keepalived's chk_haproxy and haproxy.cfg's stats listener disagree on port 8404 and /stats")
	}
}

// ipCmd runs `ip` with args and fails the test on error.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// hasAddr reports whether the interface dev in namespace ns holds addr.
func hasAddr(ns, dev, addr string) (bool, error) {
	out, err := exec.Command("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", dev).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("ip addr in %s: %v: %s", ns, err, out)
	}
	return strings.Contains(string(out), " "+addr+"/"), nil
}

// TestKeepalivedMovesVIPWhenHAProxyDies builds two "machines" as network
// namespaces joined by a veth pair, on the example's own addresses
// (10.0.0.11 and .12, VIP 10.0.0.100 on what the example calls eth0), runs
// HAProxy with the shipped config and keepalived with the example in each,
// and SIGKILLs the master's HAProxy: the VIP must move to the backup and
// answer there. Needs root (network namespaces); CI runs as root.
func TestKeepalivedMovesVIPWhenHAProxyDies(t *testing.T) {
	keepalived := needTool(t, "keepalived", "keepalived")
	haproxy := needTool(t, "haproxy", "haproxy")
	needTool(t, "curl", "curl")
	needTool(t, "ip", "iproute2")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but the test does not run as root: network namespaces need root")
		}
		t.Skip("network namespaces need root")
	}
	src, err := os.ReadFile(keepalivedExample)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	suffix := fmt.Sprint(os.Getpid() % 100000)
	type machine struct{ ns, dev, self, peer, prio string }
	lb1 := machine{"erlmcp-lb1-" + suffix, "kv1-" + suffix, "10.0.0.11", "10.0.0.12", "150"}
	lb2 := machine{"erlmcp-lb2-" + suffix, "kv2-" + suffix, "10.0.0.12", "10.0.0.11", "100"}

	for _, m := range []machine{lb1, lb2} {
		ipCmd(t, "netns", "add", m.ns)
		ns := m.ns
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	ipCmd(t, "link", "add", lb1.dev, "type", "veth", "peer", "name", lb2.dev)
	haproxies := map[string]*process{}
	for _, m := range []machine{lb1, lb2} {
		ipCmd(t, "link", "set", m.dev, "netns", m.ns)
		ipCmd(t, "-n", m.ns, "addr", "add", m.self+"/24", "dev", m.dev)
		ipCmd(t, "-n", m.ns, "link", "set", m.dev, "up")
		ipCmd(t, "-n", m.ns, "link", "set", "lo", "up")

		// The second machine gets exactly the changes the example's header
		// asks for: priority 100, addresses swapped.
		conf := strings.ReplaceAll(string(src), "eth0", m.dev)
		conf = strings.Replace(conf, "priority 150", "priority "+m.prio, 1)
		conf = strings.Replace(conf, "unicast_src_ip 10.0.0.11", "unicast_src_ip "+m.self, 1)
		conf = strings.Replace(conf, "        10.0.0.12\n", "        "+m.peer+"\n", 1)
		path := filepath.Join(dir, m.ns+".conf")
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		// The stats listener answers on every address, so the VIP's
		// holder can be reached from the other machine.
		haproxies[m.ns] = startProcess(t, []string{
			"ERLMCP_HAPROXY_BIND=127.0.0.1:18080",
			"ERLMCP_HAPROXY_STATS_BIND=*:8404",
			"ERLMCP_HAPROXY_RUNTIME_SOCKET=" + filepath.Join(dir, m.ns+".sock"),
		}, "ip", "netns", "exec", m.ns, haproxy, "-f", haproxyConfig(t))
	}
	// Both HAProxies answer before either keepalived starts: a master
	// whose chk_haproxy still fails at start leaves the VIP to the backup,
	// and preempt_delay (30 s) then keeps it there past this test's wait.
	for _, m := range []machine{lb1, lb2} {
		waitFor(t, 10*time.Second, "HAProxy in "+m.ns+" to answer its check", func() error {
			out, err := exec.Command("ip", "netns", "exec", m.ns, "curl", "-fsS", "-o", "/dev/null",
				"--max-time", "1", "http://127.0.0.1:8404/stats").CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
	}
	for _, m := range []machine{lb1, lb2} {
		path := filepath.Join(dir, m.ns+".conf")
		startProcess(t, nil, "ip", "netns", "exec", m.ns, keepalived,
			"--dont-fork", "--log-console", "--log-detail", "-f", path,
			"-p", filepath.Join(dir, m.ns+".pid"),
			"-r", filepath.Join(dir, m.ns+".vrrp.pid"),
			"-c", filepath.Join(dir, m.ns+".check.pid"),
			"-b", filepath.Join(dir, m.ns+".bfd.pid"))
	}

	const vip = "10.0.0.100"
	holder := func(want, other machine) func() error {
		return func() error {
			on, err := hasAddr(want.ns, want.dev, vip)
			if err != nil {
				return err
			}
			off, err := hasAddr(other.ns, other.dev, vip)
			if err != nil {
				return err
			}
			if !on || off {
				return fmt.Errorf("VIP on %s: %v, on %s: %v", want.ns, on, other.ns, off)
			}
			return nil
		}
	}
	// reachable: from machine m, HAProxy's stats page answers on the VIP.
	reachable := func(m machine) func() error {
		return func() error {
			out, err := exec.Command("ip", "netns", "exec", m.ns, "curl", "-fsS", "-o", "/dev/null",
				"--max-time", "1", fmt.Sprintf("http://%s:8404/stats", vip)).CombinedOutput()
			if err != nil {
				return fmt.Errorf("curl the VIP from %s: %v: %s", m.ns, err, out)
			}
			return nil
		}
	}
	waitFor(t, 20*time.Second, "the master to take the VIP", holder(lb1, lb2))
	waitFor(t, 10*time.Second, "HAProxy on the VIP, seen from the backup", reachable(lb2))

	killed := time.Now()
	if err := haproxies[lb1.ns].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// chk_haproxy: interval 1 s, fall 2, then one advert: about 3 s.
	waitFor(t, 15*time.Second, "the VIP to move to the backup", holder(lb2, lb1))
	moved := time.Since(killed)
	waitFor(t, 10*time.Second, "HAProxy on the VIP, seen from the old master", reachable(lb1))
	t.Logf("VIP moved to the backup %.1f s after the master's HAProxy was SIGKILLed", moved.Seconds())
}
