// Package config binds command-line flags to ERLMCP_* environment variables
// and holds the settings every role shares.
//
// Precedence is flag, then environment variable, then default: a flag named
// "etcd-endpoints" is also read from ERLMCP_ETCD_ENDPOINTS when it was not
// given on the command line.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// EnvPrefix starts every environment variable erlmcp reads.
const EnvPrefix = "ERLMCP_"

// EnvName is the environment variable that backs the flag name.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// NewFlagSet returns a flag set for one subcommand whose usage text lists
// every flag with its environment variable and default. summary is printed
// under the usage line.
func NewFlagSet(name, summary string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: erlmcp %s [flags]\n\n%s\n\nFlags (each also read from the environment variable shown):\n", name, summary)
		fs.VisitAll(func(f *flag.Flag) {
			def := f.DefValue
			if def == "" {
				def = `""`
			}
			fmt.Fprintf(out, "  --%s  (%s, default %s)\n      %s\n", f.Name, EnvName(f.Name), def, f.Usage)
		})
	}
	return fs
}

// ErrHelp is returned by Parse when --help was asked for; callers exit 0.
var ErrHelp = flag.ErrHelp

// Parse parses args, then fills every flag not given on the command line
// from its environment variable (lookup is os.LookupEnv when nil). An
// environment value that does not parse is an error naming the variable.
func Parse(fs *flag.FlagSet, args []string, lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags start with --; see --help)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		v, ok := lookup(EnvName(f.Name))
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s=%q: %w", EnvName(f.Name), v, err))
		}
	})
	return errors.Join(errs...)
}

// Common holds the settings every role takes.
type Common struct {
	// ID names this process in membership; unique per role.
	ID string
	// EtcdEndpoints is a comma-separated list of etcd client URLs.
	EtcdEndpoints string
	// Prefix is the etcd key prefix, ending in "/".
	Prefix string
	Region string
	Zone   string
	// LeaseTTL is the membership lease; a dead process leaves membership
	// within LeaseTTL plus etcd's lease-check interval (0.5 s).
	LeaseTTL  time.Duration
	LogFormat string
	LogLevel  string
}

// DefaultCommon returns the defaults shared by every role.
func DefaultCommon() Common {
	host, _ := os.Hostname()
	return Common{
		ID:            host,
		EtcdEndpoints: "http://127.0.0.1:2379",
		Prefix:        "/erlmcp/",
		Region:        "local",
		Zone:          "local-a",
		LeaseTTL:      5 * time.Second,
		LogFormat:     "auto",
		LogLevel:      "info",
	}
}

// Register adds the common flags to fs, with c's values as defaults.
func (c *Common) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.ID, "id", c.ID, "member id of this process, unique within its role")
	fs.StringVar(&c.EtcdEndpoints, "etcd-endpoints", c.EtcdEndpoints, "comma-separated etcd client URLs")
	fs.StringVar(&c.Prefix, "etcd-prefix", c.Prefix, "etcd key prefix for all erlmcp keys")
	fs.StringVar(&c.Region, "region", c.Region, "region label of this process")
	fs.StringVar(&c.Zone, "zone", c.Zone, "zone label of this process")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", c.LeaseTTL, "membership lease TTL; a dead process leaves membership within about this long")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text, json, or auto (text on a terminal, json otherwise)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn, error")
}

// Endpoints splits EtcdEndpoints.
func (c Common) Endpoints() []string {
	var out []string
	for _, e := range strings.Split(c.EtcdEndpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// Validate reports the first setting that cannot work, saying what to change.
func (c Common) Validate() error {
	switch {
	case c.ID == "":
		return errors.New("--id is empty: give each process a member id")
	case strings.ContainsAny(c.ID, "/ \t\n"):
		return fmt.Errorf("--id %q: must not contain '/' or white space", c.ID)
	case len(c.Endpoints()) == 0:
		return errors.New("--etcd-endpoints is empty: give at least one etcd client URL")
	case !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/"):
		return fmt.Errorf("--etcd-prefix %q: must start and end with '/'", c.Prefix)
	case c.Region == "" || c.Zone == "":
		return errors.New("--region and --zone must not be empty")
	case c.LeaseTTL < 2*time.Second:
		return fmt.Errorf("--lease-ttl %s: must be at least 2s (etcd grants no shorter lease with default timing)", c.LeaseTTL)
	}
	switch c.LogFormat {
	case "text", "json", "auto":
	default:
		return fmt.Errorf("--log-format %q: want text, json or auto", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "warning", "error":
	default:
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	return nil
}
