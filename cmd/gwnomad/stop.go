package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/gwnomad/gwnomad/scheduler"
)

func init() {
	register(&command{
		name:    "stop",
		summary: "stop the gateway job (and with --purge delete its Consul KV values)",
		run:     runStop,
	})
}

const stopUsage = `Usage: gwnomad stop [-f gwnomad.toml] [--purge]

stop deregisters the gateway job and waits until none of its allocations
runs. The [config] values stay in Consul KV (gwnomad/<cluster>/), so that a
later deploy finds them; --purge also purges the job from Nomad and deletes
that KV folder.

Examples:
  gwnomad stop -f gwnomad.toml
  gwnomad stop -f gwnomad.toml --purge

Exit codes:
  0  stopped (or was not running)
  1  stopping failed
  3  invalid input, spec or flags
  4  Nomad or Consul unreachable, or permission denied
`

func runStop(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gwnomad stop", flag.ContinueOnError)
	file := fs.String("f", "", "spec file (default: the embedded demo spec)")
	purge := fs.Bool("purge", false, "purge the job from Nomad and delete its Consul KV folder")
	if code, ok := parseFlags(fs, args, stopUsage, stdout, stderr); !ok {
		return code
	}
	c, ok := loadClient(*file, "stop", stderr)
	if !ok {
		return exitInvalid
	}
	res, err := c.Stop(ctx, *purge, scheduler.NewTextReporter(stdout))
	if err != nil {
		return exitFor("stop", c, err, stderr)
	}
	fmt.Fprintf(stdout, "Stopped job %q: %d allocation(s) stopped in %s", res.Job, len(res.Stopped), res.Duration)
	if res.PurgedKV {
		fmt.Fprint(stdout, "; job purged and Consul KV deleted")
	} else {
		fmt.Fprint(stdout, "; Consul KV values kept (--purge deletes them)")
	}
	fmt.Fprintln(stdout)
	return exitOK
}
