package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/erlmcp/erlmcp/controlplane"
	"github.com/erlmcp/erlmcp/internal/localcluster"
)

// clusterJSONName is the file in the data directory through which `erlmcp
// up` tells `erlmcp ctl` how to reach the local cluster (format:
// localcluster.ClusterFile).
const clusterJSONName = "cluster.json"

// Environment variables of the ctl global flags.
const (
	envAdminURL   = "ERLMCP_ADMIN_URL"
	envAdminToken = "ERLMCP_ADMIN_TOKEN"
	envDataDir    = "ERLMCP_DATA_DIR"
)

const ctlUsage = `Usage: erlmcp ctl [global flags] <command> [command flags]

Talks to the control plane's admin API (HTTP+JSON, bearer token). Any
control-plane instance answers, leader or standby. Without --admin-url, ctl
reads <data-dir>/cluster.json, which ` + "`erlmcp up`" + ` writes, for the admin URLs
and the token.

Commands:
  members   every member of every role and whether it answered a health
            probe within 1 s: ROLE ID ADDR REGION ZONE PID HEALTHY
  leader    the elected control-plane leader: ID ADMIN_ADDR
  cluster   the cluster's fixed settings and the shard map:
            SHARD REPLICAS LEADER EPOCH
  shards    every shard's replicas with role and lag:
            SHARD LEADER TARGET EPOCH REPLICAS
  regions   the regions: NAME ROLE STATE WEIGHT UPDATED
  history   failovers and failbacks, newest first:
            START KIND FROM TO OUTCOME DURATION REASON
  ops       placement operators in flight:
            ID SHARD KIND NEXT STEPS REASON
  region failover <name>
            make another region active instead of <name> (POST)
  region failback <name>
            make <name> the active region again (POST)
  autoheal [status|pause|resume]
            autoheal and scaling: paused or not, actuator, desired
            workers; pause/resume stop and restart their actions (POST)
  placement [status|pause|resume]
            whether placement acts; pause/resume its actions (POST)
  drain <store> / undrain <store>
            move every replica off a store node, or cancel (POST)
  move-leader <shard> <store>
            make <store> the preferred leader of <shard> (POST)
  dns zone|route53 <name> [ttl]
            DNS records for the active region's fronts (stdout)
  prometheus-targets
            file_sd targets for Prometheus from etcd membership
            (see erlmcp ctl prometheus-targets --help)
  deploy status|start|stop|traffic|release|gate
            the steps of a zero-downtime worker deploy on erlmcp up
            (see erlmcp ctl deploy help; scripts/zero-downtime-deploy.sh)

Global flags (also accepted after the command):
  --admin-url URLS  (env ERLMCP_ADMIN_URL)
      comma-separated admin API URLs (http://host:port), tried in order
      until one answers
  --token TOKEN  (env ERLMCP_ADMIN_TOKEN)
      admin bearer token; default: admin_token from cluster.json
  --data-dir DIR  (env ERLMCP_DATA_DIR, default ./.erlmcp)
      where ` + "`erlmcp up`" + ` keeps cluster.json

Command flags:
  --json    print the API's JSON instead of a table

Exit codes: 0 ok; 1 failed (no local cluster, admin API unreachable, token
rejected); 2 bad usage.
See ` + "`erlmcp ctl <command> --help`" + `.
`

var ctlCommands = map[string]string{
	"members":     "Lists every member of every role (worker, store, controlplane, front) from\netcd membership, each probed for health within 1 s: HTTP roles by\nGET /healthz, store nodes by the gRPC health service.\nColumns: ROLE ID ADDR REGION ZONE PID HEALTHY.",
	"leader":      "Shows the elected control-plane leader and its admin address.\nColumns: ID ADMIN_ADDR.",
	"cluster":     "Shows the cluster's fixed settings (shard count, replication factor,\ncreation time) and the shard map.\nColumns: SHARD REPLICAS LEADER EPOCH.",
	"shards":      "Shows every shard's replicas (store:role:lag; lag ? when the store has not\nreported it), its leader as reported by the stores, its preferred leader and\nconf epoch.\nColumns: SHARD LEADER TARGET EPOCH REPLICAS.",
	"regions":     "Shows the regions: role (primary, secondary, dr), state (active, standby,\nfailed) and weight.\nColumns: NAME ROLE STATE WEIGHT UPDATED.",
	"history":     "Shows region failovers and failbacks, newest first.\nColumns: START KIND FROM TO OUTCOME DURATION REASON.",
	"ops":         "Shows the placement operators in flight (raft replication mode).\nColumns: ID SHARD KIND NEXT STEPS REASON.",
	"dns":         "dns zone|route53 <name> [ttl]: DNS records for <name> that send clients to\nthe fronts of the active region(s), from the live region states and the\nfront members: a BIND zone fragment, or a Route 53 change batch (weighted\nrecords, one set per region; standby and failed regions get weight 0).\nNothing is sent to any DNS provider. Default ttl 60.",
	"autoheal":    "autoheal [status]: whether autoheal and scaling act (paused or not, since\nwhen and why), the actuator, and the worker pool's desired count and why.\nautoheal pause|resume: stop or restart their actions (the leader still\njudges health and computes decisions). Sent to the leader.",
	"placement":   "placement [status]: whether placement acts (paused by an operator or by the\nmass-expiry guard). placement pause|resume: stop or restart placement's\nactions (the leader still plans and reports under-replicated shards).",
	"drain":       "drain <store>: move every replica off a store node (add elsewhere, catch up,\npromote, remove) and its shards' leadership with them; undrain <store>\ncancels. Only store nodes: a worker drains itself on SIGTERM.",
	"undrain":     "undrain <store>: cancel a drain; placement may use the store again.",
	"move-leader": "move-leader <shard> <store>: make <store> the preferred leader of <shard>;\nthe shard's Raft leader hands over once it is a caught-up voter. Only a\nvoter in the active region can be asked for.",
	"region":      "region failover <name>: makes another region active instead of <name>\n(the best healthy one: primary, then secondary, then dr, then weight).\nregion failback <name>: makes <name> active again; the active region becomes\nstandby. Prints the history entry written. Sent to the leader (a standby\nredirects); retried while a leader change is in progress.",
}

// ctlOptions are the global flags.
type ctlOptions struct {
	adminURL, token, dataDir string
	json                     bool
	args                     []string // positional arguments (region)
}

func (o *ctlOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.adminURL, "admin-url", o.adminURL, "comma-separated admin API URLs, tried in order (env "+envAdminURL+")")
	fs.StringVar(&o.token, "token", o.token, "admin bearer token (env "+envAdminToken+"; default: admin_token from cluster.json)")
	fs.StringVar(&o.dataDir, "data-dir", o.dataDir, "directory holding cluster.json written by `erlmcp up` (env "+envDataDir+")")
}

// ctlError is a failure with its exit code.
type ctlError struct {
	code int
	msg  string
}

func (e *ctlError) Error() string { return e.msg }

func failf(code int, format string, a ...any) *ctlError {
	return &ctlError{code: code, msg: fmt.Sprintf(format, a...)}
}

// cmdCtl runs an admin client command.
func cmdCtl(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runCtl(ctx, args, stdout, stderr, os.LookupEnv)
}

func runCtl(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	opts := ctlOptions{dataDir: ".erlmcp"}
	set := map[string]bool{}

	gfs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	gfs.SetOutput(io.Discard)
	opts.register(gfs)
	if err := gfs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, ctlUsage)
			return exitOK
		}
		fmt.Fprintf(stderr, "erlmcp ctl: %v\n\n%s", err, ctlUsage)
		return exitUsage
	}
	gfs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	rest := gfs.Args()
	if len(rest) == 0 {
		fmt.Fprintf(stderr, "erlmcp ctl: no command given\n\n%s", ctlUsage)
		return exitUsage
	}
	name := rest[0]
	if name == "help" {
		fmt.Fprint(stdout, ctlUsage)
		return exitOK
	}
	if name == "deploy" { // ctl_deploy.go: etcd and up's local actuator
		return runCtlDeploy(ctx, rest[1:], opts.dataDir, set["data-dir"], stdout, stderr, lookup)
	}
	if name == "prometheus-targets" { // ctl_targets.go: reads etcd, not the admin API
		return runCtlTargets(ctx, rest[1:], opts.dataDir, set["data-dir"], stdout, stderr, lookup)
	}
	desc, ok := ctlCommands[name]
	if !ok {
		fmt.Fprintf(stderr, "erlmcp ctl: unknown command %q (want members, leader, cluster, shards, regions, history, ops, region, dns, autoheal, placement, drain, undrain or move-leader)\n\n%s", name, ctlUsage)
		return exitUsage
	}

	sfs := flag.NewFlagSet("ctl "+name, flag.ContinueOnError)
	sfs.SetOutput(io.Discard)
	opts.register(sfs)
	sfs.BoolVar(&opts.json, "json", false, "print the API's JSON instead of a table")
	subUsage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: erlmcp ctl %s [--json] [--admin-url URLS] [--token TOKEN] [--data-dir DIR]\n\n%s\n\nFlags:\n", name, desc)
		sfs.VisitAll(func(f *flag.Flag) {
			def := f.DefValue
			if f.Name == "token" && def != "" {
				def = "(set)"
			}
			if def == "" {
				def = `""`
			}
			fmt.Fprintf(w, "  --%s  (default %s)\n      %s\n", f.Name, def, f.Usage)
		})
		fmt.Fprintf(w, "\nWithout --admin-url, the admin URLs and token come from <data-dir>/%s.\nExit codes: 0 ok; 1 failed; 2 bad usage.\n", clusterJSONName)
	}
	var pos []string // positional arguments, flags allowed between them
	for args := rest[1:]; ; {
		if err := sfs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				subUsage(stdout)
				return exitOK
			}
			fmt.Fprintf(stderr, "erlmcp ctl %s: %v\n\n", name, err)
			subUsage(stderr)
			return exitUsage
		}
		if sfs.NArg() == 0 {
			break
		}
		pos = append(pos, sfs.Arg(0))
		args = sfs.Args()[1:]
	}
	if name == "region" {
		if len(pos) != 2 || pos[0] != "failover" && pos[0] != "failback" {
			fmt.Fprintf(stderr, "erlmcp ctl region: want `region failover <name>` or `region failback <name>`\n\n")
			subUsage(stderr)
			return exitUsage
		}
		opts.args = pos
	} else if name == "dns" {
		if len(pos) < 2 || len(pos) > 3 || pos[0] != "zone" && pos[0] != "route53" {
			fmt.Fprintf(stderr, "erlmcp ctl dns: want `dns zone <name> [ttl]` or `dns route53 <name> [ttl]`\n\n")
			subUsage(stderr)
			return exitUsage
		}
		opts.args = pos
	} else if n, ok := map[string]int{"placement": -1, "drain": 1, "undrain": 1, "move-leader": 2}[name]; ok {
		bad := len(pos) != n
		if n < 0 {
			bad = len(pos) > 1 || len(pos) == 1 && pos[0] != "status" && pos[0] != "pause" && pos[0] != "resume"
		}
		if bad {
			fmt.Fprintf(stderr, "erlmcp ctl %s: wrong arguments; see the usage below\n\n", name)
			subUsage(stderr)
			return exitUsage
		}
		opts.args = pos
	} else if name == "autoheal" {
		if len(pos) > 1 || len(pos) == 1 && pos[0] != "status" && pos[0] != "pause" && pos[0] != "resume" {
			fmt.Fprintf(stderr, "erlmcp ctl autoheal: want `autoheal [status]`, `autoheal pause` or `autoheal resume`\n\n")
			subUsage(stderr)
			return exitUsage
		}
		opts.args = pos
	} else if len(pos) > 0 {
		fmt.Fprintf(stderr, "erlmcp ctl %s: unexpected argument %q (flags start with --)\n\n", name, pos[0])
		subUsage(stderr)
		return exitUsage
	}
	sfs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for flagName, env := range map[string]string{"admin-url": envAdminURL, "token": envAdminToken, "data-dir": envDataDir} {
		if set[flagName] {
			continue
		}
		if v, ok := lookup(env); ok {
			switch flagName {
			case "admin-url":
				opts.adminURL = v
			case "token":
				opts.token = v
			case "data-dir":
				opts.dataDir = v
			}
		}
	}

	err := ctlRun(ctx, name, opts, stdout)
	if err == nil {
		return exitOK
	}
	var ce *ctlError
	if errors.As(err, &ce) {
		fmt.Fprintf(stderr, "erlmcp ctl %s: %s\n", name, ce.msg)
		return ce.code
	}
	fmt.Fprintf(stderr, "erlmcp ctl %s: %v\n", name, err)
	return exitFailure
}

// ctlTarget finds the admin URLs and the token.
func ctlTarget(opts ctlOptions) ([]string, string, error) {
	dir := opts.dataDir
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if opts.adminURL != "" {
		var urls []string
		for _, u := range strings.Split(opts.adminURL, ",") {
			if u = strings.TrimSpace(u); u != "" {
				urls = append(urls, u)
			}
		}
		if len(urls) == 0 {
			return nil, "", failf(exitUsage, "--admin-url %q names no URL", opts.adminURL)
		}
		token := opts.token
		if token == "" {
			if c, err := localcluster.ReadClusterFile(filepath.Join(dir, clusterJSONName)); err == nil {
				token = c.AdminToken
			}
		}
		if token == "" {
			return nil, "", failf(exitUsage, "no admin token: pass --token or set %s", envAdminToken)
		}
		return urls, token, nil
	}
	c, err := localcluster.ReadClusterFile(filepath.Join(dir, clusterJSONName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", failf(exitFailure, "no local cluster at %s (run `erlmcp up` there, or pass --admin-url and --token)", dir)
	}
	if err != nil {
		return nil, "", failf(exitFailure, "%v", err)
	}
	if len(c.AdminURLs) == 0 {
		return nil, "", failf(exitFailure, "%s lists no admin_urls; pass --admin-url", filepath.Join(dir, clusterJSONName))
	}
	token := opts.token
	if token == "" {
		token = c.AdminToken
	}
	if token == "" {
		return nil, "", failf(exitUsage, "no admin token in %s: pass --token or set %s", filepath.Join(dir, clusterJSONName), envAdminToken)
	}
	return c.AdminURLs, token, nil
}

// ctlRequestTimeout bounds one attempt at one admin URL.
const ctlRequestTimeout = 5 * time.Second

// adminGet GETs path from the first admin URL that answers and decodes
// the JSON answer into v. Unreachable URLs and 5xx answers move on to the
// next URL; a rejected token or another 4xx stops at once.
func adminGet(ctx context.Context, urls []string, token, path string, v any) error {
	var tried []string
	client := &http.Client{Timeout: ctlRequestTimeout}
	for _, u := range urls {
		base := strings.TrimSuffix(u, "/")
		if !strings.Contains(base, "://") {
			base = "http://" + base
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s (%v)", u, err))
			continue
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return failf(exitFailure, "interrupted: %v", ctx.Err())
			}
			tried = append(tried, fmt.Sprintf("%s (%v)", u, err))
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s (reading the answer: %v)", u, err))
			continue
		}
		msg := apiErrorMessage(body)
		switch {
		case resp.StatusCode == http.StatusUnauthorized:
			return failf(exitFailure, "the admin API at %s rejected the token (401: %s); check --token, %s or the data dir's %s", u, msg, envAdminToken, clusterJSONName)
		case resp.StatusCode >= 500:
			tried = append(tried, fmt.Sprintf("%s (HTTP %d: %s)", u, resp.StatusCode, msg))
			continue
		case resp.StatusCode != http.StatusOK:
			return failf(exitFailure, "the admin API at %s answered HTTP %d: %s", u, resp.StatusCode, msg)
		}
		if err := json.Unmarshal(body, v); err != nil {
			return failf(exitFailure, "the admin API at %s answered with JSON ctl does not understand: %v", u, err)
		}
		return nil
	}
	return failf(exitFailure, "no control-plane admin API answered; tried %s", strings.Join(tried, "; "))
}

// adminPost POSTs path to the leader: it follows a standby's 307 to the
// leader's admin URL (with the token), tries the next URL when one is
// unreachable, and retries for a few seconds while the answer is a
// retryable 503 (leader change). 4xx answers (unknown region, conflict)
// stop at once.
func adminPost(ctx context.Context, urls []string, token, path string, v any) error {
	client := &http.Client{Timeout: ctlRequestTimeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var tried []string
	deadline := time.Now().Add(10 * time.Second)
	for round := 0; ; round++ {
		retry := false
		for _, u := range urls {
			base := strings.TrimSuffix(u, "/")
			if !strings.Contains(base, "://") {
				base = "http://" + base
			}
			target := base + path
			for hop := 0; hop < 3; hop++ {
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, nil)
				if err != nil {
					return failf(exitUsage, "%v", err)
				}
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() != nil {
						return failf(exitFailure, "interrupted: %v", ctx.Err())
					}
					tried = append(tried, fmt.Sprintf("%s (%v)", target, err))
					break
				}
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
				resp.Body.Close()
				msg := apiErrorMessage(body)
				switch {
				case resp.StatusCode == http.StatusTemporaryRedirect && resp.Header.Get("Location") != "":
					target = resp.Header.Get("Location")
					continue
				case resp.StatusCode == http.StatusOK:
					if err := json.Unmarshal(body, v); err != nil {
						return failf(exitFailure, "the admin API at %s answered with JSON ctl does not understand: %v", target, err)
					}
					return nil
				case resp.StatusCode == http.StatusUnauthorized:
					return failf(exitFailure, "the admin API at %s rejected the token (401: %s)", target, msg)
				case resp.StatusCode == http.StatusServiceUnavailable:
					retry = retry || resp.Header.Get("Retry-After") != ""
					tried = append(tried, fmt.Sprintf("%s (HTTP 503: %s)", target, msg))
				case resp.StatusCode >= 500:
					tried = append(tried, fmt.Sprintf("%s (HTTP %d: %s)", target, resp.StatusCode, msg))
				default:
					return failf(exitFailure, "HTTP %d: %s", resp.StatusCode, msg)
				}
				break
			}
		}
		if !retry || time.Now().After(deadline) {
			return failf(exitFailure, "no control-plane leader took the request; tried %s", strings.Join(tried, "; "))
		}
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return failf(exitFailure, "interrupted: %v", ctx.Err())
		case <-t.C:
		}
	}
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func apiErrorMessage(body []byte) string {
	var eb controlplane.ErrorBody
	if json.Unmarshal(body, &eb) == nil && eb.Error != "" {
		return eb.Error
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	if s == "" {
		s = "no message"
	}
	return s
}

func ctlRun(ctx context.Context, name string, opts ctlOptions, stdout io.Writer) error {
	urls, token, err := ctlTarget(opts)
	if err != nil {
		return err
	}
	switch name {
	case "dns":
		return ctlDNS(ctx, urls, token, opts.args, stdout)
	case "members":
		var ms []controlplane.MemberStatus
		if err := adminGet(ctx, urls, token, "/v1/members", &ms); err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, ms)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ROLE\tID\tADDR\tREGION\tZONE\tPID\tHEALTHY")
		for _, m := range ms {
			healthy := "yes"
			if !m.Healthy {
				healthy = "no"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", m.Role, m.ID, dash(m.Addr), dash(m.Region), dash(m.Zone), m.PID, healthy)
		}
		return tw.Flush()
	case "leader":
		var li controlplane.LeaderInfo
		if err := adminGet(ctx, urls, token, "/v1/leader", &li); err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, li)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tADMIN_ADDR")
		fmt.Fprintf(tw, "%s\t%s\n", li.ID, dash(li.AdminAddr))
		return tw.Flush()
	case "cluster":
		var cv controlplane.ClusterView
		if err := adminGet(ctx, urls, token, "/v1/cluster", &cv); err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, cv)
		}
		return printCluster(stdout, cv)
	case "shards":
		var ss []controlplane.ShardView
		if err := adminGet(ctx, urls, token, "/v1/shards", &ss); err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, ss)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SHARD\tLEADER\tTARGET\tEPOCH\tREPLICAS")
		for _, s := range ss {
			var reps []string
			for _, r := range s.Replicas {
				lag := "?"
				if r.Lag != nil {
					lag = fmt.Sprint(*r.Lag)
				}
				reps = append(reps, r.Store+":"+r.Role+":"+lag)
			}
			fmt.Fprintf(tw, "%03d\t%s\t%s\t%d\t%s\n", s.Shard, dash(s.Leader), dash(s.TargetLeader), s.ConfEpoch, dash(strings.Join(reps, ",")))
		}
		return tw.Flush()
	case "regions":
		var rs []controlplane.RegionDoc
		if err := adminGet(ctx, urls, token, "/v1/regions", &rs); err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, rs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tSTATE\tWEIGHT\tUPDATED")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", r.Name, dash(r.Role), dash(r.State), r.Weight, timeOrDash(r.Updated))
		}
		return tw.Flush()
	case "history":
		var hs []controlplane.HistoryEntry
		if err := adminGet(ctx, urls, token, "/v1/history", &hs); err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, hs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "START\tKIND\tFROM\tTO\tOUTCOME\tDURATION\tREASON")
		for _, h := range hs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", timeOrDash(h.Start), h.Kind, dash(h.From), dash(h.To), h.Outcome,
				h.End.Sub(h.Start).Round(time.Millisecond), h.Reason)
		}
		return tw.Flush()
	case "ops":
		var ops []controlplane.Operator
		if err := adminGet(ctx, urls, token, "/v1/ops", &ops); err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, ops)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSHARD\tKIND\tNEXT\tSTEPS\tREASON")
		for _, o := range ops {
			var steps []string
			for _, s := range o.Steps {
				mark := " "
				if s.Done {
					mark = "✓"
				}
				steps = append(steps, mark+string(s.Kind)+"("+s.Store+")")
			}
			fmt.Fprintf(tw, "%s\t%03d\t%s\t%d\t%s\t%s\n", o.ID, o.Shard, o.Kind, o.Next(), strings.Join(steps, " "), o.Reason)
		}
		return tw.Flush()
	case "autoheal":
		return ctlAutoheal(ctx, urls, token, opts, stdout)
	case "placement", "drain", "undrain", "move-leader":
		return ctlPlacementAction(ctx, urls, token, name, opts, stdout)
	case "region":
		var h controlplane.HistoryEntry
		path := "/v1/regions/" + url.PathEscape(opts.args[1]) + "/" + opts.args[0]
		if err := adminPost(ctx, urls, token, path, &h); err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, h)
		}
		fmt.Fprintf(stdout, "%s: active region %s → %s (%s, %s)\n", h.Kind, dash(h.From), dash(h.To), h.Outcome, h.End.Sub(h.Start).Round(time.Millisecond))
		return nil
	}
	return failf(exitUsage, "unknown command %q", name)
}

func printCluster(w io.Writer, cv controlplane.ClusterView) error {
	if cv.Config == nil {
		fmt.Fprintln(w, "cluster not created yet: no control-plane leader has written config/cluster")
	} else {
		placed := 0
		for _, s := range cv.Shards {
			if len(s.Replicas) > 0 {
				placed++
			}
		}
		fmt.Fprintf(w, "shard count %d, replication factor %d, created %s; %d of %d shards placed\n\n",
			cv.Config.ShardCount, cv.Config.ReplicationFactor, cv.Config.CreatedAt.Format(time.RFC3339), placed, cv.Config.ShardCount)
	}
	if len(cv.Shards) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tREPLICAS\tLEADER\tEPOCH")
	for _, s := range cv.Shards {
		var reps []string
		for _, r := range s.Replicas {
			reps = append(reps, r.Store+"("+r.Role+")")
		}
		fmt.Fprintf(tw, "%03d\t%s\t%s\t%d\n", s.Shard, dash(strings.Join(reps, ",")), dash(s.Leader), s.ConfEpoch)
	}
	return tw.Flush()
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
