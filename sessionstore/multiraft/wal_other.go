//go:build !linux

package multiraft

import "os"

// fdatasync is fsync where fdatasync is not available.
func fdatasync(f *os.File) error { return f.Sync() }

// lockFile: no advisory lock here; bbolt's own open fails on a file in use.
func lockFile(*os.File) (func(), error) { return func() {}, nil }
