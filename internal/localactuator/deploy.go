package localactuator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/erlmcp/erlmcp/internal/supervisor"
	"github.com/sirupsen/logrus"
)

// VersionFlag is the worker flag that sets the version it records in
// membership; a child started from another binary gets it, so the front's
// traffic split can tell the versions apart.
const VersionFlag = "--version-label"

// Release is a binary and the version label its children run as. The
// zero Release is up's own binary with the version it was built as.
type Release struct {
	Pool    string `json:"pool,omitempty"`
	Path    string `json:"path"`
	Version string `json:"version"`
}

// StartRequest is the body of POST /v1/start: count more children of pool
// from the binary at Path, labelled Version, beside the running ones.
type StartRequest struct {
	Pool    string `json:"pool"`
	Count   int    `json:"count"`
	Path    string `json:"path"`
	Version string `json:"version"`
}

// StopRequest is the body of POST /v1/stop: stop these children (each
// gets SIGTERM and drains) and do not replace them.
type StopRequest struct {
	Names []string `json:"names"`
}

// releases remembers which binary each child and each pool runs. The
// pools' releases are also kept in file (when set), so a restarted
// `erlmcp up` starts its workers from the release the last deploy left,
// not from its own binary; which child runs what is in memory only (the
// children are started again by the new up).
type releases struct {
	mu      sync.Mutex
	byChild map[string]Release
	byPool  map[string]Release
	file    string
}

// ErrBadReleases: the releases file cannot be read as one; up refuses to
// start rather than run workers from a binary nobody chose.
var ErrBadReleases = errors.New("local actuator: bad releases file")

// releasesFile is the JSON form of the pools' releases on disk.
type releasesFile struct {
	Pools map[string]Release `json:"pools"`
}

// load reads the pools' releases from file; a missing file is no release.
func (r *releases) load(file string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.file = file
	if file == "" {
		return nil
	}
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadReleases, err)
	}
	var f releasesFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%w: %s is not valid JSON (%w); fix or remove it (workers then start from up's own binary)", ErrBadReleases, file, err)
	}
	r.byPool = f.Pools
	return nil
}

// saveLocked writes the pools' releases to file atomically (temporary
// file, fsync, rename), so a crash leaves the old or the new file.
func (r *releases) saveLocked() error {
	if r.file == "" {
		return nil
	}
	b, err := json.MarshalIndent(releasesFile{Pools: r.byPool}, "", "  ")
	if err != nil {
		return err
	}
	tmp := r.file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("local actuator: save releases: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, r.file)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("local actuator: save releases to %s: %w", r.file, err)
	}
	return nil
}

func (r *releases) of(name string) Release {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byChild[name]
}

func (r *releases) pool(pool string) Release {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byPool[pool]
}

func (r *releases) set(name string, rel Release) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byChild == nil {
		r.byChild = map[string]Release{}
	}
	if rel.Path == "" {
		delete(r.byChild, name)
		return
	}
	r.byChild[name] = rel
}

// setPool sets pool's release (a zero Path: up's own binary) and saves
// the file; on a failed save the release is not changed.
func (r *releases) setPool(rel Release) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, had := r.byPool[rel.Pool]
	if r.byPool == nil {
		r.byPool = map[string]Release{}
	}
	if rel.Path == "" {
		delete(r.byPool, rel.Pool)
	} else {
		r.byPool[rel.Pool] = rel
	}
	if err := r.saveLocked(); err != nil {
		if had {
			r.byPool[rel.Pool] = old
		} else {
			delete(r.byPool, rel.Pool)
		}
		return err
	}
	return nil
}

func (r *releases) forget(name string) { r.set(name, Release{}) }

type specResult struct {
	spec supervisor.Spec
	rel  Release
}

// withRelease turns the pool's spec of child i into one that runs rel.
func (s *Server) withRelease(pool string, i int, rel Release) (specResult, error) {
	spec, err := s.spec(pool, i)
	if err != nil {
		return specResult{}, err
	}
	return specResult{spec: runRelease(spec, rel), rel: rel}, nil
}

// runRelease is spec running rel's binary with its version flag (spec
// itself for the zero Release).
func runRelease(spec supervisor.Spec, rel Release) supervisor.Spec {
	if rel.Path != "" {
		spec.Path = rel.Path
		spec.Args = append(append([]string(nil), spec.Args...), VersionFlag+"="+rel.Version)
	}
	return spec
}

// poolRelease is pool's release when its binary can still be run; a
// release whose binary is gone (a deleted build directory) is logged and
// up's own binary runs instead, so a cluster never fails to start for it.
func (s *Server) poolRelease(pool string) Release {
	rel := s.rel.pool(pool)
	if rel.Path == "" {
		return Release{}
	}
	if err := checkRelease(rel.Path, rel.Version); err != nil {
		s.log.WithError(err).WithField("pool", pool).Warn("local actuator: the pool's release cannot run; starting up's own binary (set another with `erlmcp ctl deploy release`)")
		return Release{}
	}
	return rel
}

// releaseSpec is the spec a scale-up uses: the pool's release when one was
// set (so scaling after a deploy starts the deployed version), else up's.
func (s *Server) releaseSpec(pool string, i int) (supervisor.Spec, error) {
	r, err := s.withRelease(pool, i, s.poolRelease(pool))
	if err != nil {
		return supervisor.Spec{}, err
	}
	s.rel.set(r.spec.Name, r.rel)
	return r.spec, nil
}

// Apply is spec, a child of pool that up starts itself, changed to run the
// pool's release when one is set (kept from before a restart of up), and
// recorded as running it. Without a release it is spec unchanged.
func (s *Server) Apply(pool string, spec supervisor.Spec) supervisor.Spec {
	rel := s.poolRelease(pool)
	s.rel.set(spec.Name, rel)
	return runRelease(spec, rel)
}

func (s *Server) routeDeploy(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/start", s.handleStart)
	mux.HandleFunc("POST /v1/stop", s.handleStop)
	mux.HandleFunc("GET /v1/release", s.handleGetRelease)
	mux.HandleFunc("POST /v1/release", s.handleSetRelease)
}

func checkRelease(path, version string) error {
	if path == "" {
		return nil
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("path %q: want an absolute path (the children do not run in your directory)", path)
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("path %q: %w", path, err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("path %q is not an executable file", path)
	}
	if version == "" || strings.ContainsAny(version, " \t\n=") {
		return fmt.Errorf("version %q: want a non-empty label without spaces or '='", version)
	}
	return nil
}

func (s *Server) handleStart(w http.ResponseWriter, r *http.Request) {
	var req StartRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.Pool == "" || req.Count < 1 || req.Path == "" {
		writeJSON(w, http.StatusBadRequest, errorBody{"want {\"pool\":\"worker\",\"count\":N,\"path\":\"/abs/erlmcp\",\"version\":\"label\"} with N >= 1"})
		return
	}
	if err := checkRelease(req.Path, req.Version); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{err.Error()})
		return
	}
	res, err := s.start(req)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) start(req StartRequest) (ScaleResult, error) {
	s.scaleMu.Lock()
	defer s.scaleMu.Unlock()
	res := ScaleResult{Started: []string{}, Stopped: []string{}}
	have := map[string]bool{}
	for _, n := range s.sup.Names() {
		have[n] = true
	}
	rel := Release{Pool: req.Pool, Path: req.Path, Version: req.Version}
	for i := 1; len(res.Started) < req.Count; i++ {
		name := fmt.Sprintf("%s-%d", req.Pool, i)
		if have[name] {
			continue
		}
		sr, err := s.withRelease(req.Pool, i, rel)
		if err != nil {
			return res, err
		}
		if err := s.sup.Start(sr.spec); err != nil {
			return res, fmt.Errorf("start %s: %w", name, err)
		}
		s.rel.set(name, rel)
		s.log.WithFields(logrus.Fields{"child": name, "path": req.Path, "version": req.Version}).Info("local actuator: child started (deploy)")
		res.Started = append(res.Started, name)
	}
	return res, nil
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request) {
	var req StopRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || len(req.Names) == 0 {
		writeJSON(w, http.StatusBadRequest, errorBody{"want {\"names\":[\"worker-1\",...]}"})
		return
	}
	names := s.sup.Names()
	for _, n := range req.Names {
		if !contains(names, n) {
			writeJSON(w, http.StatusNotFound, errorBody{fmt.Sprintf("no child %q; children are: %s", n, strings.Join(names, ", "))})
			return
		}
	}
	if err := s.stop(r.Context(), req.Names); err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, ScaleResult{Started: []string{}, Stopped: req.Names})
}

// stop removes the children together: each drains on SIGTERM within the
// supervisor's stop timeout, so stopping one by one would take n drains.
func (s *Server) stop(ctx context.Context, names []string) error {
	s.scaleMu.Lock()
	defer s.scaleMu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, n := range names {
		wg.Go(func() {
			s.log.WithField("child", n).Info("local actuator: stopping child (deploy; it drains on SIGTERM)")
			if err := s.sup.Remove(ctx, n); err != nil {
				errs[i] = fmt.Errorf("stop %s: %w", n, err)
			}
			s.rel.forget(n)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (s *Server) handleGetRelease(w http.ResponseWriter, r *http.Request) {
	pool := r.URL.Query().Get("pool")
	rel := s.rel.pool(pool)
	rel.Pool = pool
	if rel.Path == "" {
		// No release set: name up's own binary, which a rollback to the
		// version up started with needs.
		spec, err := s.spec(pool, 1)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{err.Error()})
			return
		}
		rel.Path = spec.Path
	}
	writeJSON(w, http.StatusOK, rel)
}

func (s *Server) handleSetRelease(w http.ResponseWriter, r *http.Request) {
	var rel Release
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&rel); err != nil || rel.Pool == "" {
		writeJSON(w, http.StatusBadRequest, errorBody{"want {\"pool\":\"worker\",\"path\":\"/abs/erlmcp\" or \"\",\"version\":\"label\"}"})
		return
	}
	if err := checkRelease(rel.Path, rel.Version); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{err.Error()})
		return
	}
	if _, err := s.spec(rel.Pool, 1); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{err.Error()})
		return
	}
	if rel.Path == "" {
		rel.Version = ""
	}
	if err := s.rel.setPool(rel); err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{err.Error()})
		return
	}
	s.log.WithFields(logrus.Fields{"pool": rel.Pool, "path": rel.Path, "version": rel.Version}).Info("local actuator: pool release set (scale-ups start it)")
	writeJSON(w, http.StatusOK, rel)
}

// Start starts count children of pool from the binary at path, labelled
// version.
func (c *Client) Start(ctx context.Context, req StartRequest) (ScaleResult, error) {
	var out ScaleResult
	err := c.do(ctx, http.MethodPost, "/v1/start", req, &out)
	return out, err
}

// Stop stops the named children; each drains on SIGTERM first.
func (c *Client) Stop(ctx context.Context, names []string) error {
	return c.do(ctx, http.MethodPost, "/v1/stop", StopRequest{Names: names}, nil)
}

// Release is the binary a pool's scale-ups start ("" path: up's own).
func (c *Client) Release(ctx context.Context, pool string) (Release, error) {
	var out Release
	err := c.do(ctx, http.MethodGet, "/v1/release?pool="+pool, nil, &out)
	return out, err
}

// SetRelease makes the pool's later scale-ups start rel.
func (c *Client) SetRelease(ctx context.Context, rel Release) error {
	return c.do(ctx, http.MethodPost, "/v1/release", rel, nil)
}
