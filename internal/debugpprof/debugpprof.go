// Package debugpprof serves Go's runtime profiles on a server's own mux,
// for the processes' --pprof flag (off by default: profiles cost CPU and
// show internals, so they are for an operator chasing a cost).
package debugpprof

import (
	"net/http"
	"net/http/pprof"
)

// Register adds /debug/pprof/ (index and named profiles), cmdline,
// profile, symbol and trace to mux.
func Register(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
