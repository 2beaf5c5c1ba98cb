package controlplane

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/erlmcp/erlmcp/internal/localactuator"
)

// Actuator carries out autoheal and scaling decisions on the processes
// that run the cluster's members. A member's id is its process name: the
// child name under `erlmcp up` (worker-2), the pod name on Kubernetes.
type Actuator interface {
	// Name says which actuator this is (local, kubernetes, none).
	Name() string
	// Processes lists the processes the actuator runs for pool (worker,
	// store): what should be running, whether or not it registered.
	Processes(ctx context.Context, pool string) ([]Process, error)
	// Restart replaces the named process (kill and start again, or delete
	// the pod so its controller makes a new one).
	Restart(ctx context.Context, name string) error
	// Scale makes pool run n processes. Going down, removeFirst names the
	// processes to stop first where the actuator can choose; every stopped
	// process gets SIGTERM and drains.
	Scale(ctx context.Context, pool string, n int, removeFirst []string) error
}

// Process is one process an actuator runs.
type Process struct {
	Name string `json:"name"`
	Pool string `json:"pool"`
	// Running is false while it is being (re)started: no pid, pod not
	// running yet.
	Running bool `json:"running"`
}

// ErrNoActuator is returned by the none actuator: nothing can be done.
var ErrNoActuator = errors.New("no actuator configured (--actuator=none)")

// Actuator kinds, as --actuator takes them.
const (
	ActuatorNone       = "none"
	ActuatorLocal      = "local"
	ActuatorKubernetes = "kubernetes"
)

// parseActuator splits --actuator into its kind and the local socket.
func parseActuator(spec string) (kind, socket string, err error) {
	switch {
	case spec == "" || spec == ActuatorNone:
		return ActuatorNone, "", nil
	case spec == ActuatorKubernetes:
		return ActuatorKubernetes, "", nil
	case strings.HasPrefix(spec, ActuatorLocal+":"):
		socket = strings.TrimPrefix(spec, ActuatorLocal+":")
		if socket == "" {
			return "", "", errors.New("--actuator local: needs the socket path: local:<data-dir>/actuator.sock")
		}
		return ActuatorLocal, socket, nil
	}
	return "", "", fmt.Errorf("--actuator %q: want none, kubernetes or local:<socket path>", spec)
}

// newActuator builds the actuator cfg names.
func newActuator(cfg Config, token string) (Actuator, error) {
	kind, socket, err := parseActuator(cfg.Actuator)
	if err != nil {
		return nil, err
	}
	switch kind {
	case ActuatorLocal:
		return &localActuator{c: localactuator.NewClient(socket, token)}, nil
	case ActuatorKubernetes:
		return newKubeActuatorInCluster(cfg.Kube)
	}
	return noneActuator{}, nil
}

type noneActuator struct{}

func (noneActuator) Name() string { return ActuatorNone }
func (noneActuator) Processes(context.Context, string) ([]Process, error) {
	return nil, ErrNoActuator
}
func (noneActuator) Restart(context.Context, string) error { return ErrNoActuator }
func (noneActuator) Scale(context.Context, string, int, []string) error {
	return ErrNoActuator
}

// localActuator drives the supervisor of `erlmcp up` through its socket.
type localActuator struct {
	c *localactuator.Client
}

func (a *localActuator) Name() string { return ActuatorLocal }

func (a *localActuator) Processes(ctx context.Context, pool string) ([]Process, error) {
	ps, err := a.c.Processes(ctx, pool)
	if err != nil {
		return nil, err
	}
	out := make([]Process, 0, len(ps))
	for _, p := range ps {
		out = append(out, Process{Name: p.Name, Pool: p.Pool, Running: p.PID != 0})
	}
	return out, nil
}

func (a *localActuator) Restart(ctx context.Context, name string) error {
	return a.c.Restart(ctx, name)
}

func (a *localActuator) Scale(ctx context.Context, pool string, n int, removeFirst []string) error {
	_, err := a.c.Scale(ctx, localactuator.ScaleRequest{Pool: pool, Count: n, RemoveFirst: removeFirst})
	return err
}
