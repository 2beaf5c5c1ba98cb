package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

const dockerfilePath = "../docker/Dockerfile"

// dockerfile parses the Dockerfile with BuildKit's own parser, failing on
// any warning BuildKit's linter raises while parsing.
func dockerfile(t *testing.T) []instructions.Stage {
	t.Helper()
	b, err := os.ReadFile(dockerfilePath)
	if err != nil {
		t.Fatal(err)
	}
	res, err := parser.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("parse %s: %v", dockerfilePath, err)
	}
	for _, w := range res.Warnings {
		t.Errorf("%s: parser warning: %s", dockerfilePath, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, desc, url, msg string, loc []parser.Range) {
		t.Errorf("%s:%v: BuildKit lint %s: %s", dockerfilePath, loc, rule, msg)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("instructions of %s: %v", dockerfilePath, err)
	}
	return stages
}

// imageRef splits a FROM reference into repository, tag and digest.
func imageRef(ref string) (repo, tag, digest string) {
	repo, digest, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	return repo, tag, digest
}

// goDirective is the go version the product's go.mod requires.
func goDirective(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+(?:\.\d+)?)\s*$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no go directive in go.mod")
	}
	return string(m[1])
}

// versionLess compares dotted numeric versions (1.26 < 1.26.8).
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// TestDockerfile lints deploy/docker/Dockerfile (no Docker engine runs
// here): multi-stage, pinned bases, a static build, only the binary in a
// non-root final image, and the ports the manifests use exposed.
func TestDockerfile(t *testing.T) {
	stages := dockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("%d stages: want a build stage and a final stage", len(stages))
	}
	names := map[string]bool{}
	for _, s := range stages {
		if s.Name != "" {
			names[strings.ToLower(s.Name)] = true
		}
	}

	// Every base image is pinned: an exact version tag or a digest, never
	// latest, never a variable a build could point anywhere.
	for _, s := range stages {
		base := s.BaseName
		if names[strings.ToLower(base)] || base == "scratch" {
			continue
		}
		if strings.Contains(base, "$") {
			t.Errorf("FROM %s: a base image from a build argument is not pinned", base)
			continue
		}
		_, tag, digest := imageRef(base)
		if digest == "" && (tag == "" || tag == "latest" || !regexp.MustCompile(`^v?\d+\.\d+\.\d+`).MatchString(tag)) {
			t.Errorf("FROM %s: pin an exact version tag (x.y.z) or a digest", base)
		}
	}

	build := stages[0]
	repo, tag, _ := imageRef(build.BaseName)
	if repo != "golang" && !strings.HasSuffix(repo, "/golang") {
		t.Errorf("build stage FROM %s: want the golang image", build.BaseName)
	} else if v, _, _ := strings.Cut(tag, "-"); versionLess(v, goDirective(t)) {
		t.Errorf("build stage Go %s is older than go.mod's go %s", v, goDirective(t))
	}
	var buildCmd string
	cacheMount := false
	for _, c := range build.Commands {
		switch c := c.(type) {
		case *instructions.AddCommand:
			for _, src := range c.SourcePaths {
				if strings.Contains(src, "://") || strings.HasPrefix(src, "git@") {
					t.Errorf("ADD %s: no remote sources (unverified downloads); fetch in a RUN with a checksum", src)
				}
			}
		case *instructions.RunCommand:
			line := strings.Join(c.CmdLine, " ")
			// Mount flags are parsed when the build expands them; no
			// build args are used in them, so expand words as they are.
			if err := c.Expand(func(w string) (string, error) { return w, nil }); err != nil {
				t.Fatalf("RUN %s: %v", line, err)
			}
			for _, m := range instructions.GetMounts(c) {
				if m.Type == instructions.MountTypeCache && m.Target == "/go/pkg/mod" {
					cacheMount = true
				}
			}
			if strings.Contains(line, "go build") {
				buildCmd = line
			}
		}
	}
	if !cacheMount {
		t.Error("no RUN --mount=type=cache,target=/go/pkg/mod: every build downloads the modules again")
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=", "./cmd/erlmcp"} {
		if !strings.Contains(buildCmd, want) {
			t.Errorf("the go build step lacks %q: %s", want, buildCmd)
		}
	}

	final := stages[len(stages)-1]
	if names[strings.ToLower(final.BaseName)] {
		t.Errorf("the final stage builds on stage %s; it must start from a minimal base", final.BaseName)
	}
	if r, _, _ := imageRef(final.BaseName); final.BaseName != "scratch" && !strings.HasPrefix(r, "gcr.io/distroless/") {
		t.Errorf("final stage FROM %s: want scratch or distroless", final.BaseName)
	}
	var user string
	var expose []string
	var entrypoint []string
	binary := false
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.ExposeCommand:
			expose = append(expose, c.Ports...)
		case *instructions.EntrypointCommand:
			if c.PrependShell {
				t.Error("ENTRYPOINT in shell form: use the exec form, there is no shell")
			}
			entrypoint = c.CmdLine
		case *instructions.RunCommand:
			t.Error("RUN in the final stage: it has no shell, and layers there grow the image")
		case *instructions.AddCommand:
			t.Errorf("ADD %v in the final stage: COPY --from=the build stage only", c.SourcePaths)
		case *instructions.CopyCommand:
			if c.From == "" || !names[strings.ToLower(c.From)] {
				t.Errorf("COPY %v without --from=<build stage>: the final image takes built files only", c.SourcePaths)
			}
			for _, src := range c.SourcePaths {
				switch {
				case src == "/out/erlmcp" || strings.HasSuffix(src, "/erlmcp"):
					binary = c.DestPath == "/erlmcp"
				case src == "/etc/ssl/certs/ca-certificates.crt":
				default:
					t.Errorf("COPY --from=%s %s: the final image holds the binary (and CA bundle) only", c.From, src)
				}
			}
		}
	}
	if !binary {
		t.Error("the final stage does not COPY --from the build stage the erlmcp binary to /erlmcp")
	}
	if !slices.Equal(entrypoint, []string{"/erlmcp"}) {
		t.Errorf(`ENTRYPOINT %q, want ["/erlmcp"]`, entrypoint)
	}
	uid, _, _ := strings.Cut(user, ":")
	n, err := strconv.Atoi(uid)
	if err != nil || n == 0 {
		t.Errorf("USER %q: want a numeric non-root uid (runAsNonRoot can only verify a numeric one)", user)
	}

	// The manifests run the image as its USER and on the ports it exposes.
	base := render(t, filesys.MakeFsOnDisk(), newScheme(t), "base")
	want := map[string]bool{}
	for _, o := range base.objs {
		var spec *corev1.PodSpec
		switch w := o.obj.(type) {
		case *appsv1.Deployment:
			spec = &w.Spec.Template.Spec
		case *appsv1.StatefulSet:
			spec = &w.Spec.Template.Spec
		default:
			continue
		}
		for _, c := range spec.Containers {
			if !isErlmcp(c) {
				continue
			}
			for _, p := range c.Ports {
				want[fmt.Sprint(p.ContainerPort)] = true
			}
			if sc := spec.SecurityContext; sc == nil || sc.RunAsUser == nil || fmt.Sprint(*sc.RunAsUser) != uid {
				t.Errorf("%s %s runs as a uid other than the image's USER %s", o.gvk.Kind, o.name, uid)
			}
		}
	}
	got := map[string]bool{}
	for _, p := range expose {
		got[strings.TrimSuffix(p, "/tcp")] = true
	}
	for p := range want {
		if !got[p] {
			t.Errorf("the manifests use port %s, which the Dockerfile does not EXPOSE (%v)", p, expose)
		}
	}
	for p := range got {
		if !want[p] {
			t.Errorf("the Dockerfile EXPOSEs %s, which no manifest uses", p)
		}
	}
}

// TestDockerignore checks that the ignore file beside the Dockerfile keeps
// the bulky and private parts of the checkout out of the build context,
// yet keeps every file the build compiles or embeds.
func TestDockerignore(t *testing.T) {
	f, err := os.Open(dockerfilePath + ".dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".git", ".git/config", "bin/erlmcp", ".erlmcp/store-1/raft.db", ".cache/x"} {
		if ok, _ := pm.MatchesOrParentMatches(p); !ok {
			t.Errorf("%s is sent to the Docker daemon: add it to the .dockerignore", p)
		}
	}
	// What `go build ./cmd/erlmcp` reads: go.mod, go.sum and every file
	// of every package it compiles from this module.
	need := []string{"go.mod", "go.sum"}
	cmd := exec.Command("go", "list", "-deps", "-json=Dir,Module,GoFiles,EmbedFiles", "./cmd/erlmcp")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/erlmcp: %v", err)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p struct {
			Dir                 string
			Module              *struct{ Path string }
			GoFiles, EmbedFiles []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		if p.Module == nil || p.Module.Path != "github.com/erlmcp/erlmcp" {
			continue
		}
		rel, err := filepath.Rel(root, p.Dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range append(p.GoFiles, p.EmbedFiles...) {
			need = append(need, filepath.ToSlash(filepath.Join(rel, f)))
		}
	}
	if len(need) < 10 {
		t.Fatalf("go list found only %v; is %s the erlmcp module?", need, root)
	}
	for _, p := range need {
		if ok, _ := pm.MatchesOrParentMatches(p); ok {
			t.Errorf("%s is needed by the build but excluded by the .dockerignore", p)
		}
	}
}
