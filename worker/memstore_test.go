package worker

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// memStore is an in-memory SessionStore for protocol tests.
type memStore struct {
	mu       sync.Mutex
	sessions map[string]Session
	// down makes every call fail with ErrStoreUnavailable.
	down atomic.Bool
	// conflicts makes the next n CompareAndSet calls fail with a version
	// conflict after bumping the stored version (another writer won).
	conflicts atomic.Int32
	// extra holds events, state and tasks per session; changed is closed
	// at every append (long polls wait on it).
	extra   map[string]*memData
	changed chan struct{}
	// appends, when set, is called (under the lock) at every append.
	appends func(sid, stream string, data [][]byte)
	// touches counts Get calls with touch; gets counts all Get calls.
	touches, gets atomic.Int32
	// inflightPuts counts PutState calls of inflight/ keys.
	inflightPuts atomic.Int32
}

func newMemStore() *memStore { return &memStore{sessions: map[string]Session{}} }

func (m *memStore) check() error {
	if m.down.Load() {
		return fmt.Errorf("memstore: %w", ErrStoreUnavailable)
	}
	return nil
}

func (m *memStore) Create(_ context.Context, id string, data []byte, ttl time.Duration) (Session, error) {
	if err := m.check(); err != nil {
		return Session{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.sessions[id]; ok {
		return Session{}, ErrSessionExists
	}
	s := Session{ID: id, Version: 1, Data: append([]byte(nil), data...), UpdatedAt: time.Now(), IdleTTL: ttl}
	m.sessions[id] = s
	return s, nil
}

func (m *memStore) Get(_ context.Context, id string, touch bool) (Session, error) {
	if err := m.check(); err != nil {
		return Session{}, err
	}
	m.gets.Add(1)
	if touch {
		m.touches.Add(1)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sessions[id]
	if !ok {
		return Session{}, fmt.Errorf("memstore: %s: %w", id, ErrSessionNotFound)
	}
	if touch {
		s.UpdatedAt = time.Now()
		m.sessions[id] = s
	}
	return s, nil
}

// age moves a session's updated_at d into the past.
func (m *memStore) age(id string, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.sessions[id]
	s.UpdatedAt = s.UpdatedAt.Add(-d)
	m.sessions[id] = s
}

func (m *memStore) CompareAndSet(_ context.Context, id string, expected uint64, data []byte) (Session, error) {
	if err := m.check(); err != nil {
		return Session{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sessions[id]
	if !ok {
		return Session{}, ErrSessionNotFound
	}
	if m.conflicts.Load() > 0 {
		m.conflicts.Add(-1)
		s.Version++
		m.sessions[id] = s
		return Session{}, ErrVersionConflict
	}
	if s.Version != expected {
		return Session{}, ErrVersionConflict
	}
	s.Version++
	s.Data = append([]byte(nil), data...)
	s.UpdatedAt = time.Now()
	m.sessions[id] = s
	return s, nil
}

func (m *memStore) Delete(_ context.Context, id string) error {
	if err := m.check(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.sessions[id]; !ok {
		return ErrSessionNotFound
	}
	delete(m.sessions, id)
	delete(m.extra, id)
	if m.changed != nil {
		close(m.changed)
		m.changed = nil
	}
	return nil
}

func (m *memStore) record(id string) (sessionRecord, bool) {
	m.mu.Lock()
	s, ok := m.sessions[id]
	m.mu.Unlock()
	if !ok {
		return sessionRecord{}, false
	}
	r, err := decodeRecord(s.Data)
	return r, err == nil
}

// memData is the per-session part of memStore beyond the record.
type memData struct {
	streams map[string]*Events
	state   map[string]StateEntry
	tasks   map[string]Task
}

func (m *memStore) data(id string) (*memData, error) {
	if _, ok := m.sessions[id]; !ok {
		return nil, fmt.Errorf("memstore: %s: %w", id, ErrSessionNotFound)
	}
	if m.extra == nil {
		m.extra = map[string]*memData{}
	}
	d := m.extra[id]
	if d == nil {
		d = &memData{streams: map[string]*Events{}, state: map[string]StateEntry{}, tasks: map[string]Task{}}
		m.extra[id] = d
	}
	return d, nil
}

// changedLocked returns the channel closed at the next append.
func (m *memStore) changedLocked() chan struct{} {
	if m.changed == nil {
		m.changed = make(chan struct{})
	}
	return m.changed
}

func (m *memStore) AppendEvents(_ context.Context, sid, stream string, data ...[]byte) ([]uint64, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.data(sid)
	if err != nil {
		return nil, err
	}
	s := d.streams[stream]
	if s == nil {
		s = &Events{}
		d.streams[stream] = s
	}
	var seqs []uint64
	for _, b := range data {
		s.LastSeq++
		if s.FirstRetainedSeq == 0 {
			s.FirstRetainedSeq = s.LastSeq
		}
		s.Events = append(s.Events, Event{Stream: stream, Seq: s.LastSeq, Data: append([]byte(nil), b...), CreatedAt: time.Now()})
		seqs = append(seqs, s.LastSeq)
	}
	if m.appends != nil {
		m.appends(sid, stream, data)
	}
	close(m.changedLocked())
	m.changed = nil
	return seqs, nil
}

func (m *memStore) ReadEvents(ctx context.Context, sid, stream string, after uint64, limit int, wait time.Duration) (Events, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		if err := m.check(); err != nil {
			return Events{}, err
		}
		m.mu.Lock()
		d, err := m.data(sid)
		if err != nil {
			m.mu.Unlock()
			return Events{}, err
		}
		var out Events
		if s := d.streams[stream]; s != nil {
			out.FirstRetainedSeq, out.LastSeq = s.FirstRetainedSeq, s.LastSeq
			for _, e := range s.Events {
				if e.Seq > after && (limit <= 0 || len(out.Events) < limit) {
					out.Events = append(out.Events, e)
				}
			}
		}
		ch := m.changedLocked()
		m.mu.Unlock()
		if len(out.Events) > 0 || wait <= 0 {
			return out, nil
		}
		select {
		case <-ch:
		case <-timer.C:
			return out, nil
		case <-ctx.Done():
			return Events{}, ctx.Err()
		}
	}
}

func (m *memStore) GetState(_ context.Context, sid, key string) (StateEntry, error) {
	if err := m.check(); err != nil {
		return StateEntry{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.data(sid)
	if err != nil {
		return StateEntry{}, err
	}
	e, ok := d.state[key]
	if !ok {
		return StateEntry{}, fmt.Errorf("memstore: key %q: %w", key, ErrNotFound)
	}
	return e, nil
}

func (m *memStore) PutState(_ context.Context, sid, key string, value []byte, expected *uint64) (StateEntry, error) {
	if err := m.check(); err != nil {
		return StateEntry{}, err
	}
	if strings.HasPrefix(key, inflightPrefix) {
		m.inflightPuts.Add(1)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.data(sid)
	if err != nil {
		return StateEntry{}, err
	}
	cur := d.state[key]
	if expected != nil && *expected != cur.Version {
		return StateEntry{}, fmt.Errorf("memstore: key %q at %d: %w", key, cur.Version, ErrVersionConflict)
	}
	e := StateEntry{Key: key, Value: append([]byte(nil), value...), Version: cur.Version + 1}
	d.state[key] = e
	return e, nil
}

func (m *memStore) DeleteState(_ context.Context, sid, key string) error {
	if err := m.check(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.data(sid)
	if err != nil {
		return err
	}
	delete(d.state, key)
	return nil
}

func (m *memStore) ListState(_ context.Context, sid, prefix string) ([]StateEntry, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.data(sid)
	if err != nil {
		return nil, err
	}
	var out []StateEntry
	for k, e := range d.state {
		if strings.HasPrefix(k, prefix) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (m *memStore) PutTask(_ context.Context, sid string, t Task, expected *uint64) (Task, error) {
	if err := m.check(); err != nil {
		return Task{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.data(sid)
	if err != nil {
		return Task{}, err
	}
	cur, ok := d.tasks[t.ID]
	if expected != nil && *expected != cur.Version {
		return Task{}, fmt.Errorf("memstore: task %q at %d: %w", t.ID, cur.Version, ErrVersionConflict)
	}
	now := time.Now()
	if ok {
		t.CreatedAt = cur.CreatedAt
	} else {
		t.CreatedAt = now
	}
	t.UpdatedAt = now
	t.Version = cur.Version + 1
	d.tasks[t.ID] = t
	return t, nil
}

func (m *memStore) GetTask(_ context.Context, sid, id string) (Task, error) {
	if err := m.check(); err != nil {
		return Task{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.data(sid)
	if err != nil {
		return Task{}, err
	}
	t, ok := d.tasks[id]
	if !ok {
		return Task{}, fmt.Errorf("memstore: task %q: %w", id, ErrNotFound)
	}
	return t, nil
}

func (m *memStore) ListTasks(_ context.Context, sid, after string, limit int) ([]Task, string, error) {
	if err := m.check(); err != nil {
		return nil, "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.data(sid)
	if err != nil {
		return nil, "", err
	}
	var ids []string
	for id := range d.tasks {
		if id > after {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	next := ""
	if limit > 0 && len(ids) > limit {
		ids = ids[:limit]
		next = ids[limit-1]
	}
	out := make([]Task, 0, len(ids))
	for _, id := range ids {
		out = append(out, d.tasks[id])
	}
	return out, next, nil
}

// events returns a copy of a stream's events.
func (m *memStore) events(sid, stream string) []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.data(sid)
	if err != nil || d.streams[stream] == nil {
		return nil
	}
	return append([]Event(nil), d.streams[stream].Events...)
}
