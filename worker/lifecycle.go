package worker

import (
	"context"
	"encoding/json"
)

// serverCapabilities is what initialize promises. It is also stored in the
// session record so a later worker with more features keeps the promise.
func serverCapabilities() json.RawMessage {
	return json.RawMessage(`{"tools":{"listChanged":false}}`)
}

// methodPing answers ping with an empty result.
func methodPing(context.Context, *call) (any, *Error) { return struct{}{}, nil }

// notifyInitialized marks the session initialized.
func notifyInitialized(ctx context.Context, h *Handler, s *session, _ json.RawMessage) error {
	return h.updateSession(ctx, s, func(r *sessionRecord) bool {
		if r.Initialized {
			return false
		}
		r.Initialized = true
		return true
	})
}
