// Package localactuator is the actuator endpoint of `erlmcp up`: an
// HTTP+JSON API on a unix socket in the data dir, through which the
// control-plane leader restarts, starts and stops the supervised children
// (autoheal and worker scaling). The socket lives in the 0700 data dir and
// every request must carry the cluster's admin token as well.
//
// API (all JSON, Authorization: Bearer <admin token>):
//
//	GET  /v1/processes?pool=worker   [{"name":"worker-1","pool":"worker","pid":123}]
//	POST /v1/restart  {"name":"worker-2"}
//	POST /v1/scale    {"pool":"worker","count":4,"remove_first":["worker-3"]}
//	                  → {"started":["worker-4"],"stopped":[]}
//	POST /v1/start    {"pool":"worker","count":3,"path":"/opt/erlmcp-v2","version":"v2"}
//	                  → {"started":["worker-4","worker-5","worker-6"],"stopped":[]}
//	POST /v1/stop     {"names":["worker-1"]}  → {"started":[],"stopped":["worker-1"]}
//	GET  /v1/release?pool=worker  {"pool":"worker","path":"/usr/bin/erlmcp","version":""}
//	POST /v1/release  {"pool":"worker","path":"/opt/erlmcp-v2","version":"v2"}
//
// start, stop and release are the deploy operations (deploy.go).
package localactuator

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/erlmcp/erlmcp/internal/supervisor"
	"github.com/sirupsen/logrus"
)

// Process is one supervised child as the API reports it. PID is 0 while
// the child is between a crash and its restart.
type Process struct {
	Name string `json:"name"`
	Pool string `json:"pool"`
	PID  int    `json:"pid"`
	// Path and Version are set for a child started from another binary
	// (POST /v1/start, or a pool's release); "" means up's own binary.
	Path    string `json:"path,omitempty"`
	Version string `json:"version,omitempty"`
}

// RestartRequest is the body of POST /v1/restart.
type RestartRequest struct {
	Name string `json:"name"`
}

// ScaleRequest is the body of POST /v1/scale.
type ScaleRequest struct {
	Pool  string `json:"pool"`
	Count int    `json:"count"`
	// RemoveFirst names the children to stop first when scaling down.
	RemoveFirst []string `json:"remove_first,omitempty"`
}

// ScaleResult is the answer of POST /v1/scale.
type ScaleResult struct {
	Started []string `json:"started"`
	Stopped []string `json:"stopped"`
}

type errorBody struct {
	Error string `json:"error"`
}

// Supervisor is what the server drives; *supervisor.Supervisor has it.
type Supervisor interface {
	Start(spec supervisor.Spec) error
	Remove(ctx context.Context, name string) error
	Signal(name string, sig syscall.Signal) error
	Names() []string
	PID(name string) int
}

// SpecFunc returns the spec of child index (from 1) of pool, e.g.
// worker-4; an error when the pool cannot be scaled.
type SpecFunc func(pool string, index int) (supervisor.Spec, error)

// Server serves the API on a unix socket.
type Server struct {
	sup   Supervisor
	spec  SpecFunc
	token string
	log   *logrus.Entry
	ln    net.Listener
	srv   *http.Server
	path  string
	// scaleMu serialises scale and start requests: two overlapping ones
	// would pick the same free names.
	scaleMu sync.Mutex
	// rel holds the deploy state (deploy.go).
	rel releases
}

// PoolOf is the pool of a child name: the part before the last "-<n>".
func PoolOf(name string) string {
	i := strings.LastIndexByte(name, '-')
	if i <= 0 {
		return name
	}
	if _, err := strconv.Atoi(name[i+1:]); err != nil {
		return name
	}
	return name[:i]
}

func indexOf(name string) int {
	i := strings.LastIndexByte(name, '-')
	n, _ := strconv.Atoi(name[i+1:])
	return n
}

// Serve listens on the unix socket path (a stale socket file is replaced)
// and serves until Close. releasesFile, when not "", keeps the pools'
// releases across restarts (read here, written on every change).
func Serve(path, token string, sup Supervisor, spec SpecFunc, releasesFile string, log *logrus.Entry) (*Server, error) {
	if token == "" {
		return nil, errors.New("local actuator: no admin token; it is never served without one")
	}
	s := &Server{sup: sup, spec: spec, token: token, log: log, path: path}
	if err := s.rel.load(releasesFile); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("local actuator: remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("local actuator: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("local actuator: chmod %s: %w", path, err)
	}
	s.ln = ln
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/processes", s.handleProcesses)
	mux.HandleFunc("POST /v1/restart", s.handleRestart)
	mux.HandleFunc("POST /v1/scale", s.handleScale)
	s.routeDeploy(mux)
	s.srv = &http.Server{Handler: s.auth(mux), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Error("local actuator stopped serving")
		}
	}()
	return s, nil
}

// Close stops serving and removes the socket.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	_ = os.Remove(s.path)
}

func (s *Server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(s.token)) != 1 {
			writeJSON(w, http.StatusUnauthorized, errorBody{"missing or wrong bearer token: send the cluster's admin token"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) processes(pool string) []Process {
	out := []Process{}
	for _, n := range s.sup.Names() {
		p := PoolOf(n)
		if pool != "" && p != pool {
			continue
		}
		r := s.rel.of(n)
		out = append(out, Process{Name: n, Pool: p, PID: s.sup.PID(n), Path: r.Path, Version: r.Version})
	}
	return out
}

func (s *Server) handleProcesses(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.processes(r.URL.Query().Get("pool")))
}

// handleRestart kills the child's process group; the supervisor starts it
// again at once (its backoff is short for a child that ran a while). A
// child that is stuck or failing cannot be trusted to drain, hence no
// SIGTERM first.
func (s *Server) handleRestart(w http.ResponseWriter, r *http.Request) {
	var req RestartRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.Name == "" {
		writeJSON(w, http.StatusBadRequest, errorBody{"want {\"name\":\"<child>\"}"})
		return
	}
	if s.sup.PID(req.Name) == 0 && !contains(s.sup.Names(), req.Name) {
		writeJSON(w, http.StatusNotFound, errorBody{fmt.Sprintf("no child %q; children are: %s", req.Name, strings.Join(s.sup.Names(), ", "))})
		return
	}
	if err := s.sup.Signal(req.Name, syscall.SIGKILL); err != nil {
		writeJSON(w, http.StatusConflict, errorBody{err.Error()})
		return
	}
	s.log.WithField("child", req.Name).Warn("local actuator: child killed for restart")
	writeJSON(w, http.StatusOK, s.processes(PoolOf(req.Name)))
}

func (s *Server) handleScale(w http.ResponseWriter, r *http.Request) {
	var req ScaleRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.Pool == "" || req.Count < 0 {
		writeJSON(w, http.StatusBadRequest, errorBody{"want {\"pool\":\"worker\",\"count\":N} with N >= 0"})
		return
	}
	res, err := s.scale(r.Context(), req)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) scale(ctx context.Context, req ScaleRequest) (ScaleResult, error) {
	s.scaleMu.Lock()
	defer s.scaleMu.Unlock()
	res := ScaleResult{Started: []string{}, Stopped: []string{}}
	cur := s.processes(req.Pool)
	have := map[string]bool{}
	for _, p := range cur {
		have[p.Name] = true
	}
	switch {
	case len(cur) < req.Count:
		for i := 1; len(cur)+len(res.Started) < req.Count; i++ {
			name := fmt.Sprintf("%s-%d", req.Pool, i)
			if have[name] {
				continue
			}
			spec, err := s.releaseSpec(req.Pool, i)
			if err != nil {
				return res, err
			}
			if err := s.sup.Start(spec); err != nil {
				return res, fmt.Errorf("start %s: %w", name, err)
			}
			s.log.WithField("child", name).Info("local actuator: child started (scale up)")
			res.Started = append(res.Started, name)
		}
	case len(cur) > req.Count:
		victims := pickVictims(cur, req.RemoveFirst, len(cur)-req.Count)
		// Stopped together: each drains on SIGTERM, and draining one by one
		// would make a scale-down take n drain times.
		var wg sync.WaitGroup
		errs := make([]error, len(victims))
		for i, v := range victims {
			wg.Go(func() {
				s.log.WithField("child", v).Info("local actuator: stopping child (scale down; it drains on SIGTERM)")
				errs[i] = s.sup.Remove(ctx, v)
				s.rel.forget(v)
			})
		}
		wg.Wait()
		res.Stopped = victims
		if err := errors.Join(errs...); err != nil {
			return res, err
		}
	}
	return res, nil
}

// pickVictims chooses n children: the preferred ones that exist first, then
// the highest-numbered.
func pickVictims(cur []Process, prefer []string, n int) []string {
	exists := map[string]bool{}
	for _, p := range cur {
		exists[p.Name] = true
	}
	var out []string
	chosen := map[string]bool{}
	for _, v := range prefer {
		if len(out) < n && exists[v] && !chosen[v] {
			out = append(out, v)
			chosen[v] = true
		}
	}
	rest := append([]Process(nil), cur...)
	sort.Slice(rest, func(i, j int) bool { return indexOf(rest[i].Name) > indexOf(rest[j].Name) })
	for _, p := range rest {
		if len(out) < n && !chosen[p.Name] {
			out = append(out, p.Name)
			chosen[p.Name] = true
		}
	}
	return out
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Client calls a Server.
type Client struct {
	socket string
	token  string
	http   *http.Client
}

// NewClient returns a client of the server at the unix socket path.
func NewClient(socket, token string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{socket: socket, token: token, http: &http.Client{Transport: tr}}
}

// Socket is the server's socket path.
func (c *Client) Socket() string { return c.socket }

// Processes lists the children of pool ("" = all).
func (c *Client) Processes(ctx context.Context, pool string) ([]Process, error) {
	var out []Process
	err := c.do(ctx, http.MethodGet, "/v1/processes?pool="+pool, nil, &out)
	return out, err
}

// Restart kills the child so its supervisor starts it again.
func (c *Client) Restart(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/restart", RestartRequest{Name: name}, nil)
}

// Scale sets pool to count children.
func (c *Client) Scale(ctx context.Context, req ScaleRequest) (ScaleResult, error) {
	var out ScaleResult
	err := c.do(ctx, http.MethodPost, "/v1/scale", req, &out)
	return out, err
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://local-actuator"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("local actuator at %s: %s %s: %w", c.socket, method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		var eb errorBody
		_ = json.Unmarshal(b, &eb)
		return fmt.Errorf("local actuator at %s: %s %s: %s: %s", c.socket, method, path, resp.Status, eb.Error)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("local actuator at %s: %s %s: bad answer: %w", c.socket, method, path, err)
		}
	}
	return nil
}
