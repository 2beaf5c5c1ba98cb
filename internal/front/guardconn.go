package front

import (
	"context"
	"errors"
	"net"
	"syscall"

	"github.com/erlmcp/erlmcp/internal/peerconn"
)

// errPeerClosed refuses a write on a connection the worker already closed.
var errPeerClosed = errors.New("the worker closed this connection before the request was written")

// guardedConn is a keep-alive connection to a worker that refuses to send
// a request the worker can no longer read. A worker that exits (or closes
// an idle connection) sends a FIN; until the transport's reader has seen
// it, the connection still looks idle and a request may be written to it,
// and the EOF that follows says nothing about whether the worker handled
// the request. Refusing the write while nothing of it was sent makes the
// transport retry the request on a new connection (a request of which no
// byte was written is always safe to send again), which a dead worker
// refuses, so retryTransport sends it to another worker.
type guardedConn struct {
	net.Conn
	raw syscall.RawConn // nil: no guard on this platform or connection
}

func (c *guardedConn) Write(p []byte) (int, error) {
	if c.raw != nil && peerconn.Closed(c.raw) {
		return 0, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errPeerClosed}
	}
	return c.Conn.Write(p)
}

// guardedDialer dials with d and wraps TCP connections in guardedConn.
func guardedDialer(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		g := &guardedConn{Conn: c}
		if tc, ok := c.(*net.TCPConn); ok {
			if raw, err := tc.SyscallConn(); err == nil {
				g.raw = raw
			}
		}
		return g, nil
	}
}
