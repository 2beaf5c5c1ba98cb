package loadgen

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// Endpoint health, shared by every session of a Client. Each session keeps
// its own endpoint and leaves it after its own request there failed or
// when the endpoint is marked down, so one slow answer does not move every
// session at once: a request stuck behind a stopped store times out
// through a live front as well, and moving all sessions on that single
// timeout sent them to the front that was really gone (a stopped front
// accepts connections and never answers, so each request there costs a
// whole timeout).
const (
	// DefaultEndpointCooldown is how long an endpoint marked down is
	// avoided. It outlasts a region held down in the HA scenarios, so the
	// sessions that left a stopped front do not go back to it while it is
	// still stopped.
	DefaultEndpointCooldown = 30 * time.Second
	// DefaultEndpointTimeouts is how many timeouts in a row, with no answer
	// in between, mark an endpoint down. A connection refused, reset or
	// closed marks it down at once.
	DefaultEndpointTimeouts = 3
	// DefaultEndpointProbeTimeout bounds the probe that tells, after a
	// session's request timed out, a stopped endpoint (no answer at all)
	// from a live one whose answer was slow.
	DefaultEndpointProbeTimeout = time.Second
)

// endpointHealth is what the client knows of each endpoint: index 0 is the
// Client's URL, i the Fallbacks[i-1].
type endpointHealth struct {
	// probes sends the probes, each on a connection of its own: the
	// sessions' pool may be taken up by requests stuck on a live endpoint,
	// which must not make it look stopped.
	probes    *http.Client
	mu        sync.Mutex
	downUntil []time.Time
	markedAt  []time.Time
	timeouts  []int
}

// connLevel reports whether a failure of kind says the endpoint itself is
// unreachable (as opposed to slow).
func connLevel(kind string) bool {
	switch kind {
	case "conn_refused", "conn_reset", "conn_closed", "conn_error":
		return true
	}
	return false
}

func (c *Client) endpoints() int { return len(c.Fallbacks) + 1 }

func (c *Client) url(i int) string {
	if i == 0 {
		return c.URL
	}
	return c.Fallbacks[i-1]
}

func (c *Client) health() *endpointHealth {
	c.healthOnce.Do(func() {
		n := c.endpoints()
		tr := &http.Transport{
			Proxy:             nil,
			DialContext:       (&net.Dialer{Timeout: c.probeTimeout()}).DialContext,
			DisableKeepAlives: true,
		}
		c.h = &endpointHealth{probes: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
			downUntil: make([]time.Time, n), markedAt: make([]time.Time, n), timeouts: make([]int, n)}
	})
	return c.h
}

func (c *Client) cooldown() time.Duration {
	if c.EndpointCooldown > 0 {
		return c.EndpointCooldown
	}
	return DefaultEndpointCooldown
}

func (c *Client) timeoutsToDown() int {
	if c.EndpointTimeouts > 0 {
		return c.EndpointTimeouts
	}
	return DefaultEndpointTimeouts
}

func (c *Client) probeTimeout() time.Duration {
	if c.EndpointProbeTimeout > 0 {
		return c.EndpointProbeTimeout
	}
	return DefaultEndpointProbeTimeout
}

// alive probes endpoint i after a session's request there timed out: a GET
// of its URL without a session, which any MCP endpoint answers at once
// (an error status is an answer) without touching session state. It
// reports whether an answer came within the probe timeout, recording it
// as one (the endpoint is up) when it did.
func (c *Client) alive(i int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), c.probeTimeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(i), nil)
	if err != nil {
		return false
	}
	req.Header.Set("Accept", "text/event-stream")
	sent := time.Now()
	resp, err := c.health().probes.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	c.answered(i, sent)
	return true
}

// markDown marks endpoint i down at now, as a refused connection does.
func (c *Client) markDown(i int, now time.Time) {
	h := c.health()
	h.mu.Lock()
	defer h.mu.Unlock()
	c.markDownLocked(h, i, now)
}

// markDownLocked marks endpoint i down from now for the cool-down; with
// h.mu held.
func (c *Client) markDownLocked(h *endpointHealth, i int, now time.Time) {
	h.timeouts[i] = 0
	h.markedAt[i] = now
	h.downUntil[i] = now.Add(c.cooldown())
}

// isDown reports whether endpoint i is marked down at now.
func (c *Client) isDown(i int, now time.Time) bool {
	h := c.health()
	h.mu.Lock()
	defer h.mu.Unlock()
	return now.Before(h.downUntil[i])
}

// answered records that endpoint i answered (with any HTTP status) a
// request sent at sent: it is up, whatever was said of it before, unless
// the request went out before the endpoint was marked down (a late answer
// to a request from before a stop says nothing of the endpoint now).
func (c *Client) answered(i int, sent time.Time) {
	if c.endpoints() == 1 {
		return
	}
	h := c.health()
	h.mu.Lock()
	defer h.mu.Unlock()
	if sent.Before(h.markedAt[i]) {
		return
	}
	h.timeouts[i] = 0
	h.downUntil[i] = time.Time{}
}

// failed records a transport failure of kind on endpoint i at now and
// reports whether it marked the endpoint down.
func (c *Client) failed(i int, kind string, now time.Time) bool {
	if c.endpoints() == 1 {
		return false
	}
	h := c.health()
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case connLevel(kind):
	case kind == "timeout":
		h.timeouts[i]++
		if h.timeouts[i] < c.timeoutsToDown() {
			return false
		}
	default:
		return false
	}
	c.markDownLocked(h, i, now)
	return true
}

// pick returns the endpoint a session on cur should use at now, after its
// last request there failed with kind ("" when it did not fail). A session
// stays on cur while cur is not down and its own request did not time out
// or fail to connect; otherwise it takes the next endpoint round robin
// that is not down. A session whose own request timed out moves at once,
// before the endpoint is marked down for everyone: otherwise the sessions
// that timed out first on a stopped endpoint would each wait out a second
// timeout there. When every other endpoint is down too, a session that
// failed goes to the one whose cool-down ends first (marked longest ago:
// a front marked down for timeouts that were the store's, not its own,
// is up again; staying would keep the session on a stopped front for the
// whole cool-down), and one that did not fail stays.
func (c *Client) pick(cur int, kind string, now time.Time) int {
	n := c.endpoints()
	if n == 1 {
		return 0
	}
	h := c.health()
	h.mu.Lock()
	defer h.mu.Unlock()
	leave := kind == "timeout" || connLevel(kind)
	if !leave && !now.Before(h.downUntil[cur]) {
		return cur
	}
	for k := 1; k < n; k++ {
		i := (cur + k) % n
		if !now.Before(h.downUntil[i]) {
			return i
		}
	}
	if !leave {
		return cur
	}
	best := -1
	for k := 1; k < n; k++ {
		i := (cur + k) % n
		if best < 0 || h.downUntil[i].Before(h.downUntil[best]) {
			best = i
		}
	}
	return best
}
