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

// lockFile takes an exclusive flock on f without waiting (bbolt holds one
// while it has the file open) and returns its release.
func lockFile(f *os.File) (func(), error) {
	fd := int(f.Fd())
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil, err
	}
	return func() { _ = syscall.Flock(fd, syscall.LOCK_UN) }, nil
}
