// Command erlmcp serves MCP servers with high availability. One binary
// holds every role; see `erlmcp help`.
//
// Exit codes, for scripts:
//
//	0  success
//	1  the command ran and failed (a dependency unreachable, a process died)
//	2  bad usage or configuration (the message says what to change)
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// command is one subcommand. run blocks until the command is done or ctx
// (cancelled on SIGINT/SIGTERM) ends, and returns the exit code.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() map[string]command {
	return map[string]command{
		"up":           {"run a whole local cluster (embedded etcd, control planes, store nodes, workers, front)", cmdUp},
		"worker":       {"run an MCP worker (Streamable HTTP on /mcp)", cmdWorker},
		"store":        {"run a session store node (gRPC)", cmdStore},
		"controlplane": {"run a control-plane instance (election, placement, admin API)", cmdControlPlane},
		"front":        {"run the etcd-aware HTTP front that spreads MCP traffic over workers", cmdFront},
		"etcd":         {"run an embedded etcd member", cmdEtcd},
		"ctl":          {"talk to the control plane's admin API", cmdCtl},
		"loadtest":     {"MCP load driver: latency, errors and per-session continuity against an MCP URL", cmdLoadtest},
		"capacity":     {"plan workers and store nodes per region for an observed load", cmdCapacity},
		"dr":           {"disaster recovery: health check, region switch, backup and restore of etcd and the store", cmdDR},
		"version":      {"print the version", cmdVersion},
	}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout, cmds)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "erlmcp: unknown command %q\n\n", args[0])
		usage(stderr, cmds)
		return exitUsage
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "erlmcp serves MCP servers with high availability.")
	fmt.Fprintln(w, "\nUsage: erlmcp <command> [flags]    (erlmcp <command> --help for its flags)\n\nCommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-13s %s\n", n, cmds[n].summary)
	}
}

func cmdVersion(_ context.Context, _ []string, stdout, _ io.Writer) int {
	fmt.Fprintln(stdout, "erlmcp", version)
	return exitOK
}
