package sessionstore

import "sync"

// waiters wakes ReadEvents long-polls when their stream is appended to (or
// their session goes). A waiter takes a channel with watch and gives it
// back with release; an entry lives only while someone holds it, so
// cancelled or timed-out polls leave nothing behind.
type waiters struct {
	mu       sync.Mutex
	sessions map[string]map[string]*waitEntry // session id → stream → entry
}

type waitEntry struct {
	ch   chan struct{} // closed (and replaced) on each wake
	refs int
}

func newWaiters() *waiters {
	return &waiters{sessions: map[string]map[string]*waitEntry{}}
}

// watch returns a channel closed at the next wake of (id, stream), and the
// release to call once the caller stops waiting on it.
func (w *waiters) watch(id, stream string) (<-chan struct{}, func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	streams := w.sessions[id]
	if streams == nil {
		streams = map[string]*waitEntry{}
		w.sessions[id] = streams
	}
	e := streams[stream]
	if e == nil {
		e = &waitEntry{ch: make(chan struct{})}
		streams[stream] = e
	}
	e.refs++
	ch := e.ch
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			e.refs--
			if e.refs > 0 {
				return
			}
			if streams := w.sessions[id]; streams != nil && streams[stream] == e {
				delete(streams, stream)
				if len(streams) == 0 {
					delete(w.sessions, id)
				}
			}
		})
	}
}

// wake wakes the waiters of (id, stream).
func (w *waiters) wake(id, stream string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e := w.sessions[id][stream]; e != nil {
		close(e.ch)
		e.ch = make(chan struct{})
	}
}

// wakeSession wakes the waiters of every stream of id (it was deleted or
// expired; they read again and answer NOT_FOUND).
func (w *waiters) wakeSession(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.sessions[id] {
		close(e.ch)
		e.ch = make(chan struct{})
	}
}

// wakeAll wakes every waiter (this replica's state was replaced by a
// snapshot; they read again).
func (w *waiters) wakeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, streams := range w.sessions {
		for _, e := range streams {
			close(e.ch)
			e.ch = make(chan struct{})
		}
	}
}

// len counts the (session, stream) entries held, for tests.
func (w *waiters) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, s := range w.sessions {
		n += len(s)
	}
	return n
}
