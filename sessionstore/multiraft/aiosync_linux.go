//go:build linux

package multiraft

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// The WAL's and the checkpoints' fdatasyncs go through Linux AIO
// (IOCB_CMD_FDSYNC, Linux 4.18+): io_submit hands the sync to a kernel
// worker, io_getevents waits for its result. The kernel does the same
// vfs_fsync(datasync) as fdatasync(2), with the same errors; only the
// thread that runs it differs.
//
// Why: measured, not derived (docs/benchmarks.md, "The WAL's fdatasync
// through AIO"). On the 2-core VM that runs the three nodes of the store
// benchmark, CAS writes went 5–25 % faster in paired rounds, with the
// goroutines' scheduling latency, the leader's sync and the followers'
// acknowledgements shorter in every pair; creates did not move, reads
// have no fsync. Waiting for the completion on an eventfd through the
// runtime's poller (which frees the goroutine's P) measured the same as
// this plain wait. Where AIO is not available (io_setup or io_submit
// refused: an old kernel, seccomp, a file system without fsync for AIO)
// the syncer falls back to fdatasync(2) for good; a refusal for want of
// resources (EAGAIN, ENOMEM) or an interrupted submit (EINTR) makes only
// that sync a plain one.
//
// What running on a kernel worker changes: the flush's block-I/O is
// accounted to the worker, not to the store's cgroup (an io.max limit on
// the store does not throttle its fsyncs); and kernels before 5.8 without
// the "aio: fix async fsync creds" fix ran the sync with the worker's
// credentials, which FUSE and overlayfs can tell apart.

const iocbCmdFdsync = 3

// iocb is struct iocb of <linux/aio_abi.h>, 64 bytes, with the fields an
// fsync request does not use left blank (zero): aio_data, aio_key and
// aio_rw_flags before the opcode; aio_buf, aio_nbytes, aio_offset,
// aio_reserved2, aio_flags and aio_resfd after the file descriptor.
type iocb struct {
	_      [2]uint64
	opcode uint16 // aio_lio_opcode
	_      int16  // aio_reqprio
	fildes uint32 // aio_fildes
	_      [5]uint64
}

// ioEvent is struct io_event: aio_data and the iocb pointer, then the
// result and a second result.
type ioEvent struct {
	_   [2]uint64
	res int64
	_   int64
}

// fileSyncer fdatasyncs one file. Safe for concurrent use; syncs are
// serialized.
type fileSyncer struct {
	f *os.File
	// rc submits with f's descriptor held: a closed f fails the sync
	// instead of syncing whatever file reused the number.
	rc syscall.RawConn
	mu sync.Mutex
	// aio is the AIO context (one request in flight at most), 0 when
	// fdatasync(2) is used.
	aio uintptr
}

// newFileSyncer sets up an AIO context for f (falling back silently).
func newFileSyncer(f *os.File) *fileSyncer {
	s := &fileSyncer{f: f}
	rc, err := f.SyscallConn()
	if err != nil {
		return s
	}
	s.rc = rc
	var ctx uintptr
	if _, _, e := syscall.Syscall(syscall.SYS_IO_SETUP, 1, uintptr(unsafe.Pointer(&ctx)), 0); e == 0 {
		s.aio = ctx
	}
	return s
}

// datasync is fdatasync(f): it returns once f's data is durable, or with
// the device's error. It blocks for the sync's duration and cannot be
// cancelled (neither can fdatasync).
func (s *fileSyncer) datasync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.aio == 0 {
		return fdatasync(s.f)
	}
	var n uintptr
	var e syscall.Errno
	if err := s.rc.Control(func(fd uintptr) {
		cbs := [1]*iocb{{opcode: iocbCmdFdsync, fildes: uint32(fd)}}
		n, _, e = syscall.Syscall(syscall.SYS_IO_SUBMIT, s.aio, 1, uintptr(unsafe.Pointer(&cbs[0])))
	}); err != nil {
		return err // f is closed
	}
	switch {
	case e == syscall.EAGAIN || e == syscall.ENOMEM || e == syscall.EINTR:
		return fdatasync(s.f) // nothing was started; AIO may work next time
	case e != 0 || n != 1:
		// Refused (nothing was started): not available here.
		s.closeAIO()
		return fdatasync(s.f)
	}
	// min_nr 1, no timeout: waits for the request in flight.
	var ev ioEvent
	var got uintptr
	for e = syscall.EINTR; e == syscall.EINTR; {
		got, _, e = syscall.Syscall6(syscall.SYS_IO_GETEVENTS, s.aio, 1, 1, uintptr(unsafe.Pointer(&ev)), 0, 0)
	}
	if e != 0 || got != 1 {
		// The sync's outcome is unknown: report it failed, and leave AIO
		// (io_destroy waits for the request).
		s.closeAIO()
		return fmt.Errorf("no completion of the AIO sync (io_getevents: %d events, %v), so it may not be durable: %w", got, e, syscall.EIO)
	}
	if ev.res < 0 {
		return syscall.Errno(-ev.res)
	}
	return nil
}

func (s *fileSyncer) closeAIO() {
	if s.aio != 0 {
		_, _, _ = syscall.Syscall(syscall.SYS_IO_DESTROY, s.aio, 0, 0)
		s.aio = 0
	}
}

// close releases the AIO context (not f); it waits for a sync in flight.
func (s *fileSyncer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeAIO()
}

// usesAIO says whether syncs go through AIO (tests).
func (s *fileSyncer) usesAIO() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.aio != 0
}
