// Package k8s holds no code: its tests render the kustomize base, overlays
// and components beside them with kustomize's own Go API, decode every
// object strictly into its typed Kubernetes API struct, and check the
// invariants a typo would break without any API server complaining (env
// names the binary really reads, probes on declared ports, selectors that
// select, the etcd membership the pods will advertise). It is its own Go
// module so kustomize and k8s.io/api stay out of the product's build.
package k8s

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// repoRoot is the erlmcp module, two levels up from this module.
const repoRoot = "../.."

// object is one rendered resource, decoded into its typed struct.
type object struct {
	gvk  schema.GroupVersionKind
	name string
	ns   string
	obj  runtime.Object
}

// rendering is everything one kustomization produces.
type rendering struct {
	dir  string
	objs []object
}

// find returns the object of that kind and name (nil when absent).
func (r rendering) find(kind, name string) runtime.Object {
	for _, o := range r.objs {
		if o.gvk.Kind == kind && o.name == name {
			return o.obj
		}
	}
	return nil
}

// configMap finds a generated ConfigMap by its name before the hash
// suffix kustomize appends.
func (r rendering) configMap(base string) *corev1.ConfigMap {
	for _, o := range r.objs {
		if cm, ok := o.obj.(*corev1.ConfigMap); ok && (cm.Name == base || strings.HasPrefix(cm.Name, base+"-") && len(cm.Name) == len(base)+11) {
			return cm
		}
	}
	return nil
}

// newScheme knows every kind the manifests may hold; any other kind fails
// the render check.
func newScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, rbacv1.AddToScheme, autoscalingv2.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatalf("scheme: %v", err)
		}
	}
	return s
}

// memFS copies the YAML files of this directory tree into an in-memory
// file system under /k8s, where test-only kustomizations can be added
// without writing into the source tree.
func memFS(t *testing.T) filesys.FileSystem {
	t.Helper()
	mem := filesys.MakeFsInMemory()
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !(strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(filepath.Join("/k8s", p), b)
	})
	if err != nil {
		t.Fatalf("copy manifests into memory: %v", err)
	}
	return mem
}

// render runs kustomize on dir and decodes every resource strictly:
// unknown or duplicate fields and case-mismatched field names are errors,
// as they would be for `kubectl apply --validate=strict`.
func render(t *testing.T, fsys filesys.FileSystem, scheme *runtime.Scheme, dir string) rendering {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := rendering{dir: dir}
	for _, res := range m.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s/%s as YAML: %v", dir, res.GetKind(), res.GetName(), err)
		}
		j, err := yaml.YAMLToJSONStrict(y)
		if err != nil {
			t.Fatalf("%s: %s/%s: %v", dir, res.GetKind(), res.GetName(), err)
		}
		g := res.GetGvk()
		gvk := schema.GroupVersionKind{Group: g.Group, Version: g.Version, Kind: g.Kind}
		obj, err := scheme.New(gvk)
		if err != nil {
			t.Errorf("%s: %s/%s: no typed API struct for %s: %v", dir, res.GetKind(), res.GetName(), gvk, err)
			continue
		}
		strict, err := sigsjson.UnmarshalStrict(j, obj, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
		if err != nil {
			t.Errorf("%s: %s/%s: decode: %v", dir, res.GetKind(), res.GetName(), err)
			continue
		}
		for _, e := range strict {
			t.Errorf("%s: %s/%s: %v", dir, res.GetKind(), res.GetName(), e)
		}
		r.objs = append(r.objs, object{gvk: gvk, name: res.GetName(), ns: res.GetNamespace(), obj: obj})
	}
	if len(r.objs) == 0 {
		t.Fatalf("%s rendered no objects", dir)
	}
	return r
}

// roleEnv maps each erlmcp role to the environment variables its --help
// lists and their defaults, from a binary built from this checkout (or
// $ERLMCP_BIN).
func roleEnv(t *testing.T) map[string]map[string]string {
	t.Helper()
	bin := os.Getenv("ERLMCP_BIN")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "erlmcp")
		root, err := filepath.Abs(repoRoot)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/erlmcp")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build ./cmd/erlmcp in %s: %v\n%s", root, err, out)
		}
	}
	re := regexp.MustCompile(`(?m)^\s+--[a-z0-9-]+\s+\((ERLMCP_[A-Z0-9_]+), default (.*)\)$`)
	out := map[string]map[string]string{}
	for _, role := range []string{"worker", "store", "controlplane", "front", "etcd"} {
		var buf bytes.Buffer
		cmd := exec.Command(bin, role, "--help")
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s --help: %v\n%s", bin, role, err, buf.String())
		}
		vars := map[string]string{}
		for _, m := range re.FindAllStringSubmatch(buf.String(), -1) {
			vars[m[1]] = strings.Trim(m[2], `"`)
		}
		if len(vars) < 5 {
			t.Fatalf("%s %s --help listed %d ERLMCP_* variables; the help format changed?\n%s", bin, role, len(vars), buf.String())
		}
		out[role] = vars
	}
	return out
}

// overlay is what each region overlay must set.
type overlay struct {
	region, role          string
	stores, workers, etcd int32
}

var overlays = []overlay{
	{"us-east-1", "primary", 3, 3, 2},
	{"eu-west-1", "secondary", 3, 3, 2},
	{"ap-southeast-1", "dr", 2, 2, 1},
}

// TestManifests renders the base, every region overlay and the base with
// each optional component, and checks each rendering.
func TestManifests(t *testing.T) {
	env := roleEnv(t)
	scheme := newScheme(t)
	mem := memFS(t)
	for name, body := range map[string]string{
		"hpa":           "resources: [../../base]\ncomponents: [../../components/worker-hpa]\n",
		"external-etcd": "resources: [../../base]\ncomponents: [../../components/external-etcd]\n",
	} {
		if err := mem.WriteFile("/k8s/testonly/"+name+"/kustomization.yaml", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}

	base := render(t, mem, scheme, "/k8s/base")
	t.Run("base", func(t *testing.T) {
		checkRendering(t, base, env)
		checkEtcdMembership(t, base, true)
		checkEtcdVersion(t, base)
		if hpa := base.find("HorizontalPodAutoscaler", "erlmcp-worker"); hpa != nil {
			t.Error("the base has a worker HPA: it would fight the control plane's scaler; keep it in components/worker-hpa")
		}
	})

	t.Run("hpa", func(t *testing.T) {
		r := render(t, mem, scheme, "/k8s/testonly/hpa")
		checkRendering(t, r, env)
		hpa, ok := r.find("HorizontalPodAutoscaler", "erlmcp-worker").(*autoscalingv2.HorizontalPodAutoscaler)
		if !ok {
			t.Fatal("components/worker-hpa renders no HPA erlmcp-worker")
		}
		ref := hpa.Spec.ScaleTargetRef
		if _, ok := r.find(ref.Kind, ref.Name).(*appsv1.Deployment); !ok || ref.APIVersion != "apps/v1" {
			t.Errorf("HPA targets %s %s/%s, not a rendered Deployment", ref.APIVersion, ref.Kind, ref.Name)
		}
	})

	t.Run("external-etcd", func(t *testing.T) {
		r := render(t, mem, scheme, "/k8s/testonly/external-etcd")
		checkRendering(t, r, env)
		for _, o := range r.objs {
			if strings.Contains(o.name, "etcd") {
				t.Errorf("external etcd still renders %s %s", o.gvk.Kind, o.name)
			}
		}
		if ep := r.configMap("erlmcp-common").Data["ERLMCP_ETCD_ENDPOINTS"]; strings.Contains(ep, "erlmcp-etcd") {
			t.Errorf("external etcd: ERLMCP_ETCD_ENDPOINTS still names the in-cluster etcd: %s", ep)
		}
	})

	var regions []rendering
	for _, ov := range overlays {
		r := render(t, mem, scheme, "/k8s/overlays/"+ov.region)
		regions = append(regions, r)
		t.Run(ov.region, func(t *testing.T) {
			checkRendering(t, r, env)
			checkOverlay(t, r, ov)
			checkEtcdMembership(t, r, false)
		})
	}
	t.Run("stretched-etcd", func(t *testing.T) { checkStretchedEtcd(t, regions) })
}

// workload is a Deployment or StatefulSet seen through what the checks need.
type workload struct {
	kind, name string
	replicas   int32
	selector   map[string]string
	template   *corev1.PodTemplateSpec
}

func workloads(t *testing.T, r rendering) []workload {
	t.Helper()
	var ws []workload
	for _, o := range r.objs {
		switch w := o.obj.(type) {
		case *appsv1.Deployment:
			if w.Spec.Selector == nil || len(w.Spec.Selector.MatchExpressions) > 0 || w.Spec.Replicas == nil {
				t.Errorf("Deployment %s: want a matchLabels selector and explicit replicas", w.Name)
				continue
			}
			ws = append(ws, workload{"Deployment", w.Name, *w.Spec.Replicas, w.Spec.Selector.MatchLabels, &w.Spec.Template})
		case *appsv1.StatefulSet:
			if w.Spec.Selector == nil || len(w.Spec.Selector.MatchExpressions) > 0 || w.Spec.Replicas == nil {
				t.Errorf("StatefulSet %s: want a matchLabels selector and explicit replicas", w.Name)
				continue
			}
			ws = append(ws, workload{"StatefulSet", w.Name, *w.Spec.Replicas, w.Spec.Selector.MatchLabels, &w.Spec.Template})
		}
	}
	return ws
}

// subset reports whether every pair of sel is in labels (an empty selector
// selects nothing here: none of ours is meant to select everything).
func subset(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// components are the values of app.kubernetes.io/component that the
// monitoring's kubernetes_sd relabelling keys on.
var components = []string{"worker", "store", "controlplane", "etcd"}

// helperEnv are the variables that only build other values in the pod
// spec ($(POD_IP):8080) or tune the Go runtime; no erlmcp flag reads them.
var helperEnv = map[string]bool{"POD_NAME": true, "POD_NAMESPACE": true, "POD_IP": true, "CLUSTER_DOMAIN": true, "INITIAL_CLUSTER": true, "GOMEMLIMIT": true}

// externalSecrets are created by the operator, never rendered (so no
// token is committed); kustomization.yaml says how.
var externalSecrets = map[string]bool{"erlmcp-admin-token": true}

// isErlmcp tells the erlmcp image from others (etcd).
func isErlmcp(c corev1.Container) bool {
	return strings.HasSuffix(imageRepo(c.Image), "/erlmcp")
}

func imageRepo(image string) string {
	image, _, _ = strings.Cut(image, "@")
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[:i]
	}
	return image
}

// checkRendering checks what every rendering must satisfy.
func checkRendering(t *testing.T, r rendering, env map[string]map[string]string) {
	t.Helper()
	ns := ""
	for _, o := range r.objs {
		if n, ok := o.obj.(*corev1.Namespace); ok {
			ns = n.Name
		}
	}
	if ns == "" {
		t.Fatal("no Namespace rendered")
	}
	for _, o := range r.objs {
		if _, ok := o.obj.(*corev1.Namespace); !ok && o.ns != ns {
			t.Errorf("%s %s is in namespace %q, want %q", o.gvk.Kind, o.name, o.ns, ns)
		}
	}

	ws := workloads(t, r)
	seen := map[string]int{}
	for _, w := range ws {
		checkWorkload(t, r, w, env)
		seen[w.template.Labels["app.kubernetes.io/component"]]++
	}
	for _, c := range []string{"worker", "store", "controlplane"} {
		if seen[c] != 1 {
			t.Errorf("%d workloads with component %s, want 1", seen[c], c)
		}
	}
	// Two workloads whose selectors overlap would fight over pods.
	for i, a := range ws {
		for _, b := range ws[i+1:] {
			if subset(a.selector, b.template.Labels) || subset(b.selector, a.template.Labels) {
				t.Errorf("%s %s and %s %s select each other's pods", a.kind, a.name, b.kind, b.name)
			}
		}
	}
	checkServices(t, r, ws)
	checkScaledPools(t, r, env)
	checkPDBs(t, r, ws)
	checkRBAC(t, r, ws)
	checkStore(t, r, ws)
}

func checkWorkload(t *testing.T, r rendering, w workload, env map[string]map[string]string) {
	t.Helper()
	id := w.kind + " " + w.name
	tpl := w.template
	if !subset(w.selector, tpl.Labels) {
		t.Errorf("%s: selector %v does not match its pod labels %v", id, w.selector, tpl.Labels)
	}
	comp := tpl.Labels["app.kubernetes.io/component"]
	if !slices.Contains(components, comp) {
		t.Errorf("%s: pod label app.kubernetes.io/component=%q, want one of %v", id, comp, components)
	}
	if w.selector["app.kubernetes.io/component"] != comp {
		t.Errorf("%s: selector does not pin app.kubernetes.io/component=%s", id, comp)
	}
	if w.replicas < 1 {
		t.Errorf("%s: %d replicas", id, w.replicas)
	}
	spec := tpl.Spec
	ports := map[string]int32{}
	numbers := map[int32]bool{}
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.Name != "" {
				ports[p.Name] = p.ContainerPort
			}
			numbers[p.ContainerPort] = true
		}
	}
	a := tpl.Annotations
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("%s: prometheus.io/scrape and /path annotations missing: %v", id, a)
	}
	var port int32
	if _, err := fmt.Sscan(a["prometheus.io/port"], &port); err != nil || !numbers[port] {
		t.Errorf("%s: prometheus.io/port %q is not a declared container port", id, a["prometheus.io/port"])
	}
	if spec.SecurityContext == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot ||
		spec.SecurityContext.RunAsUser == nil || *spec.SecurityContext.RunAsUser == 0 {
		t.Errorf("%s: the pod must run as a non-root uid (runAsNonRoot, runAsUser)", id)
	}
	for _, aff := range affinitySelectors(spec) {
		if !subset(aff, tpl.Labels) {
			t.Errorf("%s: an affinity or spread selector %v does not select its own pods", id, aff)
		}
	}
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
		if v.Secret == nil {
			continue
		}
		if !externalSecrets[v.Secret.SecretName] && r.find("Secret", v.Secret.SecretName) == nil {
			t.Errorf("%s: volume %s uses Secret %s, which is neither rendered nor documented as created by hand", id, v.Name, v.Secret.SecretName)
		}
		// The files are root's; the non-root process reads them through
		// the group (fsGroup) or not at all.
		mode := int32(0o644)
		if v.Secret.DefaultMode != nil {
			mode = *v.Secret.DefaultMode
		}
		if mode&0o004 == 0 && (mode&0o040 == 0 || spec.SecurityContext == nil || spec.SecurityContext.FSGroup == nil) {
			t.Errorf("%s: secret volume %s (mode %#o) is unreadable to the non-root uid: set fsGroup", id, v.Name, mode)
		}
	}
	if sts, ok := r.find("StatefulSet", w.name).(*appsv1.StatefulSet); ok && w.kind == "StatefulSet" {
		for _, pvc := range sts.Spec.VolumeClaimTemplates {
			volumes[pvc.Name] = true
		}
	}
	for _, c := range spec.Containers {
		cid := id + " container " + c.Name
		checkImage(t, cid, c.Image)
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				t.Errorf("%s: mounts volume %s, which the pod does not have", cid, m.Name)
			}
		}
		if c.SecurityContext == nil || c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation ||
			c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
			t.Errorf("%s: want allowPrivilegeEscalation false and a read-only root file system", cid)
		}
		for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
			if p == nil {
				if name != "startup" {
					t.Errorf("%s: no %s probe", cid, name)
				}
				continue
			}
			if p.HTTPGet == nil {
				t.Errorf("%s: %s probe is not an HTTP GET", cid, name)
				continue
			}
			pp := p.HTTPGet.Port
			if pp.StrVal != "" && ports[pp.StrVal] == 0 || pp.StrVal == "" && !numbers[pp.IntVal] {
				t.Errorf("%s: %s probe on port %s, which the container does not declare", cid, name, pp.String())
			}
			want := map[string][]string{"liveness": {"/healthz", "/livez"}, "startup": {"/healthz", "/livez"}, "readiness": {"/readyz", "/healthz"}}[name]
			if !slices.Contains(want, p.HTTPGet.Path) {
				t.Errorf("%s: %s probe on %s, want one of %v", cid, name, p.HTTPGet.Path, want)
			}
		}
		vars := checkEnv(t, r, cid, c)
		if isErlmcp(c) {
			checkPodNameEnv(t, cid, c, "ERLMCP_ID", "$(%s)")
			checkErlmcpContainer(t, cid, c, vars, env, ports)
			if comp == "worker" || comp == "store" {
				if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
					t.Errorf("%s: a %s must be ready by /readyz (it says when it can serve)", cid, comp)
				}
			}
		}
	}
}

// checkPodNameEnv checks that env name is format with the pod's name: the
// Kubernetes actuator restarts a member by deleting the pod its id names,
// and a store advertises its stable per-pod DNS name.
func checkPodNameEnv(t *testing.T, id string, c corev1.Container, name, format string) {
	t.Helper()
	podName := ""
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
			podName = e.Name
		}
	}
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		if want := fmt.Sprintf(format, podName); podName == "" || !strings.HasPrefix(e.Value, want) {
			t.Errorf("%s: %s=%q, want it to start with %q (from the pod name)", id, name, e.Value, want)
		}
		return
	}
	t.Errorf("%s: %s is not set", id, name)
}

func affinitySelectors(spec corev1.PodSpec) []map[string]string {
	var out []map[string]string
	if a := spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, term := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
			if term.LabelSelector != nil {
				out = append(out, term.LabelSelector.MatchLabels)
			}
		}
		for _, wt := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			if wt.PodAffinityTerm.LabelSelector != nil {
				out = append(out, wt.PodAffinityTerm.LabelSelector.MatchLabels)
			}
		}
	}
	for _, c := range spec.TopologySpreadConstraints {
		if c.LabelSelector != nil {
			out = append(out, c.LabelSelector.MatchLabels)
		}
	}
	return out
}

// checkImage wants a registry repository and a version tag or digest:
// never a bare name kustomize failed to map, never latest.
func checkImage(t *testing.T, id, image string) {
	t.Helper()
	repo := imageRepo(image)
	tag := strings.TrimPrefix(strings.TrimPrefix(image, repo), ":")
	switch {
	case !strings.Contains(repo, "/"):
		t.Errorf("%s: image %q has no registry path (an images: entry missing?)", id, image)
	case tag == "" || tag == "latest" || strings.HasPrefix(tag, "latest@"):
		t.Errorf("%s: image %q is not pinned to a version", id, image)
	}
}

// varRef is a $(NAME) reference, expanded by the kubelet.
var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkEnv checks that every ConfigMap a container reads exists with the
// keys read, and that every $(NAME) in env values, command and args names
// a variable defined before it (the kubelet leaves an unknown one as the
// literal text). It returns the container's variables: literal values
// (ConfigMap values included) or "" for those only known at run time.
func checkEnv(t *testing.T, r rendering, id string, c corev1.Container) map[string]string {
	t.Helper()
	vars := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			t.Errorf("%s: envFrom other than a ConfigMap", id)
			continue
		}
		cm, _ := r.find("ConfigMap", ef.ConfigMapRef.Name).(*corev1.ConfigMap)
		if cm == nil {
			t.Errorf("%s: envFrom ConfigMap %s is not rendered", id, ef.ConfigMapRef.Name)
			continue
		}
		for k, v := range cm.Data {
			vars[ef.Prefix+k] = v
		}
	}
	for _, e := range c.Env {
		if _, dup := vars[e.Name]; dup {
			t.Errorf("%s: env %s set twice (env and envFrom, or env twice): which one wins is easy to misread", id, e.Name)
		}
		val := e.Value
		if e.ValueFrom != nil {
			switch {
			case e.ValueFrom.ConfigMapKeyRef != nil:
				ref := e.ValueFrom.ConfigMapKeyRef
				cm, _ := r.find("ConfigMap", ref.Name).(*corev1.ConfigMap)
				if cm == nil {
					t.Errorf("%s: env %s reads ConfigMap %s, which is not rendered", id, e.Name, ref.Name)
				} else if v, ok := cm.Data[ref.Key]; !ok {
					t.Errorf("%s: env %s reads key %s, which ConfigMap %s lacks", id, e.Name, ref.Key, ref.Name)
				} else {
					val = v
				}
			case e.ValueFrom.SecretKeyRef != nil && !externalSecrets[e.ValueFrom.SecretKeyRef.Name]:
				t.Errorf("%s: env %s reads Secret %s, which is neither rendered nor created by hand", id, e.Name, e.ValueFrom.SecretKeyRef.Name)
			}
		} else {
			for _, m := range varRef.FindAllStringSubmatch(e.Value, -1) {
				if _, ok := vars[m[1]]; !ok {
					t.Errorf("%s: env %s uses $(%s), not defined before it", id, e.Name, m[1])
				}
			}
		}
		vars[e.Name] = val
	}
	for _, s := range append(slices.Clone(c.Command), c.Args...) {
		for _, m := range varRef.FindAllStringSubmatch(s, -1) {
			if _, ok := vars[m[1]]; !ok {
				t.Errorf("%s: %q uses $(%s), which the container does not define", id, s, m[1])
			}
		}
	}
	return vars
}

// checkErlmcpContainer checks an erlmcp container against the binary:
// the role is a real subcommand, every ERLMCP_* variable is one that role
// reads, and every listen address is on a declared port.
func checkErlmcpContainer(t *testing.T, id string, c corev1.Container, vars map[string]string, env map[string]map[string]string, ports map[string]int32) {
	t.Helper()
	if len(c.Command) > 0 || len(c.Args) == 0 {
		t.Errorf("%s: want the image's entrypoint and the role as args[0], got command %v args %v", id, c.Command, c.Args)
		return
	}
	role := c.Args[0]
	known, ok := env[role]
	if !ok {
		t.Errorf("%s: role %q is not an erlmcp subcommand with flags", id, role)
		return
	}
	names := make([]string, 0, len(vars))
	for n := range vars {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		switch {
		case strings.HasPrefix(n, "ERLMCP_") && !has(known, n):
			t.Errorf("%s: %s is not a variable `erlmcp %s --help` lists", id, n, role)
		case !strings.HasPrefix(n, "ERLMCP_") && !helperEnv[n]:
			t.Errorf("%s: %s is neither an ERLMCP_* setting nor a known helper variable", id, n)
		}
	}
	declared := map[string]bool{}
	for _, p := range ports {
		declared[fmt.Sprint(p)] = true
	}
	for _, n := range names {
		if !strings.HasSuffix(n, "_LISTEN") && n != "ERLMCP_ADVERTISE" && n != "ERLMCP_ADMIN_ADVERTISE" {
			continue
		}
		v := vars[n]
		i := strings.LastIndex(v, ":")
		if i < 0 || !declared[v[i+1:]] {
			t.Errorf("%s: %s=%q is not on a port the container declares (%v)", id, n, v, ports)
		}
	}
	// The control plane must drive Kubernetes, not the laptop supervisor,
	// once the binary has the choice.
	if role == "controlplane" && has(known, "ERLMCP_ACTUATOR") && vars["ERLMCP_ACTUATOR"] != "kubernetes" {
		t.Errorf("%s: ERLMCP_ACTUATOR=%q, want kubernetes", id, vars["ERLMCP_ACTUATOR"])
	}
	for _, must := range []string{"ERLMCP_ID", "ERLMCP_REGION", "ERLMCP_ZONE", "ERLMCP_ETCD_ENDPOINTS"} {
		if _, ok := vars[must]; !ok {
			t.Errorf("%s: %s is not set (the default is for a laptop)", id, must)
		}
	}
}

func has(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}

// checkScaledPools checks that every pool the control plane's Kubernetes
// actuator scales (--kube-deployments, or its default) is a rendered
// Deployment whose erlmcp.io/pool annotation names that pool.
func checkScaledPools(t *testing.T, r rendering, env map[string]map[string]string) {
	t.Helper()
	// The value a control plane runs with: its ConfigMap's, else the default.
	setting := func(name string) (string, bool) {
		if cm := r.configMap("erlmcp-controlplane"); cm != nil && has(cm.Data, name) {
			return cm.Data[name], true
		}
		v, ok := env["controlplane"][name]
		return v, ok
	}
	spec, ok := setting("ERLMCP_KUBE_DEPLOYMENTS")
	if !ok {
		return // not in this binary yet
	}
	var hpa *autoscalingv2.HorizontalPodAutoscaler
	for _, o := range r.objs {
		if h, ok := o.obj.(*autoscalingv2.HorizontalPodAutoscaler); ok {
			hpa = h
		}
	}
	autoscale, _ := setting("ERLMCP_AUTOSCALE")
	switch {
	case hpa != nil && autoscale == "true":
		t.Errorf("HPA %s and the control plane's autoscaler (ERLMCP_AUTOSCALE=true) both set the workers' replicas", hpa.Name)
	case hpa == nil && autoscale != "true":
		t.Errorf("nothing scales the workers: no HPA and ERLMCP_AUTOSCALE=%q", autoscale)
	}
	deployments := map[string]string{}
	for _, kv := range strings.Split(spec, ",") {
		pool, name, _ := strings.Cut(kv, "=")
		deployments[pool] = name
	}
	if autoscale == "true" {
		pool, _ := setting("ERLMCP_SCALE_POOL")
		d, _ := r.find("Deployment", deployments[pool]).(*appsv1.Deployment)
		var lo, hi int32
		minS, _ := setting("ERLMCP_SCALE_MIN")
		maxS, _ := setting("ERLMCP_SCALE_MAX")
		_, err1 := fmt.Sscan(minS, &lo)
		_, err2 := fmt.Sscan(maxS, &hi)
		switch {
		case d == nil:
			t.Errorf("the control plane scales pool %q, which maps to no rendered Deployment (%s)", pool, spec)
		case err1 != nil || err2 != nil:
			t.Errorf("ERLMCP_SCALE_MIN %q / ERLMCP_SCALE_MAX %q are not numbers", minS, maxS)
		case *d.Spec.Replicas < lo || *d.Spec.Replicas > hi:
			t.Errorf("Deployment %s starts with %d replicas, outside the scaler's %d..%d: it is resized at once", d.Name, *d.Spec.Replicas, lo, hi)
		}
	}
	if spec == "" {
		t.Error("the control plane scales no Deployment (ERLMCP_KUBE_DEPLOYMENTS empty)")
	}
	for _, kv := range strings.Split(spec, ",") {
		pool, name, _ := strings.Cut(kv, "=")
		d, ok := r.find("Deployment", name).(*appsv1.Deployment)
		if !ok {
			t.Errorf("the control plane scales pool %s as Deployment %q, which is not rendered", pool, name)
			continue
		}
		if d.Annotations["erlmcp.io/pool"] != pool {
			t.Errorf("Deployment %s: annotation erlmcp.io/pool=%q, but the control plane scales it as pool %q", name, d.Annotations["erlmcp.io/pool"], pool)
		}
	}
}

func checkServices(t *testing.T, r rendering, ws []workload) {
	t.Helper()
	for _, o := range r.objs {
		svc, ok := o.obj.(*corev1.Service)
		if !ok {
			continue
		}
		var hits []workload
		for _, w := range ws {
			if subset(svc.Spec.Selector, w.template.Labels) {
				hits = append(hits, w)
			}
		}
		if len(hits) != 1 {
			t.Errorf("Service %s selects the pods of %d workloads, want 1", svc.Name, len(hits))
			continue
		}
		if svc.Labels["app.kubernetes.io/component"] != hits[0].template.Labels["app.kubernetes.io/component"] {
			t.Errorf("Service %s: component label differs from its pods'", svc.Name)
		}
		for _, sp := range svc.Spec.Ports {
			found := false
			for _, c := range hits[0].template.Spec.Containers {
				for _, cp := range c.Ports {
					if sp.TargetPort.StrVal == cp.Name && cp.Name != "" || sp.TargetPort.StrVal == "" && sp.TargetPort.IntVal == cp.ContainerPort {
						found = true
					}
				}
			}
			if !found {
				t.Errorf("Service %s port %s targets %s, which %s %s does not declare", svc.Name, sp.Name, sp.TargetPort.String(), hits[0].kind, hits[0].name)
			}
		}
	}
	for _, w := range ws {
		sts, ok := r.find("StatefulSet", w.name).(*appsv1.StatefulSet)
		if !ok || w.kind != "StatefulSet" {
			continue
		}
		svc, _ := r.find("Service", sts.Spec.ServiceName).(*corev1.Service)
		switch {
		case svc == nil:
			t.Errorf("StatefulSet %s: serviceName %s is not rendered", w.name, sts.Spec.ServiceName)
		case svc.Spec.ClusterIP != corev1.ClusterIPNone:
			t.Errorf("StatefulSet %s: Service %s must be headless for stable pod names", w.name, svc.Name)
		case !svc.Spec.PublishNotReadyAddresses:
			t.Errorf("StatefulSet %s: Service %s must publish not-ready pods (peers find each other before they are ready)", w.name, svc.Name)
		case !subset(svc.Spec.Selector, w.template.Labels):
			t.Errorf("StatefulSet %s: Service %s does not select its pods", w.name, svc.Name)
		}
	}
}

func checkPDBs(t *testing.T, r rendering, ws []workload) {
	t.Helper()
	covered := map[string]bool{}
	for _, o := range r.objs {
		pdb, ok := o.obj.(*policyv1.PodDisruptionBudget)
		if !ok {
			continue
		}
		if pdb.Spec.Selector == nil {
			t.Errorf("PDB %s has no selector", pdb.Name)
			continue
		}
		var hits []workload
		for _, w := range ws {
			if subset(pdb.Spec.Selector.MatchLabels, w.template.Labels) {
				hits = append(hits, w)
			}
		}
		if len(hits) != 1 {
			t.Errorf("PDB %s selects the pods of %d workloads, want 1", pdb.Name, len(hits))
			continue
		}
		w := hits[0]
		covered[w.name] = true
		// A budget that allows no eviction blocks every node drain.
		switch {
		case pdb.Spec.MaxUnavailable != nil:
			if pdb.Spec.MaxUnavailable.IntValue() < 1 && pdb.Spec.MaxUnavailable.StrVal == "" {
				t.Errorf("PDB %s: maxUnavailable %s allows no eviction", pdb.Name, pdb.Spec.MaxUnavailable.String())
			}
		case pdb.Spec.MinAvailable != nil:
			if pdb.Spec.MinAvailable.StrVal == "" && pdb.Spec.MinAvailable.IntVal >= w.replicas {
				t.Errorf("PDB %s: minAvailable %d of %d replicas allows no eviction", pdb.Name, pdb.Spec.MinAvailable.IntVal, w.replicas)
			}
		default:
			t.Errorf("PDB %s sets neither minAvailable nor maxUnavailable", pdb.Name)
		}
	}
	for _, w := range ws {
		if !covered[w.name] {
			t.Errorf("%s %s has no PodDisruptionBudget", w.kind, w.name)
		}
	}
}

// actuatorRules is what the control plane's Kubernetes actuator needs
// (notes/metrics-contract.md): group/resource -> verbs.
var actuatorRules = map[string][]string{
	"/pods":                  {"get", "list", "watch", "delete", "patch"},
	"apps/deployments":       {"get", "list", "watch", "patch", "update"},
	"apps/deployments/scale": {"get", "update", "patch"},
}

func checkRBAC(t *testing.T, r rendering, ws []workload) {
	t.Helper()
	var cp *workload
	for i, w := range ws {
		if w.template.Labels["app.kubernetes.io/component"] == "controlplane" {
			cp = &ws[i]
		}
	}
	for _, w := range ws {
		if w.template.Spec.ServiceAccountName == "" && (w.template.Spec.AutomountServiceAccountToken == nil || *w.template.Spec.AutomountServiceAccountToken) {
			t.Errorf("%s %s mounts the default service account's token; it needs none", w.kind, w.name)
		}
	}
	if cp == nil {
		return
	}
	saName := cp.template.Spec.ServiceAccountName
	sa, _ := r.find("ServiceAccount", saName).(*corev1.ServiceAccount)
	if sa == nil {
		t.Fatalf("control plane service account %q is not rendered", saName)
	}
	granted := map[string]map[string]bool{}
	for _, o := range r.objs {
		rb, ok := o.obj.(*rbacv1.RoleBinding)
		if !ok {
			continue
		}
		bound := false
		for _, s := range rb.Subjects {
			if s.Kind == "ServiceAccount" && s.Name == sa.Name && s.Namespace == sa.Namespace {
				bound = true
			}
		}
		if !bound {
			continue
		}
		if rb.RoleRef.Kind != "Role" {
			t.Errorf("RoleBinding %s binds a %s; the actuator's rights stay namespace-scoped", rb.Name, rb.RoleRef.Kind)
			continue
		}
		role, _ := r.find("Role", rb.RoleRef.Name).(*rbacv1.Role)
		if role == nil {
			t.Errorf("RoleBinding %s: Role %s is not rendered", rb.Name, rb.RoleRef.Name)
			continue
		}
		for _, rule := range role.Rules {
			for _, g := range rule.APIGroups {
				for _, res := range rule.Resources {
					key := g + "/" + res
					if granted[key] == nil {
						granted[key] = map[string]bool{}
					}
					for _, v := range rule.Verbs {
						if v == "*" || g == "*" || res == "*" {
							t.Errorf("Role %s grants a wildcard (%s %s %s)", role.Name, g, res, v)
						}
						granted[key][v] = true
					}
				}
			}
		}
	}
	for res, verbs := range actuatorRules {
		for _, v := range verbs {
			if !granted[res][v] {
				t.Errorf("the control plane's service account %s may not %s %s", sa.Name, v, res)
			}
		}
	}
	for res := range granted {
		if _, ok := actuatorRules[res]; !ok {
			t.Errorf("the control plane's service account is granted %s, beyond what the actuator needs", res)
		}
	}
}

// checkStore checks what keeps a shard's replicas apart: a volume per
// node for its data dir, never two nodes on one machine, spread over zones.
func checkStore(t *testing.T, r rendering, ws []workload) {
	t.Helper()
	for _, w := range ws {
		if w.template.Labels["app.kubernetes.io/component"] != "store" {
			continue
		}
		sts, ok := r.find("StatefulSet", w.name).(*appsv1.StatefulSet)
		if !ok || w.kind != "StatefulSet" {
			t.Errorf("the store is a %s; it needs a StatefulSet for stable ids and volumes", w.kind)
			continue
		}
		if len(sts.Spec.VolumeClaimTemplates) == 0 {
			t.Error("store StatefulSet has no volumeClaimTemplates")
		}
		pvcs := map[string]bool{}
		for _, p := range sts.Spec.VolumeClaimTemplates {
			pvcs[p.Name] = true
		}
		spec := w.template.Spec
		aff := spec.Affinity
		if aff == nil || aff.PodAntiAffinity == nil {
			t.Error("store pods have no pod anti-affinity")
			continue
		}
		zone, host := false, false
		for _, term := range aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
			host = host || term.TopologyKey == corev1.LabelHostname
			zone = zone || term.TopologyKey == corev1.LabelTopologyZone
		}
		for _, wt := range aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			zone = zone || wt.PodAffinityTerm.TopologyKey == corev1.LabelTopologyZone
		}
		if !zone || !host {
			t.Errorf("store anti-affinity: across zones %v, required across nodes %v; want both", zone, host)
		}
		spread := false
		for _, c := range spec.TopologySpreadConstraints {
			spread = spread || c.TopologyKey == corev1.LabelTopologyZone && c.WhenUnsatisfiable == corev1.DoNotSchedule
		}
		if !spread {
			t.Error("store pods have no hard topology spread over zones")
		}
		for _, c := range spec.Containers {
			if !isErlmcp(c) {
				continue
			}
			checkPodNameEnv(t, "store", c, "ERLMCP_ADVERTISE", "$(%s)."+sts.Spec.ServiceName+".")
			dataDir := ""
			for _, ef := range c.EnvFrom {
				if cm, ok := r.find("ConfigMap", ef.ConfigMapRef.Name).(*corev1.ConfigMap); ok && cm.Data["ERLMCP_DATA_DIR"] != "" {
					dataDir = cm.Data["ERLMCP_DATA_DIR"]
				}
			}
			for _, e := range c.Env {
				if e.Name == "ERLMCP_DATA_DIR" {
					dataDir = e.Value
				}
			}
			onPVC := false
			for _, m := range c.VolumeMounts {
				onPVC = onPVC || pvcs[m.Name] && (dataDir == m.MountPath || strings.HasPrefix(dataDir, strings.TrimSuffix(m.MountPath, "/")+"/"))
			}
			if !onPVC {
				t.Errorf("store data dir %q is not on a persistent volume claim", dataDir)
			}
		}
	}
}

// checkOverlay checks what a region overlay sets.
func checkOverlay(t *testing.T, r rendering, ov overlay) {
	t.Helper()
	if got := r.configMap("erlmcp-common").Data["ERLMCP_REGION"]; got != ov.region {
		t.Errorf("ERLMCP_REGION=%q, want %q", got, ov.region)
	}
	want := map[string]int32{"store": ov.stores, "worker": ov.workers, "etcd": ov.etcd, "controlplane": 2}
	for _, w := range workloads(t, r) {
		comp := w.template.Labels["app.kubernetes.io/component"]
		if w.replicas != want[comp] {
			t.Errorf("%s %s: %d replicas, want %d", w.kind, w.name, w.replicas, want[comp])
		}
		if w.template.Labels["erlmcp.io/region"] != ov.region || w.template.Labels["erlmcp.io/region-role"] != ov.role {
			t.Errorf("%s %s: pods labelled region %q role %q, want %q %q", w.kind, w.name,
				w.template.Labels["erlmcp.io/region"], w.template.Labels["erlmcp.io/region-role"], ov.region, ov.role)
		}
		if w.kind == "StatefulSet" && !strings.HasSuffix(w.name, "-"+ov.region) {
			t.Errorf("StatefulSet %s: the name must end in -%s so its pod names (member ids) are unique across regions", w.name, ov.region)
		}
		if _, ok := w.selector["erlmcp.io/region"]; ok {
			t.Errorf("%s %s: region in the selector (selectors are immutable)", w.kind, w.name)
		}
	}
}

// etcdMember is one entry of etcd's --initial-cluster.
type etcdMember struct{ name, peerURL string }

func parseInitialCluster(t *testing.T, s string) []etcdMember {
	t.Helper()
	var ms []etcdMember
	for _, kv := range strings.Split(s, ",") {
		name, url, ok := strings.Cut(kv, "=")
		if !ok || name == "" || url == "" {
			t.Fatalf("initial cluster entry %q is not name=peer-url", kv)
		}
		ms = append(ms, etcdMember{name, url})
	}
	return ms
}

// expand substitutes $(NAME) as the kubelet does, from vars.
func expand(s string, vars map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := vars[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

// etcdView is what one rendering's etcd pods will advertise.
type etcdView struct {
	initialCluster string
	own            []etcdMember // the members this rendering's pods are
	clientURLs     []string     // their advertised client URLs
	endpoints      string       // ERLMCP_ETCD_ENDPOINTS of the erlmcp roles
}

// etcdPods expands the etcd container's flags for each pod ordinal as the
// kubelet would, giving the member name and URLs each pod advertises.
func etcdPods(t *testing.T, r rendering) etcdView {
	t.Helper()
	var sts *appsv1.StatefulSet
	for _, o := range r.objs {
		if s, ok := o.obj.(*appsv1.StatefulSet); ok && s.Spec.Template.Labels["app.kubernetes.io/component"] == "etcd" {
			sts = s
		}
	}
	if sts == nil {
		t.Fatal("no etcd StatefulSet rendered")
	}
	c := sts.Spec.Template.Spec.Containers[0]
	v := etcdView{endpoints: r.configMap("erlmcp-common").Data["ERLMCP_ETCD_ENDPOINTS"]}
	for i := range *sts.Spec.Replicas {
		vars := map[string]string{}
		for _, e := range c.Env {
			switch {
			case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
				vars[e.Name] = fmt.Sprintf("%s-%d", sts.Name, i)
			case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
				vars[e.Name] = sts.Namespace
			case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
				cm, _ := r.find("ConfigMap", e.ValueFrom.ConfigMapKeyRef.Name).(*corev1.ConfigMap)
				if cm != nil {
					vars[e.Name] = cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
				}
			default:
				vars[e.Name] = expand(e.Value, vars)
			}
		}
		flags := map[string]string{}
		for _, a := range c.Args {
			k, val, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			flags[k] = expand(val, vars)
		}
		m := etcdMember{flags["name"], flags["initial-advertise-peer-urls"]}
		if strings.Contains(m.name+m.peerURL+flags["advertise-client-urls"], "$(") {
			t.Errorf("etcd pod %d: unexpanded reference in %+v", i, flags)
		}
		// The advertised host must be the pod's stable name under the
		// headless Service, or peers cannot reach it after a restart.
		host := fmt.Sprintf("%s-%d.%s.%s.svc.", sts.Name, i, sts.Spec.ServiceName, sts.Namespace)
		if !strings.HasPrefix(m.peerURL, "http://"+host) || !strings.HasPrefix(flags["advertise-client-urls"], "http://"+host) {
			t.Errorf("etcd pod %d advertises %s and %s, not its stable name %s...", i, m.peerURL, flags["advertise-client-urls"], host)
		}
		v.initialCluster = flags["initial-cluster"]
		v.own = append(v.own, m)
		v.clientURLs = append(v.clientURLs, flags["advertise-client-urls"])
	}
	return v
}

// clientURL is a member's client URL from its peer URL (same host, 2379).
func clientURL(peer string) string {
	return strings.TrimSuffix(peer, ":2380") + ":2379"
}

// checkEtcdMembership checks that each etcd pod is in --initial-cluster
// under the name and peer URL it advertises; alone (the base) the
// rendering must hold every member and the erlmcp roles must list them.
func checkEtcdMembership(t *testing.T, r rendering, alone bool) {
	t.Helper()
	v := etcdPods(t, r)
	members := parseInitialCluster(t, v.initialCluster)
	for i, m := range v.own {
		if !slices.Contains(members, m) {
			t.Errorf("etcd pod %d advertises %s=%s, not in --initial-cluster %s", i, m.name, m.peerURL, v.initialCluster)
		}
		if v.clientURLs[i] != clientURL(m.peerURL) {
			t.Errorf("etcd pod %d: client URL %s, peer URL %s: hosts differ", i, v.clientURLs[i], m.peerURL)
		}
	}
	var want []string
	for _, m := range members {
		want = append(want, clientURL(m.peerURL))
	}
	if got := strings.Split(v.endpoints, ","); !slices.Equal(got, want) {
		t.Errorf("ERLMCP_ETCD_ENDPOINTS %v, want every member's client URL %v", got, want)
	}
	if alone && len(members) != len(v.own) {
		t.Errorf("--initial-cluster has %d members, the StatefulSet %d", len(members), len(v.own))
	}
}

// checkStretchedEtcd checks the one etcd the regions share: every region
// names the same members, together they run exactly those, and no
// region's loss takes the quorum with it.
func checkStretchedEtcd(t *testing.T, regions []rendering) {
	t.Helper()
	if len(regions) == 0 {
		t.Fatal("no regions")
	}
	first := etcdPods(t, regions[0]).initialCluster
	members := parseInitialCluster(t, first)
	run := map[etcdMember]string{}
	for _, r := range regions {
		v := etcdPods(t, r)
		if v.initialCluster != first {
			t.Errorf("%s: --initial-cluster differs from %s's:\n%s\n%s", r.dir, regions[0].dir, v.initialCluster, first)
		}
		for _, m := range v.own {
			if prev, dup := run[m]; dup {
				t.Errorf("etcd member %s runs in both %s and %s", m.name, prev, r.dir)
			}
			run[m] = r.dir
		}
	}
	for _, m := range members {
		if _, ok := run[m]; !ok {
			t.Errorf("etcd member %s=%s runs in no region", m.name, m.peerURL)
		}
	}
	quorum := len(members)/2 + 1
	for _, r := range regions {
		lost := len(etcdPods(t, r).own)
		if len(members)-lost < quorum {
			t.Errorf("losing %s (%d etcd members) leaves %d of %d, below quorum %d", r.dir, lost, len(members)-lost, len(members), quorum)
		}
	}
}

// checkEtcdVersion checks that the etcd image is the release of the etcd
// client (and embedded server) the product is built and tested with.
func checkEtcdVersion(t *testing.T, r rendering) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`go\.etcd\.io/etcd/client/v3 (v[0-9.]+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod requires no go.etcd.io/etcd/client/v3")
	}
	for _, o := range r.objs {
		sts, ok := o.obj.(*appsv1.StatefulSet)
		if !ok || sts.Spec.Template.Labels["app.kubernetes.io/component"] != "etcd" {
			continue
		}
		for _, c := range sts.Spec.Template.Spec.Containers {
			if _, tag, _ := strings.Cut(c.Image[strings.LastIndex(c.Image, "/")+1:], ":"); tag != string(m[1]) {
				t.Errorf("etcd image %s: want tag %s, the etcd release in go.mod", c.Image, m[1])
			}
		}
	}
}
