package worker

import (
	"bytes"
	"sync"
	"sync/atomic"
	"time"
)

// The session cache lets a worker answer a request without reading the
// session record from the store, while keeping design.md §2's promise: a
// client's next request, on any worker, sees its previous acknowledged
// change. Reading the record was the one store call of a quick
// tools/call, and a linearizable read costs the three store replicas
// more CPU than the worker spends on the whole request.
//
// How it stays correct without a watch on the store:
//
//   - An entry is used for at most ttl after the store read that filled
//     it was sent (fetched). A record the store held before a change was
//     read before the change was applied, so no worker uses it later
//     than ttl after the change.
//   - Every worker that changes a cacheable record (compare-and-set or
//     delete) waits settleDelay (ttl and a margin for clock rates) after
//     the store acknowledged the change before it acknowledges the
//     client. By then every worker's copy of the old record has expired,
//     so the client's next request reads the store wherever it lands. A
//     request concurrent with the change may still see the old record,
//     as it could without the cache.
//   - Only records of initialized sessions are cached, so the one change
//     nearly every session makes (notifications/initialized) and anything
//     before it never wait. logging/setLevel and DELETE do.
//   - A record whose idle timer needs a touch is read from the store (and
//     touched) as before, so a cached session never outlives its TTL.
//
// What it assumes: every process that changes session records (all
// erlmcp workers sharing a store) waits at least this worker's ttl; a
// worker that writes records without waiting (another implementation, or
// a worker with the cache off during a rolling change of the setting)
// can leave this one serving the old record for up to ttl. Set ttl 0 on
// every worker to turn the cache off.
type sessionCache struct {
	ttl time.Duration
	m   sync.Map // session id -> *cacheEntry
	n   atomic.Int64
}

// maxCacheEntries bounds the cache; past it the cache starts over (an
// entry saves at most one read per ttl).
const maxCacheEntries = 1 << 16

// cacheEntry is one session's last record read from the store. data
// also saves decoding the same bytes again when the entry is not usable
// (the cache off, expired or uninitialized): the record is a pure
// function of the bytes.
type cacheEntry struct {
	sess    Session // Data is data
	rec     sessionRecord
	fetched time.Time // when the store read that returned it was sent
	usable  bool      // initialized: may be served without a read
}

// settleDelay is how long a change to a cached record waits after the
// store acknowledged it: ttl plus a tenth for the rates of the clocks
// that measure ttl elsewhere and this wait.
func (c *sessionCache) settleDelay() time.Duration { return c.ttl + c.ttl/10 }

// fresh returns a session's entry when it may be served at now.
func (c *sessionCache) fresh(id string, now time.Time) (*cacheEntry, bool) {
	if c.ttl <= 0 {
		return nil, false
	}
	v, ok := c.m.Load(id)
	if !ok {
		return nil, false
	}
	e := v.(*cacheEntry)
	if !e.usable || now.Sub(e.fetched) >= c.ttl {
		return nil, false
	}
	return e, true
}

// decode returns the record s.Data decodes to (from the last entry when
// its bytes are the same) and remembers it, read at fetched.
func (c *sessionCache) decode(id string, s Session, fetched time.Time) (sessionRecord, error) {
	var rec sessionRecord
	if v, ok := c.m.Load(id); ok && bytes.Equal(v.(*cacheEntry).sess.Data, s.Data) {
		rec = v.(*cacheEntry).rec
	} else {
		var err error
		if rec, err = decodeRecord(s.Data); err != nil {
			return rec, err
		}
	}
	e := &cacheEntry{sess: s, rec: rec, fetched: fetched, usable: rec.Initialized}
	if _, loaded := c.m.Swap(id, e); !loaded && c.n.Add(1) > maxCacheEntries {
		c.m.Clear()
		c.n.Store(0)
	}
	return rec, nil
}

// forget drops a session's entry: this worker is changing it.
func (c *sessionCache) forget(id string) {
	if _, loaded := c.m.LoadAndDelete(id); loaded {
		c.n.Add(-1)
	}
}

// settle waits until no worker can still serve the record that a change
// acknowledged by the store just replaced, when that record was
// cacheable; the caller acknowledges the change to the client after it.
// It blocks for settleDelay (about the TTL) whatever the request's
// context does: the change is already durable, so ending early could only
// turn a success into an error (a retried DELETE would then get 404).
// It returns how long it waited (for the debug log: the sleep may
// overrun under load), zero when the record was not cacheable.
func (c *sessionCache) settle(old sessionRecord) time.Duration {
	if c.ttl <= 0 || !old.Initialized {
		return 0
	}
	t0 := time.Now()
	time.Sleep(c.settleDelay()) // the wait is the point: see sessionCache
	return time.Since(t0)
}
