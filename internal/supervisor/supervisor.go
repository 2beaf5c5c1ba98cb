// Package supervisor runs child processes and restarts them when they
// exit, with exponential backoff. It is the local actuator of `erlmcp up`.
//
// Children are started in their own process group with a parent-death
// signal of SIGKILL, so they die with the supervisor even when it is itself
// SIGKILLed. The parent-death signal fires when the OS thread that forked
// the child exits, so every child is forked from one goroutine locked to its
// thread for the supervisor's whole life.
package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// Spec describes one supervised child.
type Spec struct {
	// Name identifies the child in logs and in PID; unique per supervisor.
	Name string
	// Path is the executable; Args are its arguments (without argv[0]).
	Path string
	Args []string
	// Env is the child's environment, as exec.Cmd.Env: nil inherits the
	// supervisor's environment.
	Env []string
	// Dir is the working directory ("" = the supervisor's).
	Dir string
	// LogPath, when set, receives the child's stdout and stderr (appended).
	// When empty, each output line goes to Options.Output prefixed with
	// "[Name] ".
	LogPath string
}

// Clock is the time source of the restart loop; tests inject their own.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Options tune a Supervisor. Zero values take the defaults shown.
type Options struct {
	// InitialBackoff is the wait before the first restart (100 ms); it
	// doubles on each quick exit up to MaxBackoff (5 s).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// ResetAfter is how long a child must run for the backoff to start
	// again from InitialBackoff (10 s).
	ResetAfter time.Duration
	// StopTimeout bounds how long Stop waits after SIGTERM before it sends
	// SIGKILL (8 s); a shorter ctx deadline given to Stop wins.
	StopTimeout time.Duration
	// Output receives prefixed output of children without LogPath
	// (os.Stderr).
	Output io.Writer
	// Clock is the time source (the real clock).
	Clock Clock
}

// Defaults.
const (
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
	DefaultResetAfter     = 10 * time.Second
	DefaultStopTimeout    = 8 * time.Second
)

func (o *Options) fill() {
	if o.InitialBackoff <= 0 {
		o.InitialBackoff = DefaultInitialBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxBackoff < o.InitialBackoff {
		o.MaxBackoff = o.InitialBackoff
	}
	if o.ResetAfter <= 0 {
		o.ResetAfter = DefaultResetAfter
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	if o.Output == nil {
		o.Output = os.Stderr
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
}

// Backoff computes restart delays: Initial, doubling up to Max, and back to
// Initial once a child has run for ResetAfter.
type Backoff struct {
	Initial, Max, ResetAfter time.Duration
	next                     time.Duration
}

// Next returns the delay before the next start of a child that ran for ran.
func (b *Backoff) Next(ran time.Duration) time.Duration {
	if b.next == 0 || ran >= b.ResetAfter {
		b.next = b.Initial
	}
	d := b.next
	b.next = min(2*b.next, b.Max)
	return d
}

// ErrStopped is returned by Start after Stop.
var ErrStopped = errors.New("supervisor: stopped")

// Supervisor runs and restarts children. Its methods are safe for
// concurrent use.
type Supervisor struct {
	log  *logrus.Entry
	opts Options

	spawnCh chan spawnReq
	outMu   sync.Mutex // serialises prefixed output lines

	mu       sync.Mutex
	stopping bool
	stopCh   chan struct{}
	children map[string]*child
	loops    sync.WaitGroup
}

type child struct {
	spec   Spec
	cmd    *exec.Cmd // nil while not running
	starts int
	done   chan struct{} // closed when the restart loop returned
	// removed is set (under mu) by Remove: the child is not restarted.
	removed bool
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

// New returns a supervisor that logs through log.
func New(log *logrus.Entry, opts Options) *Supervisor {
	opts.fill()
	s := &Supervisor{
		log:      log,
		opts:     opts,
		spawnCh:  make(chan spawnReq),
		stopCh:   make(chan struct{}),
		children: map[string]*child{},
	}
	go s.spawner()
	return s
}

// spawner forks every child from one OS thread that stays alive as long as
// the supervisor can start children: the parent-death signal is tied to
// the forking thread, not the process.
func (s *Supervisor) spawner() {
	runtime.LockOSThread()
	// Never unlocked: when this goroutine returns its thread exits, which
	// is why it returns only after Stop, when no child is left.
	for req := range s.spawnCh {
		req.err <- req.cmd.Start()
	}
}

// Start begins supervising spec. The first start happens before Start
// returns; if it fails (no such executable, log file not writable) the
// error is returned and the child is not supervised.
func (s *Supervisor) Start(spec Spec) error {
	if spec.Name == "" || spec.Path == "" {
		return errors.New("supervisor: spec needs a name and a path")
	}
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return ErrStopped
	}
	if _, dup := s.children[spec.Name]; dup {
		s.mu.Unlock()
		return fmt.Errorf("supervisor: child %q already exists", spec.Name)
	}
	c := &child{spec: spec, done: make(chan struct{})}
	s.children[spec.Name] = c
	// Counted before Stop can wait (Stop sets stopping under mu first).
	s.loops.Add(1)
	s.mu.Unlock()

	cmd, err := s.spawn(c)
	if err != nil {
		s.mu.Lock()
		delete(s.children, spec.Name)
		s.mu.Unlock()
		s.loops.Done()
		return err
	}
	go s.run(c, cmd)
	return nil
}

// spawn starts one instance of c and records it. It returns ErrStopped
// (and leaves nothing running) when Stop began meanwhile.
func (s *Supervisor) spawn(c *child) (*exec.Cmd, error) {
	s.mu.Lock()
	if s.stopping || c.removed {
		s.mu.Unlock()
		return nil, ErrStopped
	}
	// Holding mu across the fork keeps Stop from missing a child that is
	// being born; forks are quick.
	defer s.mu.Unlock()
	cmd := exec.Command(c.spec.Path, c.spec.Args...)
	cmd.Dir = c.spec.Dir
	// Output copying must not hold Wait hostage to a grandchild that kept
	// the pipe open.
	cmd.WaitDelay = time.Second
	cmd.Env = c.spec.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own process group: a Ctrl-C on the terminal reaches only the
		// supervisor, which then stops children in order.
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	var logFile *os.File
	if c.spec.LogPath != "" {
		f, err := os.OpenFile(c.spec.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("supervisor: %s: open log: %w", c.spec.Name, err)
		}
		logFile = f
		cmd.Stdout, cmd.Stderr = f, f
	} else {
		w := &prefixWriter{mu: &s.outMu, out: s.opts.Output, prefix: "[" + c.spec.Name + "] "}
		cmd.Stdout, cmd.Stderr = w, w
	}
	req := spawnReq{cmd: cmd, err: make(chan error, 1)}
	s.spawnCh <- req
	err := <-req.err
	if logFile != nil {
		// The child holds its own descriptor now.
		logFile.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("supervisor: start %s (%s): %w", c.spec.Name, c.spec.Path, err)
	}
	c.cmd = cmd
	c.starts++
	s.log.WithFields(logrus.Fields{"child": c.spec.Name, "pid": cmd.Process.Pid, "start": c.starts}).Info("child started")
	return cmd, nil
}

// run waits for c's process and restarts it until Stop.
func (s *Supervisor) run(c *child, cmd *exec.Cmd) {
	defer s.loops.Done()
	defer close(c.done)
	b := Backoff{Initial: s.opts.InitialBackoff, Max: s.opts.MaxBackoff, ResetAfter: s.opts.ResetAfter}
	for {
		started := s.opts.Clock.Now()
		err := cmd.Wait()
		ran := s.opts.Clock.Now().Sub(started)
		s.mu.Lock()
		c.cmd = nil
		stopping := s.stopping || c.removed
		s.mu.Unlock()
		fields := logrus.Fields{"child": c.spec.Name, "pid": cmd.Process.Pid, "ran": ran.Round(time.Millisecond).String()}
		status := describeExit(cmd.ProcessState, err)
		if stopping {
			s.log.WithFields(fields).WithField("status", status).Info("child exited")
			return
		}
		delay := b.Next(ran)
		s.log.WithFields(fields).WithField("status", status).WithField("restart_in", delay.String()).Warn("child exited; restarting")
		for {
			select {
			case <-s.stopCh:
				return
			case <-s.opts.Clock.After(delay):
			}
			var serr error
			cmd, serr = s.spawn(c)
			if serr == nil {
				break
			}
			if errors.Is(serr, ErrStopped) {
				return
			}
			delay = b.Next(0)
			s.log.WithError(serr).WithField("child", c.spec.Name).WithField("restart_in", delay.String()).Error("child restart failed")
		}
	}
}

func describeExit(ps *os.ProcessState, err error) string {
	if ps == nil {
		if err != nil {
			return "wait failed: " + err.Error()
		}
		return "unknown"
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
		switch {
		case ws.Signaled():
			return "killed by signal " + ws.Signal().String()
		case ws.Exited():
			return fmt.Sprintf("exit code %d", ws.ExitStatus())
		}
	}
	return ps.String()
}

// PID returns the pid of the running instance of the named child, or 0.
func (s *Supervisor) PID(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.children[name]; ok && c.cmd != nil {
		return c.cmd.Process.Pid
	}
	return 0
}

// PIDs returns name → pid of every running child.
func (s *Supervisor) PIDs() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.children))
	for n, c := range s.children {
		if c.cmd != nil {
			out[n] = c.cmd.Process.Pid
		}
	}
	return out
}

// Starts returns how many times the named child was started.
func (s *Supervisor) Starts(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.children[name]; ok {
		return c.starts
	}
	return 0
}

// Names returns the supervised children's names, sorted.
func (s *Supervisor) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.children))
	for n := range s.children {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Signal sends sig to the named child's process group (for chaos tests
// and the actuator's restart). It returns an error when the child is not
// running.
func (s *Supervisor) Signal(name string, sig syscall.Signal) error {
	pid := s.PID(name)
	if pid == 0 {
		return fmt.Errorf("supervisor: %s is not running", name)
	}
	return syscall.Kill(-pid, sig)
}

// Stop stops restarting, sends SIGTERM to every child, waits until they
// exit or StopTimeout (or ctx) passes, then SIGKILLs the survivors and
// waits for them to be reaped. It returns an error naming children that
// had to be killed. Calling Stop again waits for the first call's work.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.mu.Lock()
	first := !s.stopping
	if first {
		s.stopping = true
		close(s.stopCh)
	}
	s.mu.Unlock()
	if !first {
		s.loops.Wait()
		return nil
	}
	s.signalAll(syscall.SIGTERM)

	all := make(chan struct{})
	go func() { s.loops.Wait(); close(all) }()
	t := time.NewTimer(s.opts.StopTimeout)
	defer t.Stop()
	var killed []string
	select {
	case <-all:
	case <-t.C:
		killed = s.signalAll(syscall.SIGKILL)
	case <-ctx.Done():
		killed = s.signalAll(syscall.SIGKILL)
	}
	// SIGKILL cannot be ignored: the loops return as soon as the kernel
	// has reaped the processes.
	<-all
	close(s.spawnCh)
	if len(killed) > 0 {
		s.log.WithField("children", strings.Join(killed, ",")).Warn("children did not stop on SIGTERM in time; killed")
		return fmt.Errorf("supervisor: killed %s after SIGTERM timeout", strings.Join(killed, ", "))
	}
	return nil
}

// signalAll signals every running child's process group and returns their
// names.
func (s *Supervisor) signalAll(sig syscall.Signal) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for n, c := range s.children {
		if c.cmd == nil {
			continue
		}
		pid := c.cmd.Process.Pid
		// The group first (catches grandchildren), the process itself in
		// case it left the group.
		_ = syscall.Kill(-pid, sig)
		_ = syscall.Kill(pid, sig)
		names = append(names, n)
		s.log.WithFields(logrus.Fields{"child": n, "pid": pid, "signal": sig.String()}).Info("signalling child")
	}
	sort.Strings(names)
	return names
}

// prefixWriter writes whole lines to out, each prefixed.
type prefixWriter struct {
	mu     *sync.Mutex
	out    io.Writer
	prefix string
	buf    []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := make([]byte, 0, len(w.prefix)+i+1)
		line = append(line, w.prefix...)
		line = append(line, w.buf[:i+1]...)
		_, _ = w.out.Write(line)
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 { // an endless line: flush what we have
		_, _ = w.out.Write(append([]byte(w.prefix), append(w.buf, '\n')...))
		w.buf = w.buf[:0]
	}
	return len(p), nil
}
