package worker

import (
	"context"
	"errors"
	"time"

	"github.com/erlmcp/erlmcp/sessionstore/client"
)

// StoreFromClient adapts the session store's Go client to SessionStore.
// Its errors keep their message and chain and also match this package's
// sentinels (ErrSessionNotFound for client.ErrNotFound and ErrExpired, and
// so on).
func StoreFromClient(c *client.Client) SessionStore { return clientStore{c} }

type clientStore struct{ c *client.Client }

func (s clientStore) Create(ctx context.Context, id string, data []byte, idleTTL time.Duration) (Session, error) {
	cs, err := s.c.Create(ctx, id, data, idleTTL)
	return fromClient(cs), mapClientErr(err)
}

func (s clientStore) Get(ctx context.Context, id string, touch bool) (Session, error) {
	cs, err := s.c.Get(ctx, id, touch)
	return fromClient(cs), mapClientErr(err)
}

func (s clientStore) CompareAndSet(ctx context.Context, id string, expectedVersion uint64, data []byte) (Session, error) {
	cs, err := s.c.CompareAndSet(ctx, id, expectedVersion, data)
	return fromClient(cs), mapClientErr(err)
}

func (s clientStore) Delete(ctx context.Context, id string) error {
	return mapClientErr(s.c.Delete(ctx, id))
}

func fromClient(cs client.Session) Session {
	return Session{ID: cs.ID, Version: cs.Version, Data: cs.Data, UpdatedAt: cs.UpdatedAt, IdleTTL: cs.IdleTTL}
}

// mappedError is a client error that also matches a worker sentinel.
type mappedError struct {
	kind, err error
}

func (e *mappedError) Error() string   { return e.err.Error() }
func (e *mappedError) Unwrap() []error { return []error{e.kind, e.err} }

func mapClientErr(err error) error {
	var kind error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, client.ErrNotFound):
		kind = ErrSessionNotFound
	case errors.Is(err, client.ErrAlreadyExists):
		kind = ErrSessionExists
	case errors.Is(err, client.ErrVersionConflict):
		kind = ErrVersionConflict
	case errors.Is(err, client.ErrUnavailable):
		kind = ErrStoreUnavailable
	default:
		return err
	}
	return &mappedError{kind: kind, err: err}
}
