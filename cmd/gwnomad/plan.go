package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/gwnomad/gwnomad/scheduler"
)

func init() {
	register(&command{
		name:    "plan",
		summary: "show what deploy would change (job diff and Consul KV), change nothing",
		run:     runPlan,
	})
}

const planUsage = `Usage: gwnomad plan [-f gwnomad.toml] [-o text|json]

plan prints what 'gwnomad deploy' would change, and changes nothing: Nomad's
plan of the job (diff, and what the scheduler would do per task group:
place, replace node by node, update in place) and the Consul KV values that
would be added, changed or deleted (secrets redacted). The same checks as
deploy run first: Nomad and Consul answer, enough client nodes have the host
volume.

Examples:
  gwnomad plan -f gwnomad.toml
  gwnomad plan -f gwnomad.toml -o json | jq .kv

Exit codes (the convention of 'nomad job plan'):
  0  no change
  1  changes to apply
  2  placement would fail: the constraint or the missing host volume is named
  3  invalid input, spec or flags
  4  Nomad or Consul unreachable, or permission denied
`

func runPlan(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gwnomad plan", flag.ContinueOnError)
	file := fs.String("f", "", "spec file (default: the embedded demo spec)")
	out := fs.String("o", "text", "output: text or json")
	if code, ok := parseFlags(fs, args, planUsage, stdout, stderr); !ok {
		return code
	}
	if *out != "text" && *out != "json" {
		fmt.Fprintf(stderr, "gwnomad plan: -o %q: want text or json\n", *out)
		return exitInvalid
	}
	c, ok := loadClient(*file, "plan", stderr)
	if !ok {
		return exitInvalid
	}
	if _, err := c.Preflight(ctx); err != nil {
		return exitFor("plan", c, err, stderr)
	}
	p, err := c.Plan(ctx)
	if err != nil {
		return exitFor("plan", c, err, stderr)
	}
	if *out == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(struct {
			*scheduler.Plan
			Changed bool `json:"changed"`
		}{p, p.Changed()}); err != nil {
			fmt.Fprintf(stderr, "gwnomad plan: %v\n", err)
			return exitFailed
		}
	} else {
		p.Write(stdout)
	}
	if len(p.Placement) > 0 {
		return exitFor("plan", c, &scheduler.PlacementError{Reasons: p.Placement}, stderr)
	}
	if p.Changed() {
		return exitFailed
	}
	return exitOK
}
