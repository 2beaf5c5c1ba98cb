package multiraft

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data and the metadata needed to read it back (its
// size), not its times: one device flush less than fsync on most
// filesystems.
func fdatasync(f *os.File) error {
	return syscall.Fdatasync(int(f.Fd()))
}
