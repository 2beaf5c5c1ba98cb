package worker

import (
	"context"
	"encoding/json"
)

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
