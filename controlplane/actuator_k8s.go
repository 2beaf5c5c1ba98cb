package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
// RBAC of deploy/: pods get/list/delete, deployments get, deployments/scale
// get/update.
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

// Processes lists the pods the pool's Deployment selects.
func (a *kubeActuator) Processes(ctx context.Context, pool string) ([]Process, error) {
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
	pods, err := a.core.Pods(a.namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("kubernetes actuator: list pods of %s: %w", name, err)
	}
	var out []Process
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue // already going away
		}
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

// Scale writes the Deployment's replicas through the scale subresource.
// The ReplicaSet controller picks the pods to remove; each gets SIGTERM
// and drains within its termination grace period. removeFirst is not used:
// steering the choice would need pod patch rights the RBAC does not grant.
func (a *kubeActuator) Scale(ctx context.Context, pool string, n int, _ []string) error {
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
	upd := &autoscalingv1.Scale{ObjectMeta: sc.ObjectMeta, Spec: autoscalingv1.ScaleSpec{Replicas: int32(n)}}
	if _, err := deps.UpdateScale(ctx, name, upd, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("kubernetes actuator: scale %s/%s to %d: %w", a.namespace, name, n, err)
	}
	return nil
}
