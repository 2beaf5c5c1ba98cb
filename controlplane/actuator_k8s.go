package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	appsv1client "k8s.io/client-go/kubernetes/typed/apps/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
)

// KubeConfig tunes the Kubernetes actuator.
type KubeConfig struct {
	// Namespace the cluster runs in; empty means the pod's own namespace
	// (the service account's namespace file).
	Namespace string
	// Deployments maps a pool to its Deployment, e.g. worker=erlmcp-worker.
	Deployments map[string]string
}

// DefaultKubeConfig: the worker pool is Deployment erlmcp-worker.
func DefaultKubeConfig() KubeConfig {
	return KubeConfig{Deployments: map[string]string{"worker": "erlmcp-worker"}}
}

// ParseDeployments reads pool=deployment pairs separated by commas.
func ParseDeployments(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		pool, dep, ok := strings.Cut(kv, "=")
		if !ok || pool == "" || dep == "" {
			return nil, fmt.Errorf("--kube-deployments %q: want pool=deployment[,pool=deployment]", s)
		}
		out[pool] = dep
	}
	return out, nil
}

const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// kubeActuator deletes pods (their ReplicaSet or StatefulSet makes new
// ones) and scales Deployments through the scale subresource. It needs the
// RBAC of deploy/: pods get/list/delete/patch, deployments get,
// deployments/scale get/update.
//
// Only the apps/v1 and core/v1 clients are used (not the whole clientset),
// which keeps the binary and its build much smaller.
type kubeActuator struct {
	apps        appsv1client.AppsV1Interface
	core        corev1client.CoreV1Interface
	namespace   string
	deployments map[string]string
}

func newKubeActuatorInCluster(cfg KubeConfig) (*kubeActuator, error) {
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes actuator: in-cluster config (is this running in a pod with a service account?): %w", err)
	}
	apps, err := appsv1client.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes actuator: apps/v1 client: %w", err)
	}
	core, err := corev1client.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes actuator: core/v1 client: %w", err)
	}
	ns := cfg.Namespace
	if ns == "" {
		b, err := os.ReadFile(serviceAccountNamespace)
		if err != nil {
			return nil, fmt.Errorf("kubernetes actuator: no --kube-namespace and cannot read the pod's namespace: %w", err)
		}
		ns = strings.TrimSpace(string(b))
	}
	return newKubeActuator(apps, core, ns, cfg.Deployments), nil
}

func newKubeActuator(apps appsv1client.AppsV1Interface, core corev1client.CoreV1Interface, namespace string, deployments map[string]string) *kubeActuator {
	return &kubeActuator{apps: apps, core: core, namespace: namespace, deployments: deployments}
}

func (a *kubeActuator) Name() string { return ActuatorKubernetes }

func (a *kubeActuator) deployment(pool string) (string, error) {
	d, ok := a.deployments[pool]
	if !ok {
		return "", fmt.Errorf("kubernetes actuator: no Deployment for pool %q (see --kube-deployments)", pool)
	}
	return d, nil
}

// pods lists the live pods (not being deleted) the pool's Deployment
// selects.
func (a *kubeActuator) pods(ctx context.Context, pool string) ([]corev1.Pod, error) {
	name, err := a.deployment(pool)
	if err != nil {
		return nil, err
	}
	d, err := a.apps.Deployments(a.namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubernetes actuator: get deployment %s/%s: %w", a.namespace, name, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("kubernetes actuator: deployment %s selector: %w", name, err)
	}
	list, err := a.core.Pods(a.namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("kubernetes actuator: list pods of %s: %w", name, err)
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// Processes lists the pods the pool's Deployment selects.
func (a *kubeActuator) Processes(ctx context.Context, pool string) ([]Process, error) {
	pods, err := a.pods(ctx, pool)
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, p := range pods {
		out = append(out, Process{Name: p.Name, Pool: pool, Running: p.Status.Phase == corev1.PodRunning})
	}
	return out, nil
}

// Restart deletes the pod; a pod already gone counts as done.
func (a *kubeActuator) Restart(ctx context.Context, name string) error {
	err := a.core.Pods(a.namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("kubernetes actuator: delete pod %s/%s: %w", a.namespace, name, err)
	}
	return nil
}

// deletionCost is the annotation the ReplicaSet controller reads to choose
// which pods to remove when it scales down: lowest cost first (Kubernetes
// 1.22+, on by default).
const deletionCost = "controller.kubernetes.io/pod-deletion-cost"

// Scale writes the Deployment's replicas through the scale subresource.
// Going down, the first pods of removeFirst (the least loaded, chosen by the
// scaler) are annotated with a negative pod-deletion-cost first, so the
// ReplicaSet controller removes them and not busy ones; a cost left on
// another pod by an earlier scale-down is cleared. Each removed pod gets
// SIGTERM and drains within its termination grace period.
func (a *kubeActuator) Scale(ctx context.Context, pool string, n int, removeFirst []string) error {
	name, err := a.deployment(pool)
	if err != nil {
		return err
	}
	if n < 0 {
		return errors.New("kubernetes actuator: negative replica count")
	}
	deps := a.apps.Deployments(a.namespace)
	sc, err := deps.GetScale(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("kubernetes actuator: get scale of %s/%s: %w", a.namespace, name, err)
	}
	if sc.Spec.Replicas == int32(n) {
		return nil
	}
	if down := int(sc.Spec.Replicas) - n; down > 0 {
		if err := a.steerRemoval(ctx, pool, removeFirst[:min(down, len(removeFirst))]); err != nil {
			return err
		}
	}
	upd := &autoscalingv1.Scale{ObjectMeta: sc.ObjectMeta, Spec: autoscalingv1.ScaleSpec{Replicas: int32(n)}}
	if _, err := deps.UpdateScale(ctx, name, upd, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("kubernetes actuator: scale %s/%s to %d: %w", a.namespace, name, n, err)
	}
	return nil
}

// steerRemoval gives victims[0] the lowest deletion cost, victims[1] the
// next, and clears the cost of every other pod of the pool that has one.
func (a *kubeActuator) steerRemoval(ctx context.Context, pool string, victims []string) error {
	pods, err := a.pods(ctx, pool)
	if err != nil {
		return err
	}
	want := map[string]string{}
	for i, v := range victims {
		want[v] = strconv.Itoa(i - len(victims)) // -len .. -1
	}
	for _, p := range pods {
		cost, has := want[p.Name]
		old, had := p.Annotations[deletionCost]
		var patch string
		switch {
		case has && old != cost:
			patch = fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, deletionCost, cost)
		case !has && had:
			patch = fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, deletionCost)
		default:
			continue
		}
		_, err := a.core.Pods(a.namespace).Patch(ctx, p.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("kubernetes actuator: set %s on pod %s/%s (needs pods patch, see deploy/k8s/base/rbac.yaml): %w",
				deletionCost, a.namespace, p.Name, err)
		}
	}
	return nil
}
