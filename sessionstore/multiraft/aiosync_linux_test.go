//go:build linux

package multiraft

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"unsafe"
)

func TestFileSyncerSyncsThroughAIO(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := newFileSyncer(f)
	defer s.close()
	if !s.usesAIO() {
		t.Skip("io_setup is not available on this machine: the syncer uses fdatasync(2)")
	}
	// Concurrent callers each get their own sync's result.
	var wg sync.WaitGroup
	errs := make(chan error, 8*50)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if _, err := f.WriteAt(bytes.Repeat([]byte{byte(g)}, 512), int64((g*50+i)*512)); err != nil {
					errs <- err
					return
				}
				errs <- s.datasync()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("datasync: %v", err)
		}
	}
	if !s.usesAIO() {
		t.Fatal("the syncer left AIO after successful syncs")
	}
	st, err := f.Stat()
	if err != nil || st.Size() != 8*50*512 {
		t.Fatalf("file size %d, %v; want %d", st.Size(), err, 8*50*512)
	}
}

// A file AIO cannot sync (a pipe: no fsync) makes the syncer fall back to
// fdatasync(2), whose error it returns: never a success it did not get.
func TestFileSyncerFallsBackAndReportsErrors(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	s := newFileSyncer(w)
	defer s.close()
	err = s.datasync()
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("datasync of a pipe: %v, want EINVAL", err)
	}
	if s.usesAIO() {
		t.Fatal("the syncer still uses AIO after the kernel refused the request")
	}
	if err := s.datasync(); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("second datasync of a pipe (fdatasync): %v, want EINVAL", err)
	}
	// close is idempotent.
	s.close()
	s.close()
}

// The structs the kernel reads and writes have its layout.
func TestAIOStructLayout(t *testing.T) {
	var cb iocb
	var ev ioEvent
	for _, c := range []struct {
		what      string
		got, want uintptr
	}{
		{"sizeof(struct iocb)", unsafe.Sizeof(cb), 64},
		{"offsetof(iocb, aio_lio_opcode)", unsafe.Offsetof(cb.opcode), 16},
		{"offsetof(iocb, aio_fildes)", unsafe.Offsetof(cb.fildes), 20},
		{"sizeof(struct io_event)", unsafe.Sizeof(ev), 32},
		{"offsetof(io_event, res)", unsafe.Offsetof(ev.res), 16},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.what, c.got, c.want)
		}
	}
}

// A syncer whose file was closed fails, even if the descriptor's number
// has been reused by another file since.
func TestFileSyncerAfterCloseFails(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	s := newFileSyncer(f)
	defer s.close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g, err := os.Create(filepath.Join(dir, "b")) // likely the same number
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := s.datasync(); err == nil {
		t.Fatal("datasync of a closed file succeeded")
	}
}
