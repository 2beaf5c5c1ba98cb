//go:build !linux

package multiraft

import "os"

// fileSyncer is a plain fdatasync where Linux AIO is not available (see
// aiosync_linux.go).
type fileSyncer struct{ f *os.File }

func newFileSyncer(f *os.File) *fileSyncer { return &fileSyncer{f: f} }

// datasync is fdatasync(f); it blocks until the data is durable.
func (s *fileSyncer) datasync() error { return fdatasync(s.f) }

func (s *fileSyncer) close() {}

func (s *fileSyncer) usesAIO() bool { return false }
