package worker

// The store client's events, state and tasks calls.

import (
	"context"
	"errors"
	"time"

	"github.com/erlmcp/erlmcp/sessionstore/client"
)

func (s clientStore) AppendEvents(ctx context.Context, sid, stream string, data ...[]byte) ([]uint64, error) {
	seqs, err := s.c.AppendEvents(ctx, sid, stream, data...)
	return seqs, mapDataErr(err)
}

func (s clientStore) ReadEvents(ctx context.Context, sid, stream string, after uint64, limit int, wait time.Duration) (Events, error) {
	ev, err := s.c.ReadEvents(ctx, sid, stream, after, limit, wait)
	if err != nil {
		return Events{}, mapDataErr(err)
	}
	out := Events{FirstRetainedSeq: ev.FirstRetainedSeq, LastSeq: ev.LastSeq, Events: make([]Event, len(ev.Events))}
	for i, e := range ev.Events {
		out.Events[i] = Event{Stream: e.Stream, Seq: e.Seq, Data: e.Data, CreatedAt: e.CreatedAt}
	}
	return out, nil
}

func (s clientStore) GetState(ctx context.Context, sid, key string) (StateEntry, error) {
	e, err := s.c.GetState(ctx, sid, key)
	return StateEntry{Key: e.Key, Value: e.Value, Version: e.Version}, mapDataErr(err)
}

func (s clientStore) PutState(ctx context.Context, sid, key string, value []byte, expected *uint64) (StateEntry, error) {
	e, err := s.c.PutState(ctx, sid, key, value, expected)
	return StateEntry{Key: e.Key, Value: e.Value, Version: e.Version}, mapDataErr(err)
}

func (s clientStore) DeleteState(ctx context.Context, sid, key string) error {
	return mapDataErr(s.c.DeleteState(ctx, sid, key))
}

func (s clientStore) ListState(ctx context.Context, sid, prefix string) ([]StateEntry, error) {
	es, err := s.c.ListState(ctx, sid, prefix)
	if err != nil {
		return nil, mapDataErr(err)
	}
	out := make([]StateEntry, len(es))
	for i, e := range es {
		out[i] = StateEntry{Key: e.Key, Value: e.Value, Version: e.Version}
	}
	return out, nil
}

func (s clientStore) PutTask(ctx context.Context, sid string, t Task, expected *uint64) (Task, error) {
	ct, err := s.c.PutTask(ctx, sid, toClientTask(t), expected)
	return fromClientTask(ct), mapDataErr(err)
}

func (s clientStore) GetTask(ctx context.Context, sid, id string) (Task, error) {
	ct, err := s.c.GetTask(ctx, sid, id)
	return fromClientTask(ct), mapDataErr(err)
}

func (s clientStore) ListTasks(ctx context.Context, sid, after string, limit int) ([]Task, string, error) {
	cts, next, err := s.c.ListTasks(ctx, sid, after, limit)
	if err != nil {
		return nil, "", mapDataErr(err)
	}
	out := make([]Task, len(cts))
	for i, ct := range cts {
		out[i] = fromClientTask(ct)
	}
	return out, next, nil
}

func toClientTask(t Task) client.Task {
	return client.Task{ID: t.ID, Status: t.Status, StatusMessage: t.StatusMessage, Owner: t.Owner, Result: t.Result, Data: t.Data,
		CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt, TTL: t.TTL, Version: t.Version}
}

func fromClientTask(t client.Task) Task {
	return Task{ID: t.ID, Status: t.Status, StatusMessage: t.StatusMessage, Owner: t.Owner, Result: t.Result, Data: t.Data,
		CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt, TTL: t.TTL, Version: t.Version}
}

// mapDataErr maps an error of a key, stream or task call: a missing
// session is ErrSessionNotFound, a missing key or task ErrNotFound.
func mapDataErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, client.ErrSessionNotFound):
		return &mappedError{kind: ErrSessionNotFound, err: err}
	case errors.Is(err, client.ErrNotFound):
		return &mappedError{kind: ErrNotFound, err: err}
	}
	return mapClientErr(err)
}
