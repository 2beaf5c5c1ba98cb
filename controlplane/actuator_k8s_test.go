package controlplane

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
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
