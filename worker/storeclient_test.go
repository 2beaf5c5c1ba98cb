package worker

import (
	"errors"
	"fmt"
	"testing"

	"github.com/erlmcp/erlmcp/sessionstore/client"
)

func TestMapClientErr(t *testing.T) {
	if mapClientErr(nil) != nil {
		t.Fatal("nil error mapped to non-nil")
	}
	for _, tc := range []struct {
		in   error
		want error
	}{
		{client.ErrNotFound, ErrSessionNotFound},
		{client.ErrExpired, ErrSessionNotFound},
		{client.ErrAlreadyExists, ErrSessionExists},
		{client.ErrVersionConflict, ErrVersionConflict},
		{client.ErrUnavailable, ErrStoreUnavailable},
	} {
		in := fmt.Errorf("get session %q: %w: detail", "abc", tc.in)
		got := mapClientErr(in)
		if !errors.Is(got, tc.want) || !errors.Is(got, tc.in) || got.Error() != in.Error() {
			t.Errorf("mapClientErr(%v) = %v; want it to match %v and %v with the same message", in, got, tc.want, tc.in)
		}
	}
	other := errors.New("boom")
	if got := mapClientErr(other); got != other {
		t.Errorf("unknown error changed: %v", got)
	}
}
