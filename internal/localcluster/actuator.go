package localcluster

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/erlmcp/erlmcp/internal/localactuator"
	"github.com/erlmcp/erlmcp/internal/membership"
	"github.com/erlmcp/erlmcp/internal/supervisor"
	"github.com/sirupsen/logrus"
)

// ActuatorSocketPath is the local actuator's unix socket, which the
// control planes get as --actuator=local:<path>.
func (p Plan) ActuatorSocketPath() string { return p.path("actuator.sock") }

// actuatorUsable: a unix socket path must fit sun_path (108 bytes on
// Linux, 104 on BSDs); a deeper data dir runs without the actuator.
func (p Plan) actuatorUsable() bool { return len(p.ActuatorSocketPath()) < 104 }

// ReleasesFilePath keeps the worker pool's release (the binary the last
// deploy set) across restarts of up.
func (p Plan) ReleasesFilePath() string { return p.path("releases.json") }

// serveActuator serves the local actuator for sup, or returns nil when it
// cannot be served (then autoheal and scaling have nothing to act through,
// and say so in their logs). A damaged releases file is an error: up does
// not start workers from a binary other than the one a deploy chose.
func serveActuator(plan Plan, cfg Config, exe string, env []string, token string, sup *supervisor.Supervisor, log *logrus.Entry) (*localactuator.Server, error) {
	log = log.WithField("component", "actuator")
	if !plan.actuatorUsable() {
		log.WithField("socket", plan.ActuatorSocketPath()).Warn("data dir path too long for a unix socket: no local actuator (autoheal and scaling cannot act)")
		return nil, nil
	}
	srv, err := localactuator.Serve(plan.ActuatorSocketPath(), token, sup, workerSpecFunc(plan, cfg, exe, env), plan.ReleasesFilePath(), log)
	if errors.Is(err, localactuator.ErrBadReleases) {
		return nil, err
	}
	if err != nil {
		log.WithError(err).Warn("no local actuator (autoheal, scaling and deploys cannot act)")
		return nil, nil
	}
	return srv, nil
}

// workerSpecFunc makes the spec of worker i: the planned worker's flags
// with its own id, region, zone and port (WorkerPortBase+i-1 when free and
// not planned for anything else, else a port the kernel picks; the
// worker registers the address it bound).
func workerSpecFunc(plan Plan, cfg Config, exe string, env []string) localactuator.SpecFunc {
	var tmpl []string
	for _, c := range plan.Children {
		if c.Role == membership.RoleWorker {
			tmpl = c.Args
			break
		}
	}
	planned := map[string]bool{}
	for _, pu := range plan.Ports {
		planned[pu.Addr] = true
	}
	return func(pool string, i int) (supervisor.Spec, error) {
		if pool != membership.RoleWorker || tmpl == nil {
			return supervisor.Spec{}, fmt.Errorf("pool %q cannot be scaled here: only worker", pool)
		}
		name := fmt.Sprintf("worker-%d", i)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.WorkerPortBase+i-1))
		if i > cfg.Workers && planned[addr] || !portFree(addr) {
			addr = "127.0.0.1:0"
		}
		region := Regions[(i-1)%len(Regions)]
		args := make([]string, 0, len(tmpl))
		for _, a := range tmpl {
			switch {
			case strings.HasPrefix(a, "--id="):
				a = "--id=" + name
			case strings.HasPrefix(a, "--listen="):
				a = "--listen=" + addr
			case strings.HasPrefix(a, "--region="):
				a = "--region=" + region
			case strings.HasPrefix(a, "--zone="):
				a = "--zone=" + region + "a"
			}
			args = append(args, a)
		}
		return supervisor.Spec{Name: name, Path: exe, Args: args, Env: env, LogPath: filepath.Join(plan.LogDir(), name+".log")}, nil
	}
}

func portFree(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}
