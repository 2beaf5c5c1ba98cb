package localactuator

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/supervisor"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

const helperEnv = "ERLMCP_LOCALACTUATOR_TEST_HELPER"

// The test binary doubles as the child: "drain" waits for SIGTERM, says
// "drained" and exits 0, as a worker does.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "drain" {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		fmt.Println("ready")
		<-ch
		fmt.Println("drained")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestLocalActuatorRealProcesses(t *testing.T) {
	dir := t.TempDir()
	sup := supervisor.New(logging.Discard(), supervisor.Options{InitialBackoff: 10 * time.Millisecond, StopTimeout: 10 * time.Second})
	t.Cleanup(func() { _ = sup.Stop(context.Background()) })
	spec := func(pool string, i int) (supervisor.Spec, error) {
		if pool != "worker" {
			return supervisor.Spec{}, fmt.Errorf("pool %s cannot be scaled", pool)
		}
		name := fmt.Sprintf("%s-%d", pool, i)
		return supervisor.Spec{Name: name, Path: os.Args[0], Env: append(os.Environ(), helperEnv+"=drain"),
			LogPath: filepath.Join(dir, name+".log")}, nil
	}
	for i := 1; i <= 2; i++ {
		s, _ := spec("worker", i)
		if err := sup.Start(s); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "actuator.sock")
	srv, err := Serve(sock, "tok", sup, spec, "", logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	if _, err := NewClient(sock, "wrong").Processes(ctx, ""); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong token: err = %v, want 401", err)
	}
	c := NewClient(sock, "tok")
	ps, err := c.Processes(ctx, "worker")
	if err != nil || len(ps) != 2 {
		t.Fatalf("processes = %v, %v; want 2", ps, err)
	}

	res, err := c.Scale(ctx, ScaleRequest{Pool: "worker", Count: 3})
	if err != nil || len(res.Started) != 1 || res.Started[0] != "worker-3" {
		t.Fatalf("scale up: %+v, %v; want worker-3 started", res, err)
	}
	if sup.PID("worker-3") == 0 {
		t.Fatal("worker-3 not running after scale up")
	}

	// Restart: a new pid for the same name.
	testcluster.WaitFor(t, 10*time.Second, "worker-2 ready", func() error { return logSays(dir, "worker-2", "ready") })
	old := sup.PID("worker-2")
	if err := c.Restart(ctx, "worker-2"); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, "worker-2 restarted", func() error {
		if p := sup.PID("worker-2"); p == 0 || p == old {
			return fmt.Errorf("pid %d (was %d)", p, old)
		}
		return nil
	})
	if err := c.Restart(ctx, "nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("restart unknown: %v, want 404", err)
	}

	// Scale down: the preferred child goes first, then the highest; each
	// gets SIGTERM and drains.
	for _, n := range []string{"worker-1", "worker-3"} {
		testcluster.WaitFor(t, 10*time.Second, n+" ready", func() error { return logSays(dir, n, "ready") })
	}
	res, err = c.Scale(ctx, ScaleRequest{Pool: "worker", Count: 1, RemoveFirst: []string{"worker-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Stopped, ",") != "worker-1,worker-3" {
		t.Fatalf("stopped %v, want worker-1,worker-3", res.Stopped)
	}
	for _, n := range res.Stopped {
		if err := logSays(dir, n, "drained"); err != nil {
			t.Fatalf("%s did not drain on SIGTERM: %v", n, err)
		}
	}
	if names := sup.Names(); strings.Join(names, ",") != "worker-2" {
		t.Fatalf("children after scale down: %v, want worker-2", names)
	}
	// Scaling up again reuses the lowest free name.
	res, err = c.Scale(ctx, ScaleRequest{Pool: "worker", Count: 2})
	if err != nil || strings.Join(res.Started, ",") != "worker-1" {
		t.Fatalf("scale up again: %+v, %v; want worker-1", res, err)
	}
}

func logSays(dir, name, want string) error {
	b, _ := os.ReadFile(filepath.Join(dir, name+".log"))
	if !strings.Contains(string(b), want) {
		return fmt.Errorf("%s log: %q", name, b)
	}
	return nil
}

func TestPickVictims(t *testing.T) {
	cur := []Process{{Name: "worker-1"}, {Name: "worker-10"}, {Name: "worker-2"}}
	if got := strings.Join(pickVictims(cur, []string{"worker-gone", "worker-2"}, 2), ","); got != "worker-2,worker-10" {
		t.Fatalf("victims %s", got)
	}
	if PoolOf("store-3") != "store" || PoolOf("front") != "front" {
		t.Fatal("PoolOf")
	}
}
