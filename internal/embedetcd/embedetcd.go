// Package embedetcd runs an etcd server inside the process: the embedded
// default for `erlmcp up` and `erlmcp etcd`, and the etcd of the test
// cluster helper.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config of an embedded etcd member.
type Config struct {
	Name    string
	DataDir string
	// ClientURL and PeerURL are http://host:port (or unix://path for tests).
	ClientURL string
	PeerURL   string
	// InitialCluster is name=peerURL,...; empty means a single-member cluster.
	InitialCluster string
	// ClusterState is "new" or "existing".
	ClusterState string
	// TickMs and ElectionMs are etcd's heartbeat and election timeouts;
	// tests use 10/100 for fast startup and short leases.
	TickMs     uint
	ElectionMs uint
	// QuotaBackendBytes is the backend size limit (0: etcd's default, 2 GiB).
	QuotaBackendBytes int64
	// StartTimeout bounds the wait for the member to be ready.
	StartTimeout time.Duration
	// LogTo receives the member's log (JSON lines: errors and the events
	// logFilter keeps); nil means standard error.
	LogTo io.Writer
}

// DefaultConfig returns a single-member config on the default ports.
func DefaultConfig(dataDir string) Config {
	return Config{
		Name:         "etcd-0",
		DataDir:      dataDir,
		ClientURL:    "http://127.0.0.1:2379",
		PeerURL:      "http://127.0.0.1:2380",
		ClusterState: "new",
		TickMs:       100,
		ElectionMs:   1000,
		StartTimeout: 30 * time.Second,
	}
}

// Validate says what is wrong with c.
func (c Config) Validate() error {
	if c.Name == "" || c.DataDir == "" {
		return errors.New("embedded etcd: name and data dir are required")
	}
	for _, u := range []string{c.ClientURL, c.PeerURL} {
		if _, err := url.Parse(u); err != nil || u == "" {
			return fmt.Errorf("embedded etcd: bad URL %q: %v", u, err)
		}
	}
	if c.TickMs == 0 || c.ElectionMs < 5*c.TickMs {
		return fmt.Errorf("embedded etcd: election timeout %dms must be at least 5 ticks of %dms", c.ElectionMs, c.TickMs)
	}
	if c.ClusterState != "new" && c.ClusterState != "existing" {
		return fmt.Errorf("embedded etcd: cluster state %q: want new or existing", c.ClusterState)
	}
	return nil
}

// Server is a running embedded etcd member.
type Server struct {
	etcd    *embed.Etcd
	once    sync.Once
	cfg     Config
	closing atomic.Bool
}

// logFilter passes etcd's errors, and the few lower-level events an
// operator needs to explain a lost lease or a stalled request (see
// eventMessages), until Close starts.
type logFilter struct {
	zapcore.Core
	closing *atomic.Bool
}

// eventMessages are parts of etcd's and raft's info and warning messages
// that say the member's leadership changed, or that it was too slow to
// renew leases or answer in time: what explains a membership lease that
// etcd expired while its holder kept renewing. Everything else below
// error (etcd logs every connection, compaction and snapshot at info)
// stays out of our logs.
var eventMessages = []string{
	"elected leader",
	"lost leader",
	"changed leader",
	"became leader",
	"leader failed to send out heartbeat on time",
	"slow fdatasync",
	"apply request took too long",
	"waiting for ReadIndex response took too long",
	"Failed to check current member's leadership",
	"isn't a leader",
	"Ignore the lease revoking request",
}

// logsEvent reports whether e is an error, or an event that eventMessages
// lists.
func logsEvent(e zapcore.Entry) bool {
	if e.Level >= zapcore.ErrorLevel {
		return true
	}
	if e.Level < zapcore.InfoLevel {
		return false
	}
	for _, m := range eventMessages {
		if strings.Contains(e.Message, m) {
			return true
		}
	}
	return false
}

func (f *logFilter) Enabled(l zapcore.Level) bool { return l >= zapcore.InfoLevel }

func (f *logFilter) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if f.closing.Load() || !logsEvent(e) {
		return ce
	}
	return f.Core.Check(e, ce)
}

func (f *logFilter) With(fields []zapcore.Field) zapcore.Core {
	return &logFilter{Core: f.Core.With(fields), closing: f.closing}
}

// newLogCore is the zap core of a member's log: JSON lines to w, errors
// and eventMessages only, each message at most eventsPerSecond times a
// second (a slow disk repeats "slow fdatasync" on every sync), nothing
// once closing is set.
func newLogCore(w zapcore.WriteSyncer, closing *atomic.Bool) zapcore.Core {
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.Lock(w), zap.InfoLevel)
	return &logFilter{Core: zapcore.NewSamplerWithOptions(core, time.Second, eventsPerSecond, 0), closing: closing}
}

// eventsPerSecond bounds how often one message is logged.
const eventsPerSecond = 3

// Start starts the member and blocks until it is ready to serve, ctx ends,
// or StartTimeout passes; on failure nothing is left running.
func Start(ctx context.Context, c Config) (*Server, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	ec := embed.NewConfig()
	ec.Name = c.Name
	ec.Dir = c.DataDir
	cu, _ := url.Parse(c.ClientURL)
	pu, _ := url.Parse(c.PeerURL)
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = c.InitialCluster
	if ec.InitialCluster == "" {
		ec.InitialCluster = c.Name + "=" + c.PeerURL
	}
	ec.ClusterState = c.ClusterState
	ec.TickMs, ec.ElectionMs = c.TickMs, c.ElectionMs
	ec.QuotaBackendBytes = c.QuotaBackendBytes
	// etcd logs through zap; keep its errors and its leadership and
	// slowness events (logFilter) so our logrus output stays readable,
	// and drop what it logs while we close it on purpose (it reports its
	// own listeners closing as errors).
	s := &Server{cfg: c}
	ec.LogLevel = "info"
	var logTo io.Writer = os.Stderr
	if c.LogTo != nil {
		logTo = c.LogTo
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(newLogCore(zapcore.AddSync(logTo), &s.closing)))
	// Keep history bounded: watches re-list on compaction.
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "1h"
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd (data %s, client %s, peer %s): %w", c.DataDir, c.ClientURL, c.PeerURL, err)
	}
	s.etcd = e
	timeout := c.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return s, nil
	case err := <-e.Err():
		s.Close()
		return nil, fmt.Errorf("embedded etcd failed while starting: %w", err)
	case <-t.C:
		s.Close()
		return nil, fmt.Errorf("embedded etcd not ready after %s (is a quorum of its members running?)", timeout)
	case <-ctx.Done():
		s.Close()
		return nil, ctx.Err()
	}
}

// ClientURL is where clients connect.
func (s *Server) ClientURL() string { return s.cfg.ClientURL }

// Err delivers a fatal server error.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the member; it is safe to call more than once (embed's own
// Close panics on a second call).
func (s *Server) Close() {
	s.once.Do(func() {
		s.closing.Store(true)
		s.etcd.Close()
	})
}
