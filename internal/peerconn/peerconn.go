// Package peerconn tells an HTTP handler whether the client of a request
// has already gone, before the handler acts on the request.
//
// Why: a request can sit unread in a socket, or read but not yet handled,
// while its receiver is frozen (SIGSTOP, a stalled VM). Its client times out
// and moves on, and may send the next request elsewhere. When the receiver
// resumes it would handle the stale request after the newer one: for a
// counter that is an increment applied out of order, after the client
// already saw a later value. A client that timed out closed its
// connection, so the receiver can tell: the request's context is done, or
// the connection has nothing left to read but its end.
//
// It never says gone for a client that is still connected, so it is safe
// to skip a request it reports (nobody waits for the answer); a client
// that half-closes its side while waiting for the answer is reported gone.
package peerconn

import (
	"context"
	"net"
	"net/http"
	"syscall"
)

type connKey struct{}

// ConnContext is an http.Server ConnContext hook: it makes each request's
// connection known to Gone.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// Gone reports whether r's client has closed its connection (or the
// server already noticed and cancelled r's context). Without ConnContext
// on the server only the context is checked. It does not block.
func Gone(r *http.Request) bool {
	if r.Context().Err() != nil {
		return true
	}
	sc, ok := r.Context().Value(connKey{}).(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	return Closed(raw)
}
