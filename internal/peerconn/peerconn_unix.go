//go:build unix

package peerconn

import "syscall"

// Closed reports whether the peer has closed the connection (a FIN or a
// reset is waiting to be read), without consuming anything: a non-blocking
// MSG_PEEK returns 0 bytes only at end of stream.
func Closed(raw syscall.RawConn) bool {
	closed := false
	_ = raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = (n == 0 && err == nil) || err == syscall.ECONNRESET
	})
	return closed
}
