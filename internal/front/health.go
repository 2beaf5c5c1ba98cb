package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// errWorkerDown is the cause a request in flight to a worker is cancelled
// with once the detector has confirmed that worker dead or paused, instead
// of waiting for a process that may never answer (a SIGSTOPped worker
// accepts connections in the kernel and answers nothing): an idempotent
// request goes to another worker, any other is answered 502 (see
// retryTransport.send for why that is safe).
var errWorkerDown = errors.New("the worker stopped answering health probes and was taken out of rotation")

// attempt is one request in flight to one worker, which the detector may
// cancel. Once the answer's headers arrived it is also the answer's body
// (retryTransport.send): one allocation per attempt carries what used to
// be half a dozen closures and wrappers.
type attempt struct {
	cancel context.CancelCauseFunc
	pool   *pool
	st     *workerState
	// gotByte: a byte of the answer arrived (the request was read).
	gotByte atomic.Bool
	trace   httptrace.ClientTrace
	// body is the answer's body; once ends the tracking when it is closed.
	body io.ReadCloser
	once sync.Once
}

// firstByte is the trace's GotFirstResponseByte hook.
func (a *attempt) firstByte() {
	a.gotByte.Store(true)
	a.pool.answered(a.st)
}

// done ends the attempt: it is no longer in flight, its context is
// released.
func (a *attempt) done() {
	a.pool.untrack(a.st, a)
	a.cancel(nil)
}

// Read reports each read that brought bytes as progress of the worker (an
// SSE stream that goes on is a worker that is not paused).
func (a *attempt) Read(p []byte) (int, error) {
	n, err := a.body.Read(p)
	if n > 0 {
		a.pool.answered(a.st)
	}
	return n, err
}

// Close ends the attempt's tracking when the proxy closes the body.
func (a *attempt) Close() error {
	err := a.body.Close()
	a.once.Do(a.done)
	return err
}

// detector decides that a worker is down. Suspicion is cheap and comes
// from anywhere (the periodic probe tick, a request that waits too long for
// its response headers, a request that failed on the connection); the
// verdict is not: it takes ProbeFailAfter consecutive probe failures, each
// bounded by ProbeTimeout, or one refused connection (nothing listens: the
// process is gone). A worker found down is skipped, and its in-flight
// requests are cancelled (idempotent ones resent to another worker), but
// only when some other worker answers a probe:
// if every worker is slow, the front (or the whole machine) is starved and
// cancelling would turn slowness into errors with nowhere better to go.
type detector struct {
	pool      *pool
	client    *http.Client
	failAfter int
	// quiet is how long after finding a worker up a suspicion of it is
	// ignored (the periodic probe still runs).
	quiet time.Duration
	log   *logrus.Entry
	// ctx ends with the front; confirmations stop with it.
	ctx context.Context
	// confirms counts confirmation sequences that ended; tests wait on it.
	confirms atomic.Int64
}

func newDetector(ctx context.Context, p *pool, cfg Config, log *logrus.Entry) *detector {
	return &detector{
		pool: p,
		client: &http.Client{
			Timeout: cfg.ProbeTimeout,
			// A fresh connection per probe: it must show whether the
			// process accepts and answers now, and a paused worker's
			// kernel still completes handshakes, so the answer is what
			// counts, not the connect.
			Transport: &http.Transport{DialContext: (&net.Dialer{Timeout: cfg.ProbeTimeout}).DialContext, DisableKeepAlives: true},
		},
		failAfter: cfg.ProbeFailAfter,
		quiet:     cfg.ProbeTimeout,
		log:       log,
		ctx:       ctx,
	}
}

// probe GETs b's /healthz once; a 5xx is a failure.
func (d *detector) probe(b *backend) error {
	req, err := http.NewRequestWithContext(d.ctx, http.MethodGet, b.health, nil)
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("health probe answered %s", resp.Status)
	}
	return nil
}

// refused reports whether err means nothing listens at the address.
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// suspect starts confirming whether b is down, unless a confirmation of b
// already runs. It does not block.
func (d *detector) suspect(b *backend, why string) {
	if !d.pool.startConfirm(b.st, d.quiet) {
		return
	}
	go func() {
		defer d.confirms.Add(1)
		up := d.confirm(b, why)
		d.pool.endConfirm(b.st, up)
	}()
}

// confirm probes b up to failAfter times in a row and reports whether b
// answered; the first success ends it (b is up), a refusal declares b
// down, and so do failAfter failures
// during which b answered nothing at all. That last condition tells a
// paused worker from a starved one: on a machine short of CPU a live
// worker's probes can time out, but its other requests keep finishing,
// while a stopped process answers no byte on any connection.
func (d *detector) confirm(b *backend, why string) bool {
	since := d.pool.answerMark(b.st)
	var err error
	for range d.failAfter {
		if err = d.probe(b); err == nil {
			d.pool.markUp(b.st)
			return true
		}
		if d.ctx.Err() != nil {
			return false
		}
		if refused(err) {
			break
		}
	}
	if !refused(err) && d.pool.answeredSince(b.st, since) {
		d.log.WithError(err).WithFields(logrus.Fields{"worker": b.id, "addr": b.addr, "suspected": why}).
			Debug("worker probes failed but it keeps answering requests: slow, not down")
		return true
	}
	wasDown := d.pool.isDown(b.st)
	d.pool.markDown(b.st)
	aborted := 0
	if d.peerAnswers(b) {
		aborted = d.pool.abort(b.st, errWorkerDown)
	}
	if !wasDown || aborted > 0 {
		d.log.WithError(err).WithFields(logrus.Fields{"worker": b.id, "addr": b.addr, "suspected": why, "aborted": aborted}).
			Warn("worker down: taken out of rotation")
	}
	return false
}

// peerAnswers reports whether some other worker not marked down answers a
// probe now. Without one there is no better place for b's requests to go.
func (d *detector) peerAnswers(b *backend) bool {
	for _, o := range d.pool.list() {
		if o.addr == b.addr || d.pool.isDown(o.st) {
			continue
		}
		if d.probe(o) == nil {
			return true
		}
	}
	return false
}

// probeLoop suspects every worker each interval: a worker that answers its
// first probe is (again) up, one that does not is confirmed as above. It
// finds a worker that no request touched lately, and brings a recovered
// one back.
func (d *detector) probeLoop(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		for _, b := range d.pool.list() {
			d.suspect(b, "periodic probe")
		}
	}
}
