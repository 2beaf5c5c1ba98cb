package supervisor

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// Remove stops supervising the named child: it is not restarted any more,
// gets SIGTERM (so a worker drains), and SIGKILL when it has not exited
// after StopTimeout or when ctx ends first. Remove returns once the child
// has exited and is forgotten, so its name can be started again. The
// error says when it had to be killed.
func (s *Supervisor) Remove(ctx context.Context, name string) error {
	s.mu.Lock()
	c, ok := s.children[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("supervisor: no child %q", name)
	}
	c.removed = true
	var pid int
	if c.cmd != nil {
		pid = c.cmd.Process.Pid
	}
	s.mu.Unlock()

	if pid != 0 {
		s.log.WithFields(logrus.Fields{"child": name, "pid": pid}).Info("removing child: SIGTERM")
		// SIGCONT too: a stopped process cannot act on SIGTERM.
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		_ = syscall.Kill(-pid, syscall.SIGCONT)
	}
	t := time.NewTimer(s.opts.StopTimeout)
	defer t.Stop()
	var err error
	select {
	case <-c.done:
	case <-t.C:
		err = fmt.Errorf("supervisor: %s did not exit within %s of SIGTERM; killed", name, s.opts.StopTimeout)
	case <-ctx.Done():
		err = fmt.Errorf("supervisor: %s: killed before it exited on SIGTERM: %w", name, ctx.Err())
	}
	if err != nil {
		s.mu.Lock()
		if c.cmd != nil {
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		}
		s.mu.Unlock()
		<-c.done
	}
	s.mu.Lock()
	if s.children[name] == c {
		delete(s.children, name)
	}
	s.mu.Unlock()
	return err
}
