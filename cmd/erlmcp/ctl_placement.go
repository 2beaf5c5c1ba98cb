package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"time"

	"github.com/erlmcp/erlmcp/controlplane"
)

// ctlPlacementAction carries out placement, drain, undrain and move-leader
// (arguments checked by runCtl).
func ctlPlacementAction(ctx context.Context, urls []string, token, name string, opts ctlOptions, stdout io.Writer) error {
	switch name {
	case "placement":
		var st controlplane.PlacementState
		var err error
		if len(opts.args) == 0 || opts.args[0] == "status" {
			err = adminGet(ctx, urls, token, "/v1/placement", &st)
		} else {
			err = adminPost(ctx, urls, token, "/v1/placement/"+opts.args[0], &st)
		}
		if err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, st)
		}
		state := "acting"
		if st.Paused {
			state = "paused"
		}
		fmt.Fprintf(stdout, "placement %s (since %s: %s)\n", state, timeOrDash(st.At), dash(st.Reason))
		return nil
	case "drain", "undrain":
		var d controlplane.DrainDoc
		if err := adminPost(ctx, urls, token, "/v1/nodes/"+url.PathEscape(opts.args[0])+"/"+name, &d); err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, d)
		}
		if name == "drain" {
			fmt.Fprintf(stdout, "store %s draining (%s); watch erlmcp ctl ops and shards\n", d.Store, d.Reason)
		} else {
			fmt.Fprintf(stdout, "store %s no longer drained\n", opts.args[0])
		}
		return nil
	default: // move-leader
		shard, err := strconv.Atoi(opts.args[0])
		if err != nil || shard < 0 {
			return failf(exitUsage, "shard %q: want a shard number (erlmcp ctl shards lists them)", opts.args[0])
		}
		var doc controlplane.ShardDoc
		path := fmt.Sprintf("/v1/shards/%d/leader?store=%s", shard, url.QueryEscape(opts.args[1]))
		if err := adminPost(ctx, urls, token, path, &doc); err != nil {
			return err
		}
		if opts.json {
			return printJSON(stdout, doc)
		}
		fmt.Fprintf(stdout, "shard %03d: preferred leader %s (was led by %s) at %s\n", shard, doc.TargetLeader, dash(doc.Leader), time.Now().UTC().Format(time.RFC3339))
		return nil
	}
}
