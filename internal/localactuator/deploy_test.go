package localactuator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/logging"
	"github.com/erlmcp/erlmcp/internal/supervisor"
	"github.com/erlmcp/erlmcp/internal/testcluster"
)

// TestDeployStartStopRelease: children started from another binary carry
// its path and the version flag, stop drains exactly the named ones, and a
// pool release makes later scale-ups start the deployed binary.
func TestDeployStartStopRelease(t *testing.T) {
	dir := t.TempDir()
	// The "new release": a script that prints its arguments, then runs the
	// test binary as the draining child.
	self, err := filepath.Abs(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	v2 := filepath.Join(dir, "erlmcp-v2")
	script := "#!/bin/sh\necho \"args: $*\"\nexec " + self + "\n"
	if err := os.WriteFile(v2, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	sup := supervisor.New(logging.Discard(), supervisor.Options{InitialBackoff: 10 * time.Millisecond, StopTimeout: 10 * time.Second})
	t.Cleanup(func() { _ = sup.Stop(context.Background()) })
	spec := func(pool string, i int) (supervisor.Spec, error) {
		if pool != "worker" {
			return supervisor.Spec{}, fmt.Errorf("pool %s cannot be scaled", pool)
		}
		name := fmt.Sprintf("%s-%d", pool, i)
		return supervisor.Spec{Name: name, Path: self, Args: []string{"worker", "--id=" + name}, Env: append(os.Environ(), helperEnv+"=drain"),
			LogPath: filepath.Join(dir, name+".log")}, nil
	}
	s1, _ := spec("worker", 1)
	if err := sup.Start(s1); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "actuator.sock")
	srv, err := Serve(sock, "tok", sup, spec, "", logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	c := NewClient(sock, "tok")

	for _, bad := range []StartRequest{
		{Pool: "worker", Count: 1, Path: "relative/erlmcp", Version: "v2"},
		{Pool: "worker", Count: 1, Path: dir, Version: "v2"},
		{Pool: "worker", Count: 1, Path: v2, Version: "has space"},
		{Pool: "worker", Count: 0, Path: v2, Version: "v2"},
	} {
		if _, err := c.Start(ctx, bad); err == nil || !strings.Contains(err.Error(), "400") {
			t.Fatalf("start %+v: err %v, want 400", bad, err)
		}
	}

	res, err := c.Start(ctx, StartRequest{Pool: "worker", Count: 2, Path: v2, Version: "v2"})
	if err != nil || strings.Join(res.Started, ",") != "worker-2,worker-3" {
		t.Fatalf("start: %+v, %v; want worker-2,worker-3", res, err)
	}
	for _, n := range res.Started {
		testcluster.WaitFor(t, 10*time.Second, n+" ready", func() error { return logSays(dir, n, "ready") })
		if err := logSays(dir, n, "args: worker --id="+n+" "+VersionFlag+"=v2"); err != nil {
			t.Fatal(err)
		}
	}
	ps, err := c.Processes(ctx, "worker")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range ps {
		got[p.Name] = p.Version + "@" + p.Path
	}
	if got["worker-1"] != "@" || got["worker-2"] != "v2@"+v2 || got["worker-3"] != "v2@"+v2 {
		t.Fatalf("processes %v", got)
	}

	testcluster.WaitFor(t, 10*time.Second, "worker-1 ready", func() error { return logSays(dir, "worker-1", "ready") })
	if err := c.Stop(ctx, []string{"worker-1", "nope"}); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("stop of an unknown child: %v, want 404 and nothing stopped", err)
	}
	if sup.PID("worker-1") == 0 {
		t.Fatal("a rejected stop stopped worker-1")
	}
	if err := c.Stop(ctx, []string{"worker-1"}); err != nil {
		t.Fatal(err)
	}
	if err := logSays(dir, "worker-1", "drained"); err != nil {
		t.Fatalf("worker-1 did not drain: %v", err)
	}
	if names := strings.Join(sup.Names(), ","); names != "worker-2,worker-3" {
		t.Fatalf("children after stop: %s", names)
	}

	// Without a release a scale-up starts up's own binary; with one, the
	// deployed binary.
	if err := c.SetRelease(ctx, Release{Pool: "worker", Path: v2, Version: "v2"}); err != nil {
		t.Fatal(err)
	}
	if rel, err := c.Release(ctx, "worker"); err != nil || rel.Path != v2 || rel.Version != "v2" {
		t.Fatalf("release %+v, %v", rel, err)
	}
	res, err = c.Scale(ctx, ScaleRequest{Pool: "worker", Count: 3})
	if err != nil || strings.Join(res.Started, ",") != "worker-1" {
		t.Fatalf("scale: %+v, %v", res, err)
	}
	testcluster.WaitFor(t, 10*time.Second, "worker-1 (v2) started", func() error {
		return logSays(dir, "worker-1", "args: worker --id=worker-1 "+VersionFlag+"=v2")
	})
}

// TestReleaseKeptAcrossRestart: a pool release set through the API is in
// the releases file, a new Server (a restarted up) reads it and starts its
// own workers from it, a release whose binary is gone falls back to up's
// own binary, clearing it empties the file, and a damaged file is refused
// with what to do.
func TestReleaseKeptAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	v2 := filepath.Join(dir, "erlmcp-v2")
	if err := os.WriteFile(v2, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "releases.json")
	sup := supervisor.New(logging.Discard(), supervisor.Options{})
	spec := func(pool string, i int) (supervisor.Spec, error) {
		return supervisor.Spec{Name: fmt.Sprintf("%s-%d", pool, i), Path: "/up/erlmcp", Args: []string{"worker"}}, nil
	}
	serve := func() (*Server, *Client) {
		t.Helper()
		sock := filepath.Join(dir, "actuator.sock")
		srv, err := Serve(sock, "tok", sup, spec, file, logging.Discard())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		return srv, NewClient(sock, "tok")
	}
	ctx := context.Background()
	srv, c := serve()
	if got := srv.Apply("worker", supervisor.Spec{Name: "worker-1", Path: "/up/erlmcp"}); got.Path != "/up/erlmcp" || len(got.Args) != 0 {
		t.Fatalf("no release set: Apply gave %+v, want the spec unchanged", got)
	}
	if err := c.SetRelease(ctx, Release{Pool: "worker", Path: v2, Version: "v2"}); err != nil {
		t.Fatal(err)
	}
	srv.Close()

	srv, c = serve()
	if rel, err := c.Release(ctx, "worker"); err != nil || rel.Path != v2 || rel.Version != "v2" {
		t.Fatalf("after a restart the release is %+v, %v; want %s v2", rel, err, v2)
	}
	got := srv.Apply("worker", supervisor.Spec{Name: "worker-1", Path: "/up/erlmcp", Args: []string{"worker"}})
	if got.Path != v2 || strings.Join(got.Args, " ") != "worker "+VersionFlag+"=v2" {
		t.Fatalf("Apply after a restart: %+v, want %s with the version flag", got, v2)
	}
	if r := srv.rel.of("worker-1"); r.Version != "v2" {
		t.Fatalf("worker-1 recorded as %+v, want v2", r)
	}

	if err := os.Remove(v2); err != nil {
		t.Fatal(err)
	}
	if got := srv.Apply("worker", supervisor.Spec{Name: "worker-2", Path: "/up/erlmcp"}); got.Path != "/up/erlmcp" {
		t.Fatalf("release binary gone: Apply gave %+v, want up's own binary", got)
	}
	if err := c.SetRelease(ctx, Release{Pool: "worker"}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(file); err != nil || strings.Contains(string(b), "v2") {
		t.Fatalf("after clearing, the file is %q, %v", b, err)
	}
	srv.Close()

	if err := os.WriteFile(file, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Serve(filepath.Join(dir, "actuator.sock"), "tok", sup, spec, file, logging.Discard()); err == nil ||
		!strings.Contains(err.Error(), "not valid JSON") || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("damaged releases file: %v, want an error that says what to do", err)
	}
}
