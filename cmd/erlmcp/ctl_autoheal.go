package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/erlmcp/erlmcp/controlplane"
)

// ctlAutoheal is `ctl autoheal [status|pause|resume]`.
func ctlAutoheal(ctx context.Context, urls []string, token string, opts ctlOptions, stdout io.Writer) error {
	action := "status"
	if len(opts.args) == 1 {
		action = opts.args[0]
	}
	var v controlplane.AutohealView
	var err error
	if action == "status" {
		err = adminGet(ctx, urls, token, "/v1/autoheal", &v)
	} else {
		err = adminPost(ctx, urls, token, "/v1/autoheal/"+action, &v)
	}
	if err != nil {
		return err
	}
	if opts.json {
		return printJSON(stdout, v)
	}
	state := "active"
	if v.Paused {
		state = "paused"
	}
	fmt.Fprintf(stdout, "autoheal: %s", state)
	if !v.At.IsZero() {
		fmt.Fprintf(stdout, " since %s (%s)", v.At.Format(time.RFC3339), v.Reason)
	}
	fmt.Fprintf(stdout, "\nactuator: %s; heal enabled: %t; scale enabled: %t\n", dash(v.Actuator), v.HealEnabled, v.ScaleEnabled)
	if d := v.Desired; d != nil {
		fmt.Fprintf(stdout, "desired %s: %d (%s at %s: %s)\n", d.Pool, d.Count, d.Direction, d.At.Format(time.RFC3339), strings.Join(d.Reasons, "; "))
	}
	return nil
}
