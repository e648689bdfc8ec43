package main

import (
	"context"
	"flag"
	"fmt"
	"io"
)

func init() {
	register(&command{
		name:    "status",
		summary: "one row per gateway node: allocation, node, ports, Nomad state, Consul checks, version, uptime",
		run:     runStatus,
	})
}

const statusUsage = `Usage: gwnomad status [-f gwnomad.toml] [-o text|json] [--lb-service gwnomad-lb]

status shows the gateway cluster: one row per gateway node (allocation,
Nomad client, address and ports, Nomad state, Consul liveness and readiness,
job version, uptime) and the deployment in progress, if any (per task group
desired/placed/healthy/unhealthy), then the load balancers in front: every
gwnomad lb registered in Consul (--lb-service) whose routes send to this
cluster's gateway service, with its /healthz check. Run it to follow a
deploy that was detached or interrupted.

Examples:
  gwnomad status -f gwnomad.toml
  gwnomad status -f gwnomad.toml -o json | jq '.nodes[] | {node, readiness}'
  gwnomad status -o json | jq '.load_balancers[] | {node, check}'

Exit codes:
  0  every gateway node ([gateway] count) passes liveness and readiness
  1  fewer nodes are ready, or the job is not registered
  3  invalid input, spec or flags
  4  Nomad or Consul unreachable, or permission denied
`

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gwnomad status", flag.ContinueOnError)
	file := fs.String("f", "", "spec file (default: the embedded demo spec)")
	out := fs.String("o", "text", "output: text or json")
	lbService := fs.String("lb-service", "gwnomad-lb", "Consul `service` the load balancers register as (lb.toml consul.service_name); \"\" to leave them out")
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
