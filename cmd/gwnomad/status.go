package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/gwnomad/gwnomad/internal/contract"
	"github.com/gwnomad/gwnomad/scheduler"
)

func init() {
	register(&command{
		name:    "status",
		summary: "one row per gateway node: allocation, node, ports, Nomad state, Consul checks, version, uptime",
		run:     runStatus,
	})
}

const statusUsage = `Usage: gwnomad status [-f gwnomad.toml] [-o text|json] [--lb-service gwnomad-lb] [--watch]

status shows the gateway cluster: one row per gateway node (allocation,
Nomad client, address and ports, Nomad state, Consul liveness and readiness,
job version, uptime) and the deployment in progress, if any (per task group
desired/placed/healthy/unhealthy), then the load balancers in front: every
gwnomad lb registered in Consul (--lb-service) whose routes send to this
cluster's gateway service, with its /healthz check. Run it to follow a
deploy that was detached or interrupted.

With --watch the status is shown again each time it changes (Nomad and
Consul blocking queries on what it reads: no polling) until Ctrl-C: on a
terminal the screen is redrawn; otherwise each table follows a "--- status
at <time>" line; with -o json, one JSON document per line and change.

Examples:
  gwnomad status -f gwnomad.toml
  gwnomad status -f gwnomad.toml -o json | jq '.nodes[] | {node, readiness}'
  gwnomad status -o json | jq '.load_balancers[] | {node, check}'
  gwnomad status -f gwnomad.toml --watch              # during a rollout, Ctrl-C to end
  gwnomad status --watch -o json | jq -c '{ready, count}'

Exit codes:
  0  every gateway node ([gateway] count) passes liveness and readiness
     (--watch: ended by Ctrl-C)
  1  fewer nodes are ready, or the job is not registered
  3  invalid input, spec or flags
  4  Nomad or Consul unreachable, or permission denied
`

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gwnomad status", flag.ContinueOnError)
	file := fs.String("f", "", "spec file (default: the embedded demo spec)")
	out := fs.String("o", "text", "output: text or json")
	lbService := fs.String("lb-service", contract.LBService, "Consul `service` the load balancers register as (lb.toml consul.service_name); \"\" to leave them out")
	watch := fs.Bool("watch", false, "show the status again on every change, until Ctrl-C")
	if code, ok := parseFlags(fs, args, statusUsage, stdout, stderr); !ok {
		return code
	}
	if *out != "text" && *out != "json" {
		fmt.Fprintf(stderr, "gwnomad status: -o %q: want text or json\n", *out)
		return exitInvalid
	}
	c, ok := loadClient(*file, "status", stderr)
	if !ok {
		return exitInvalid
	}
	if *watch {
		return watchStatus(ctx, c, *out, *lbService, stdout, stderr)
	}
	st, err := c.Status(ctx)
	if err != nil {
		return exitFor("status", c, err, stderr)
	}
	if *lbService != "" {
		st.LBService = *lbService
		if st.LoadBalancers, err = c.LoadBalancers(ctx, *lbService); err != nil {
			return exitFor("status", c, err, stderr)
		}
	}
	if *out == "json" {
		if err := st.WriteJSON(stdout); err != nil {
			fmt.Fprintf(stderr, "gwnomad status: %v\n", err)
			return exitFailed
		}
	} else {
		st.WriteText(stdout)
	}
	if !st.Registered || st.Ready < st.Count {
		return exitFailed
	}
	return exitOK
}

// watchStatus prints the status on every change until ctx ends (exit 0).
func watchStatus(ctx context.Context, c *scheduler.Client, format, lbService string, stdout, stderr io.Writer) int {
	tty := format == "text" && isTerminal(stdout)
	show := func(st *scheduler.Status) error {
		now := time.Now()
		switch {
		case format == "json":
			b, err := json.Marshal(st)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(stdout, "%s\n", b)
			return err
		case tty:
			// Home and clear, then the table: one screen, redrawn.
			var b bytes.Buffer
			fmt.Fprintf(&b, "\x1b[H\x1b[2Jgwnomad status --watch: as of %s (Ctrl-C to end)\n\n", now.Format("15:04:05"))
			st.WriteText(&b)
			_, err := stdout.Write(b.Bytes())
			return err
		}
		var b bytes.Buffer
		fmt.Fprintf(&b, "--- status at %s\n", now.Format(time.RFC3339))
		st.WriteText(&b)
		_, err := stdout.Write(b.Bytes())
		return err
	}
	onErr := func(err error) { fmt.Fprintf(stderr, "gwnomad status: %v (retrying)\n", err) }
	if err := c.Watch(ctx, lbService, show, onErr); err != nil {
		if ctx.Err() != nil {
			return exitOK
		}
		return exitFor("status", c, err, stderr)
	}
	return exitOK
}
