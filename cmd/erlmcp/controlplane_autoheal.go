package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/erlmcp/erlmcp/controlplane"
)

// registerAutohealFlags adds the actuator, autoheal and scaling flags of
// `erlmcp controlplane`; the two string flags it returns are parsed by
// applyAutohealFlags.
func registerAutohealFlags(fs *flag.FlagSet, cfg *controlplane.Config) (kubeDeps, roles *string) {
	fs.StringVar(&cfg.Actuator, "actuator", cfg.Actuator, "what carries out autoheal and scaling: none, kubernetes (in-cluster client-go), or local:<socket> (the actuator socket of erlmcp up, <data-dir>/actuator.sock)")
	fs.StringVar(&cfg.Kube.Namespace, "kube-namespace", cfg.Kube.Namespace, "kubernetes actuator: namespace of the pods and Deployments (default: the pod's own namespace)")
	var deps []string
	for p, d := range cfg.Kube.Deployments {
		deps = append(deps, p+"="+d)
	}
	kubeDeps = fs.String("kube-deployments", strings.Join(deps, ","), "kubernetes actuator: pool=Deployment pairs, comma separated")

	a := &cfg.Autoheal
	fs.BoolVar(&a.Enabled, "autoheal", a.Enabled, "restart unhealthy members through the actuator (leader only; needs --actuator)")
	roles = fs.String("autoheal-roles", strings.Join(a.Roles, ","), "roles autoheal restarts: worker and/or store, comma separated")
	fs.DurationVar(&a.Interval, "autoheal-interval", a.Interval, "time between autoheal rounds (probe, judge, act; also the scaling tick)")
	fs.DurationVar(&a.ProbeTimeout, "autoheal-probe-timeout", a.ProbeTimeout, "a member that accepts a connection but does not answer GET /healthz within this is stuck")
	fs.IntVar(&a.FailAfter, "autoheal-fail-after", a.FailAfter, "a member is unhealthy after this many failed rounds among the last --autoheal-window")
	fs.IntVar(&a.Window, "autoheal-window", a.Window, "rounds the autoheal judgement looks at")
	fs.Float64Var(&a.ErrorRate, "autoheal-error-rate", a.ErrorRate, "a round fails when more than this fraction of a worker's requests got a 5xx (over --scale-window)")
	fs.IntVar(&a.MinRequests, "autoheal-min-requests", a.MinRequests, "fewest requests in the window for the error rate to count")
	fs.DurationVar(&a.LeaseGrace, "autoheal-lease-grace", a.LeaseGrace, "a process the actuator runs that is not registered for this long has lost its lease and is restarted")
	fs.DurationVar(&a.StartGrace, "autoheal-start-grace", a.StartGrace, "probes of a new or just restarted member do not count for this long")
	fs.IntVar(&a.MaxAttempts, "autoheal-max-attempts", a.MaxAttempts, "most restarts of one member per --autoheal-attempt-window")
	fs.DurationVar(&a.AttemptWindow, "autoheal-attempt-window", a.AttemptWindow, "window of the restart budget; after it a member can be healed again")
	fs.DurationVar(&a.Backoff, "autoheal-backoff", a.Backoff, "wait before a member's second restart in the window, doubling for each further one")

	s := &cfg.Scale
	fs.BoolVar(&s.Enabled, "autoscale", s.Enabled, "scale the worker pool on load (leader only; needs --actuator)")
	fs.StringVar(&s.Pool, "scale-pool", s.Pool, "the pool scaled")
	fs.IntVar(&s.Min, "scale-min", s.Min, "fewest workers")
	fs.IntVar(&s.Max, "scale-max", s.Max, "most workers")
	fs.DurationVar(&s.Window, "scale-window", s.Window, "load rates are computed over this window of /metrics scrapes")
	fs.Float64Var(&s.UpRPS, "scale-up-rps", s.UpRPS, "grow when requests/s per worker exceed this (0: not a signal)")
	fs.Float64Var(&s.DownRPS, "scale-down-rps", s.DownRPS, "shrink only while requests/s per worker stay below this")
	fs.DurationVar(&s.UpP95, "scale-up-p95", s.UpP95, "grow when the pool's p95 latency exceeds this (0: not a signal)")
	fs.DurationVar(&s.DownP95, "scale-down-p95", s.DownP95, "shrink only while the p95 latency is below this")
	fs.Float64Var(&s.UpCPU, "scale-up-cpu", s.UpCPU, "grow when CPU cores per worker exceed this (0: not a signal)")
	fs.Float64Var(&s.DownCPU, "scale-down-cpu", s.DownCPU, "shrink only while CPU cores per worker stay below this")
	fs.Float64Var(&s.UpSessions, "scale-up-sessions", s.UpSessions, "grow when new sessions/s per worker exceed this (0: not a signal)")
	fs.Float64Var(&s.DownSessions, "scale-down-sessions", s.DownSessions, "shrink only while new sessions/s per worker stay below this")
	fs.DurationVar(&s.UpCooldown, "scale-up-cooldown", s.UpCooldown, "least time after a change before growing again")
	fs.DurationVar(&s.DownCooldown, "scale-down-cooldown", s.DownCooldown, "least time after a change before shrinking")
	return kubeDeps, roles
}

func applyAutohealFlags(cfg *controlplane.Config, kubeDeps, roles string) error {
	deps, err := controlplane.ParseDeployments(kubeDeps)
	if err != nil {
		return err
	}
	cfg.Kube.Deployments = deps
	cfg.Autoheal.Roles = nil
	for _, r := range strings.Split(roles, ",") {
		if r = strings.TrimSpace(r); r != "" {
			cfg.Autoheal.Roles = append(cfg.Autoheal.Roles, r)
		}
	}
	if cfg.Autoheal.Enabled && len(cfg.Autoheal.Roles) == 0 {
		return fmt.Errorf("--autoheal-roles is empty: name worker and/or store, or pass --autoheal=false")
	}
	return nil
}
