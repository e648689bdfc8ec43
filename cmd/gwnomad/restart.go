package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gwnomad/gwnomad/internal/contract"
	"github.com/gwnomad/gwnomad/scheduler"
)

func init() {
	register(&command{
		name:    "restart",
		summary: "restart the gateways in place, node by node, each out of the load balancers until it is ready again",
		run:     runRestart,
	})
}

const restartUsage = `Usage: gwnomad restart [-f gwnomad.toml] [--node NODE]... [--timeout DURATION]
                       [--lb-service gwnomad-lb] [-o text|json]

restart restarts the running gateways in place (Nomad's allocation restart:
same allocation, job version, ports and node; no new job version), one node
at a time ([update] max_parallel at a time, never every node), so that no
request through the load balancers fails:

  1. checks: Nomad and Consul answer, the job runs and no deployment is in
     progress, each node's Consul agent and every load balancer registered
     as --lb-service (with /healthz passing) can be reached; nothing is
     touched before all of that holds;
  2. for each node, after checking that every other node passes both checks:
     a. drain: its service instance goes into Consul maintenance mode on the
        node's Consul agent; restart waits until no load balancer routes to
        it any more (their /routes) and at least [gateway] shutdown_delay;
     b. restart: Nomad restarts the gateway task in place;
     c. ready: the task runs again and Consul's liveness and readiness
        checks pass (within --timeout, else restart stops here and names
        the node, with its task events, check output and stderr);
     d. back: maintenance is lifted, and restart waits until every load
        balancer routes to it again, before the next node is touched.

The view is deploy's: a live board on a terminal, one line per change
otherwise, one JSON object per event with -o json (types preflight, drain,
restart, node, routed, explain, interrupted, message, summary; error last
when it fails).

Ctrl-C finishes the node in progress, then stops: a node being drained is
put back without a restart, a node already restarted is waited for until it
is ready and routed again. The nodes not restarted are named.

Flags:
  -f FILE          spec file (default: the embedded demo spec)
  --node NODE      restart only this Nomad client's gateway (repeatable;
                   default: every node, in the order of their names)
  --timeout D      per node, how long the drain and the return to service
                   may take (default: [update] healthy_deadline)
  --lb-service S   Consul service the load balancers register as (lb.toml
                   consul.service_name, default gwnomad-lb); "" waits for
                   Consul's view only
  -o text|json     output: text (default) or JSON events, one per line

Examples:
  gwnomad restart -f gwnomad.toml
  gwnomad restart -f gwnomad.toml --node nomad-client-2
  gwnomad restart -f gwnomad.toml -o json | jq -c 'select(.type=="routed")'

Exit codes:
  0  every node restarted, ready and routed again
  1  a node did not come back ready within --timeout (named, with why), a
     load balancer kept routing to a drained node, Nomad refused the
     restart, a node outside the batch is not ready, or interrupted
     (Ctrl-C): the nodes restarted and not restarted are named
  3  invalid input, spec or flags (e.g. a --node that runs no gateway;
     nothing touched)
  4  Nomad, Consul, a node's Consul agent or a load balancer's admin
     listener unreachable, or permission denied
`

func runRestart(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gwnomad restart", flag.ContinueOnError)
	file := fs.String("f", "", "spec file (default: the embedded demo spec)")
	var nodes []string
	fs.Func("node", "restart only this Nomad client's gateway (repeatable)", func(v string) error {
		if strings.TrimSpace(v) == "" {
			return errors.New("empty node name")
		}
		nodes = append(nodes, v)
		return nil
	})
	timeout := fs.Duration("timeout", 0, "per node, how long the drain and the return may take (default: [update] healthy_deadline)")
	lbService := fs.String("lb-service", contract.LBService, "Consul `service` the load balancers register as; \"\" for Consul's view only")
	out := fs.String("o", "text", "output: text or json")
	if code, ok := parseFlags(fs, args, restartUsage, stdout, stderr); !ok {
		return code
	}
	if *out != "text" && *out != "json" {
		fmt.Fprintf(stderr, "gwnomad restart: -o %q: want text or json\n", *out)
		return exitInvalid
	}
	if *timeout < 0 {
		fmt.Fprintf(stderr, "gwnomad restart: --timeout %s: must not be negative\n", *timeout)
		return exitInvalid
	}
	c, ok := loadClient(*file, "restart", stderr)
	if !ok {
		return exitInvalid
	}
	rep := reporter(*out, stdout)
	_, err := c.Restart(ctx, scheduler.RestartOptions{Nodes: nodes, Timeout: *timeout, LBService: *lbService, Report: rep})
	code := exitFor("restart", c, err, stderr)
	var re *scheduler.RestartError
	if errors.As(err, &re) {
		for _, l := range re.Explanation {
			fmt.Fprintln(stderr, "  "+l)
		}
		if re.Interrupted {
			fmt.Fprintln(stderr, "Interrupted: the node in progress was finished; the others were not touched.")
		}
	}
	if err != nil && *out == "json" { // the last line of the stream says how it ended
		rep.Report(scheduler.Event{Time: time.Now(), Type: scheduler.EventError, Message: err.Error(), Lines: []string{fmt.Sprintf("exit %d", code)}})
	}
	return code
}
