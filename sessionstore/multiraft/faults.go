package multiraft

import (
	"sync"
	"time"
)

// diskFaults injects disk faults around the node's bbolt commits (the
// in-process harness's "slow or failing disk"). bbolt takes no file
// abstraction, so the faults sit at the commit boundary, which is where the
// node sees a real write or fsync error anyway:
//
//   - writeErr: the commit fails before anything reaches the file (a
//     failed write, ENOSPC);
//   - syncErr: the commit reaches the file but is reported failed, the
//     nastiest fsync failure: the data may or may not be on disk and the
//     page cache shows it as written (fsyncgate). The node must neither
//     acknowledge it nor keep trusting its in-memory state;
//   - syncDelay: every commit takes this much longer (a slow fsync).
//
// Set through Config.faults (tests only); nil means none.
type diskFaults struct {
	mu        sync.Mutex
	writeErr  error
	syncErr   error
	syncDelay time.Duration
	// ckptHook, if set, runs in a periodic checkpoint between its pin and
	// its fsyncs (tests hold a checkpoint there).
	ckptHook func()
}

func (f *diskFaults) setCheckpointHook(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ckptHook = fn
}

// duringCheckpoint runs the checkpoint hook, if any.
func (f *diskFaults) duringCheckpoint() {
	if f == nil {
		return
	}
	f.mu.Lock()
	fn := f.ckptHook
	f.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (f *diskFaults) set(writeErr, syncErr error, delay time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writeErr, f.syncErr, f.syncDelay = writeErr, syncErr, delay
}

// beforeCommit runs before a write transaction starts: the slow disk's
// delay, then a failed write.
func (f *diskFaults) beforeCommit() error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	delay, err := f.syncDelay, f.writeErr
	f.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay) // simulating a slow device, on the loop like a real fsync
	}
	return err
}

// beforeWrite runs before a write transaction that is not fsynced: a
// failed write (a slow disk does not delay it: the page cache takes it).
func (f *diskFaults) beforeWrite() error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writeErr
}

// afterCommit runs after a transaction committed: a failed fsync of data
// that did reach the file.
func (f *diskFaults) afterCommit() error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncErr
}
