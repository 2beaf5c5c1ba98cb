// Package proccpu reads the CPU time the current process has used, for the
// store's benchmarks (the engine's in sessionstore/multiraft and the whole
// store's in sessionstore), which report CPU per operation.
package proccpu

import "time"

// Used is the user and system CPU time this process has used so far, or 0
// where the platform does not say.
func Used() time.Duration { return used() }
