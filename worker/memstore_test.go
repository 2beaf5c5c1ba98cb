package worker

import (
	"context"
	"fmt"
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
}

func newMemStore() *memStore { return &memStore{sessions: map[string]Session{}} }

func (m *memStore) check() error {
	if m.down.Load() {
		return fmt.Errorf("memstore: %w", ErrStoreUnavailable)
	}
	return nil
}

func (m *memStore) Create(_ context.Context, id string, data []byte, _ time.Duration) (Session, error) {
	if err := m.check(); err != nil {
		return Session{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.sessions[id]; ok {
		return Session{}, ErrSessionExists
	}
	s := Session{ID: id, Version: 1, Data: append([]byte(nil), data...)}
	m.sessions[id] = s
	return s, nil
}

func (m *memStore) Get(_ context.Context, id string, _ bool) (Session, error) {
	if err := m.check(); err != nil {
		return Session{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sessions[id]
	if !ok {
		return Session{}, fmt.Errorf("memstore: %s: %w", id, ErrSessionNotFound)
	}
	return s, nil
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
