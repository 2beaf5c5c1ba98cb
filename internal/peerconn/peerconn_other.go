//go:build !unix

package peerconn

import "syscall"

// Closed cannot peek on this platform: never closed.
func Closed(syscall.RawConn) bool { return false }
