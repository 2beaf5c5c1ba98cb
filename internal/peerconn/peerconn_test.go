package peerconn

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// serve runs a server whose handler signals running once it has the
// request, then waits for proceed and reports what judge says.
func serve(t *testing.T, withConnContext bool, judge func(*http.Request) bool) (addr string, running, proceed chan struct{}, seen chan bool) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	running, proceed, seen = make(chan struct{}), make(chan struct{}), make(chan bool, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(running)
		<-proceed
		seen <- judge(r)
	})}
	if withConnContext {
		srv.ConnContext = ConnContext
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), running, proceed, seen
}

func send(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
	return c
}

func TestGoneAfterClientClosed(t *testing.T) {
	// The handler waits (with a deadline) for Gone to see the close.
	addr, running, proceed, seen := serve(t, true, func(r *http.Request) bool {
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if Gone(r) {
				return true
			}
		}
		return false
	})
	c := send(t, addr)
	<-running
	c.Close()
	close(proceed)
	if !<-seen {
		t.Fatal("the client closed its connection; Gone never said so")
	}
}

func TestNotGoneWhileClientWaits(t *testing.T) {
	for _, cc := range []bool{true, false} {
		addr, running, proceed, seen := serve(t, cc, Gone)
		c := send(t, addr)
		<-running
		close(proceed)
		if <-seen {
			t.Fatalf("ConnContext %v: a client waiting for its answer was reported gone", cc)
		}
		if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}
