//go:build unix

package front

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/testcluster"

	"github.com/erlmcp/erlmcp/internal/peerconn"
)

// Once the worker has closed a connection, the guard refuses to write a
// request on it and writes nothing; before that, writes go through.
func TestGuardedConnRefusesWriteAfterPeerClosed(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := guardedDialer(&net.Dialer{Timeout: 5 * time.Second})(context.Background(), "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := <-accepted
	if _, err := c.Write([]byte("first")); err != nil {
		t.Fatalf("write on an open connection: %v", err)
	}
	buf := make([]byte, 5)
	if _, err := srv.Read(buf); err != nil || string(buf) != "first" {
		t.Fatalf("server read %q, %v", buf, err)
	}
	srv.Close() // the worker exits: its kernel sends a FIN
	testcluster.WaitFor(t, 10*time.Second, "the FIN to arrive", func() error {
		if !peerconn.Closed(c.(*guardedConn).raw) {
			return fmt.Errorf("peer not seen closed yet")
		}
		return nil
	})
	n, err := c.Write([]byte("second"))
	if n != 0 || !errors.Is(err, errPeerClosed) {
		t.Fatalf("write after the peer closed: n=%d err=%v, want 0 and errPeerClosed", n, err)
	}
}
