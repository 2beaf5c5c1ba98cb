package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	"github.com/sirupsen/logrus"
)

// The test binary doubles as the child: with helperEnv set it behaves as
// the mode named by the variable instead of running tests.
const helperEnv = "ERLMCP_SUPERVISOR_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "block":
		fmt.Println("ready")
		select {}
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		select {}
	case "exit3":
		os.Exit(3)
	case "supervise":
		// A supervisor in its own process whose child must die with it.
		s := New(logging.Discard(), Options{})
		if err := s.Start(Spec{Name: "grandchild", Path: os.Args[0], Env: append(os.Environ(), helperEnv+"=block"), LogPath: os.DevNull}); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Printf("child %d\n", s.PID("grandchild"))
		select {}
	}
}

func helperSpec(t *testing.T, name, mode string) Spec {
	return Spec{
		Name:    name,
		Path:    os.Args[0],
		Env:     append(os.Environ(), helperEnv+"="+mode),
		LogPath: filepath.Join(t.TempDir(), name+".log"),
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func waitLogLine(t *testing.T, path, want string) {
	t.Helper()
	testcluster.WaitFor(t, 10*time.Second, path+" to say "+want, func() error {
		b, _ := os.ReadFile(path)
		if !strings.Contains(string(b), want) {
			return fmt.Errorf("log so far: %q", b)
		}
		return nil
	})
}

func stopNow(t *testing.T, s *Supervisor) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
}

func TestRestartAfterKill(t *testing.T) {
	s := New(logging.Discard(), Options{InitialBackoff: 10 * time.Millisecond})
	stopNow(t, s)
	spec := helperSpec(t, "a", "block")
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	first := s.PID("a")
	if first == 0 {
		t.Fatal("no pid after Start")
	}
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, "a restarted with a new pid", func() error {
		if p := s.PID("a"); p == 0 || p == first {
			return fmt.Errorf("pid %d (first %d)", p, first)
		}
		return nil
	})
	if n := s.Starts("a"); n != 2 {
		t.Fatalf("starts = %d, want 2", n)
	}
	if alive(first) {
		t.Fatalf("old pid %d still alive", first)
	}
}

func TestStopKillsAllWithinBound(t *testing.T) {
	s := New(logging.Discard(), Options{StopTimeout: 3 * time.Second})
	var pids []int
	for _, n := range []string{"a", "b", "c"} {
		if err := s.Start(helperSpec(t, n, "block")); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, s.PID(n))
	}
	start := time.Now()
	if err := s.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Stop took %s", d)
	}
	for _, p := range pids {
		if alive(p) {
			t.Fatalf("pid %d alive after Stop", p)
		}
	}
	if len(s.PIDs()) != 0 {
		t.Fatalf("PIDs after Stop: %v", s.PIDs())
	}
	if err := s.Start(helperSpec(t, "d", "block")); !errors.Is(err, ErrStopped) {
		t.Fatalf("Start after Stop: %v, want ErrStopped", err)
	}
}

func TestStopSIGKILLsChildIgnoringSIGTERM(t *testing.T) {
	out := &syncBuffer{}
	l := logrus.New()
	l.SetOutput(out)
	s := New(logrus.NewEntry(l), Options{StopTimeout: 300 * time.Millisecond})
	spec := helperSpec(t, "stubborn", "ignore-term")
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	waitLogLine(t, spec.LogPath, "ready") // SIGTERM is ignored from here on
	pid := s.PID("stubborn")
	start := time.Now()
	err := s.Stop(context.Background())
	d := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "stubborn") {
		t.Fatalf("Stop error = %v, want one naming the killed child", err)
	}
	if d < 300*time.Millisecond || d > 5*time.Second {
		t.Fatalf("Stop took %s, want just over the 300ms bound", d)
	}
	if alive(pid) {
		t.Fatalf("pid %d alive after Stop", pid)
	}
	if !strings.Contains(out.String(), "killed by signal killed") {
		t.Fatalf("log does not record the SIGKILL exit:\n%s", out.String())
	}
}

func TestStopCtxDeadlineWins(t *testing.T) {
	s := New(logging.Discard(), Options{StopTimeout: time.Minute})
	spec := helperSpec(t, "stubborn", "ignore-term")
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	waitLogLine(t, spec.LogPath, "ready")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_ = s.Stop(ctx)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Stop took %s despite a 200ms ctx", d)
	}
}

// fakeClock hands every requested delay to the test and fires at once.
type fakeClock struct{ delays chan time.Duration }

func (f *fakeClock) Now() time.Time { return time.Unix(0, 0) }
func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.delays <- d
	ch := make(chan time.Time, 1)
	ch <- time.Unix(0, 0)
	return ch
}

func TestBackoffDoublesForCrashLoop(t *testing.T) {
	fc := &fakeClock{delays: make(chan time.Duration)}
	s := New(logging.Discard(), Options{InitialBackoff: 100 * time.Millisecond, MaxBackoff: 800 * time.Millisecond, Clock: fc})
	if err := s.Start(helperSpec(t, "crash", "exit3")); err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{100, 200, 400, 800, 800}
	for i, w := range want {
		select {
		case d := <-fc.delays:
			if d != w*time.Millisecond {
				t.Fatalf("delay %d = %s, want %s", i, d, w*time.Millisecond)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no restart %d", i)
		}
	}
	go func() { // keep the loop unblocked while stopping
		for range fc.delays {
		}
	}()
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.Starts("crash") < len(want) {
		t.Fatalf("starts = %d", s.Starts("crash"))
	}
}

func TestBackoffResetsAfterHealthyRun(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second, ResetAfter: 10 * time.Second}
	var got []time.Duration
	for range 8 {
		got = append(got, b.Next(time.Second))
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays %v, want %v ms", got, want)
		}
	}
	if d := b.Next(11 * time.Second); d != 100*time.Millisecond {
		t.Fatalf("after a healthy run: %s, want 100ms", d)
	}
	if d := b.Next(0); d != 200*time.Millisecond {
		t.Fatalf("then: %s, want 200ms", d)
	}
}

func TestStartFailsForMissingExecutable(t *testing.T) {
	s := New(logging.Discard(), Options{})
	stopNow(t, s)
	err := s.Start(Spec{Name: "x", Path: "/nonexistent/erlmcp-nope"})
	if err == nil || !strings.Contains(err.Error(), "erlmcp-nope") {
		t.Fatalf("Start = %v, want an error naming the path", err)
	}
	if len(s.Names()) != 0 {
		t.Fatalf("failed child is still supervised: %v", s.Names())
	}
}

func TestOutputPrefixedWithoutLogPath(t *testing.T) {
	out := &syncBuffer{}
	s := New(logging.Discard(), Options{Output: out})
	stopNow(t, s)
	spec := helperSpec(t, "talker", "block")
	spec.LogPath = ""
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, "prefixed output", func() error {
		if !strings.Contains(out.String(), "[talker] ready\n") {
			return fmt.Errorf("output %q", out.String())
		}
		return nil
	})
}

// TestChildDiesWithSupervisor SIGKILLs a supervisor process and checks its
// child got the parent-death signal.
func TestChildDiesWithSupervisor(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=supervise")
	var out syncBuffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var child int
	testcluster.WaitFor(t, 10*time.Second, "supervisor helper to report its child", func() error {
		for _, line := range strings.Split(out.String(), "\n") {
			if p, ok := strings.CutPrefix(line, "child "); ok {
				child, _ = strconv.Atoi(p)
				return nil
			}
		}
		return fmt.Errorf("output %q", out.String())
	})
	if child == 0 || !alive(child) {
		t.Fatalf("child %d not running", child)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	testcluster.WaitFor(t, 10*time.Second, "orphan to die", func() error {
		if alive(child) {
			return fmt.Errorf("pid %d alive", child)
		}
		return nil
	})
}

type syncBuffer = testcluster.SyncBuffer
