package controlplane

import (
	"context"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func workerPod(name, app string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "erlmcp", Labels: map[string]string{"app": app}},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

func newFakeKube(t *testing.T) (*fake.Clientset, *kubeActuator) {
	t.Helper()
	replicas := int32(2)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "erlmcp-worker", Namespace: "erlmcp"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "erlmcp-worker"}},
		},
	}
	cs := fake.NewClientset(dep,
		workerPod("erlmcp-worker-a", "erlmcp-worker", corev1.PodRunning),
		workerPod("erlmcp-worker-b", "erlmcp-worker", corev1.PodPending),
		workerPod("erlmcp-store-0", "erlmcp-store", corev1.PodRunning))
	// The fake object tracker does not serve the scale subresource; these
	// reactors answer it from the Deployment as the API server does.
	cs.PrependReactor("get", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "scale" {
			return false, nil, nil
		}
		return true, &autoscalingv1.Scale{
			ObjectMeta: metav1.ObjectMeta{Name: "erlmcp-worker", Namespace: "erlmcp", ResourceVersion: "7"},
			Spec:       autoscalingv1.ScaleSpec{Replicas: *dep.Spec.Replicas},
		}, nil
	})
	cs.PrependReactor("update", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "scale" {
			return false, nil, nil
		}
		sc := a.(k8stesting.UpdateAction).GetObject().(*autoscalingv1.Scale)
		n := sc.Spec.Replicas
		dep.Spec.Replicas = &n
		return true, sc, nil
	})
	return cs, newKubeActuator(cs.AppsV1(), cs.CoreV1(), "erlmcp", map[string]string{"worker": "erlmcp-worker"})
}

func TestKubeActuatorProcessesRestartScale(t *testing.T) {
	ctx := context.Background()
	cs, a := newFakeKube(t)

	ps, err := a.Processes(ctx, "worker")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, p := range ps {
		got[p.Name] = p.Running
	}
	if len(got) != 2 || !got["erlmcp-worker-a"] || got["erlmcp-worker-b"] {
		t.Fatalf("processes %+v: want worker-a running, worker-b not, no store pod", ps)
	}
	if _, err := a.Processes(ctx, "front"); err == nil || !strings.Contains(err.Error(), "--kube-deployments") {
		t.Fatalf("unknown pool: %v", err)
	}

	cs.ClearActions()
	if err := a.Restart(ctx, "erlmcp-worker-a"); err != nil {
		t.Fatal(err)
	}
	acts := cs.Actions()
	if len(acts) != 1 || acts[0].GetVerb() != "delete" || acts[0].GetResource().Resource != "pods" ||
		acts[0].(k8stesting.DeleteAction).GetName() != "erlmcp-worker-a" || acts[0].GetNamespace() != "erlmcp" {
		t.Fatalf("restart actions %v: want one delete of pods/erlmcp-worker-a in erlmcp", acts)
	}
	if err := a.Restart(ctx, "erlmcp-worker-a"); err != nil {
		t.Fatalf("restart of a pod already gone: %v", err)
	}

	cs.ClearActions()
	if err := a.Scale(ctx, "worker", 4, nil); err != nil {
		t.Fatal(err)
	}
	acts = cs.Actions()
	if len(acts) != 2 || acts[0].GetVerb() != "get" || acts[0].GetSubresource() != "scale" ||
		acts[1].GetVerb() != "update" || acts[1].GetSubresource() != "scale" {
		t.Fatalf("scale actions %v: want get and update of deployments/scale", acts)
	}
	if n := acts[1].(k8stesting.UpdateAction).GetObject().(*autoscalingv1.Scale).Spec.Replicas; n != 4 {
		t.Fatalf("scaled to %d, want 4", n)
	}
	// Already at 4: read only.
	cs.ClearActions()
	if err := a.Scale(ctx, "worker", 4, nil); err != nil {
		t.Fatal(err)
	}
	if acts = cs.Actions(); len(acts) != 1 || acts[0].GetVerb() != "get" {
		t.Fatalf("no-op scale actions %v: want only the get", acts)
	}
}

func TestParseActuatorAndDeployments(t *testing.T) {
	for spec, want := range map[string]string{"": ActuatorNone, "none": ActuatorNone, "kubernetes": ActuatorKubernetes, "local:/d/actuator.sock": ActuatorLocal} {
		if k, _, err := parseActuator(spec); err != nil || k != want {
			t.Errorf("parseActuator(%q) = %q, %v; want %q", spec, k, err, want)
		}
	}
	for _, bad := range []string{"local:", "k8s", "local"} {
		if _, _, err := parseActuator(bad); err == nil {
			t.Errorf("parseActuator(%q) accepted", bad)
		}
	}
	m, err := ParseDeployments("worker=w, store=s")
	if err != nil || m["worker"] != "w" || m["store"] != "s" {
		t.Fatalf("ParseDeployments: %v %v", m, err)
	}
	if _, err := ParseDeployments("worker"); err == nil {
		t.Fatal("ParseDeployments accepted a pair without =")
	}
}

func TestKubeActuatorScaleDownSteersVictims(t *testing.T) {
	ctx := context.Background()
	cs, a := newFakeKube(t)
	// A cost left on worker-a by an earlier scale-down that never happened.
	pa, err := cs.CoreV1().Pods("erlmcp").Get(ctx, "erlmcp-worker-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pa.Annotations = map[string]string{deletionCost: "-1", "keep": "me"}
	if _, err := cs.CoreV1().Pods("erlmcp").Update(ctx, pa, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// 2 -> 1: only the first of removeFirst is marked.
	if err := a.Scale(ctx, "worker", 1, []string{"erlmcp-worker-b", "erlmcp-worker-a"}); err != nil {
		t.Fatal(err)
	}
	ann := func(name string) map[string]string {
		p, err := cs.CoreV1().Pods("erlmcp").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Annotations
	}
	if got := ann("erlmcp-worker-b")[deletionCost]; got != "-1" {
		t.Fatalf("worker-b deletion cost %q, want -1 (removed first)", got)
	}
	if got, ok := ann("erlmcp-worker-a")[deletionCost]; ok || ann("erlmcp-worker-a")["keep"] != "me" {
		t.Fatalf("worker-a annotations %v: the stale cost %q must go and other annotations stay", ann("erlmcp-worker-a"), got)
	}
	if _, ok := ann("erlmcp-store-0")[deletionCost]; ok {
		t.Fatal("a pod of another pool was marked")
	}
	sc, err := cs.AppsV1().Deployments("erlmcp").GetScale(ctx, "erlmcp-worker", metav1.GetOptions{})
	if err != nil || sc.Spec.Replicas != 1 {
		t.Fatalf("replicas %v, %v: want 1", sc, err)
	}

	// Without pods patch rights the scale-down is not done blind: a clear
	// error naming the permission, and the replicas stay.
	cs.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(corev1.Resource("pods"), "erlmcp-worker-a", errors.New("no patch"))
	})
	err = a.Scale(ctx, "worker", 0, []string{"erlmcp-worker-a"})
	if err == nil || !strings.Contains(err.Error(), "needs pods patch") {
		t.Fatalf("scale without patch rights: %v", err)
	}
	if sc, _ := cs.AppsV1().Deployments("erlmcp").GetScale(ctx, "erlmcp-worker", metav1.GetOptions{}); sc.Spec.Replicas != 1 {
		t.Fatalf("replicas %d after a refused steer, want 1", sc.Spec.Replicas)
	}
}
