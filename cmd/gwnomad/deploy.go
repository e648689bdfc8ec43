package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gwnomad/gwnomad/scheduler"
	"github.com/gwnomad/gwnomad/spec"
)

func init() {
	register(&command{
		name:    "deploy",
		summary: "write the config to Consul KV, run the gateway job on Nomad and watch it become healthy",
		run:     runDeploy,
	})
}

const deployUsage = `Usage: gwnomad deploy [-f gwnomad.toml] [--detach] [--auto-promote] [-o text|json]

deploy rolls the gateway cluster described by the spec out on Nomad:

  1. validates the spec and renders deployment.toml (invalid input stops here,
     nothing is written);
  2. checks the cluster: Nomad and Consul answer, enough ready and eligible
     client nodes have the host volume and the task driver for [gateway] count
     (the nodes that lack them are named);
  3. prints the plan: Nomad's job diff and the Consul KV changes (secrets
     redacted);
  4. writes the [config] values to Consul KV, into the
     configuration's own folder (gwnomad/<cluster>/config/<id>/, which only
     the new job version reads: the running version, and any version Nomad
     reverts to, keep reading their own);
  5. registers the job and follows the deployment to its end: per task group
     desired/placed/healthy/unhealthy, per node its Consul liveness and
     readiness; a live view on a terminal, one line per change otherwise, one
     JSON object per event with -o json. Failures are explained: placement
     constraints, task events (e.g. a template waiting for a KV key), Consul
     check output, the last lines of the task's stderr;
  6. ends with a summary: nodes, addresses, versions, time taken.

A config change is a new job version (the config checksum is in the job
meta), rolled out node by node under [update], never all nodes at once.
Ctrl-C stops monitoring, never the deployment: 'gwnomad status' follows it.

Without -f the embedded demo spec is used ('gwnomad init' writes it out).
Nomad and Consul are found through [nomad] and [consul] in the spec, with
NOMAD_ADDR, NOMAD_TOKEN, CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN... on top.

Flags:
  -f FILE          spec file (default: the embedded demo spec)
  --detach         return once the job is registered
  --auto-promote   promote canaries once healthy ([update] canary > 0)
  -o text|json     output: text (default) or JSON events, one per line

Examples:
  gwnomad deploy -f gwnomad.toml
  gwnomad deploy -f gwnomad.toml -o json | jq -c 'select(.type=="summary")'
  gwnomad deploy -f gwnomad.toml --detach && gwnomad status -f gwnomad.toml

Exit codes:
  0  deployed and healthy (or nothing to change and every node ready)
  1  deployment failed: the message says whether Nomad auto-reverted and to
     which version (also: monitoring interrupted)
  2  placement failed: the constraint or the missing host volume is named
  3  invalid input, spec or flags (nothing written)
  4  Nomad or Consul unreachable, or permission denied
`

func runDeploy(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gwnomad deploy", flag.ContinueOnError)
	file := fs.String("f", "", "spec file (default: the embedded demo spec)")
	detach := fs.Bool("detach", false, "return once the job is registered")
	autoPromote := fs.Bool("auto-promote", false, "promote canaries once healthy")
	out := fs.String("o", "text", "output: text or json")
	if code, ok := parseFlags(fs, args, deployUsage, stdout, stderr); !ok {
		return code
	}
	if *out != "text" && *out != "json" {
		fmt.Fprintf(stderr, "gwnomad deploy: -o %q: want text or json\n", *out)
		return exitInvalid
	}
	c, ok := loadClient(*file, "deploy", stderr)
	if !ok {
		return exitInvalid
	}
	rep := reporter(*out, stdout)
	_, err := c.Deploy(ctx, scheduler.DeployOptions{Detach: *detach, AutoPromote: *autoPromote, Report: rep})
	if err != nil && scheduler.NothingChanged(err) {
		err = fmt.Errorf("%w\nnothing was changed: no job registered, Consul KV as before", err)
	}
	code := exitFor("deploy", c, err, stderr)
	if err != nil && *out == "json" { // the last line of the stream says how it ended
		rep.Report(scheduler.Event{Time: time.Now(), Type: scheduler.EventError, Message: err.Error(), Lines: []string{fmt.Sprintf("exit %d", code)}})
	}
	return code
}

// parseFlags parses a command's flags; ok false means return code.
func parseFlags(fs *flag.FlagSet, args []string, usage string, stdout, stderr io.Writer) (code int, ok bool) {
	if probed(stdout, fs) { // shell completion asks for the flags
		return exitOK, false
	}
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return exitOK, false
		}
		return exitInvalid, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q\n", fs.Name(), fs.Args())
		return exitInvalid, false
	}
	return 0, true
}

// loadClient loads the spec (printing its warnings) and makes the
// scheduler client; false means invalid input (already reported).
func loadClient(file, cmd string, stderr io.Writer) (*scheduler.Client, bool) {
	if file == "" {
		fmt.Fprintln(stderr, "gwnomad: no -f given: using the embedded default spec ('gwnomad init' writes it out)")
	}
	s, warns, err := spec.LoadOrDefault(file)
	for _, w := range warns {
		fmt.Fprintln(stderr, w)
	}
	if err != nil {
		fmt.Fprintf(stderr, "gwnomad %s: invalid spec:\n%v\n", cmd, err)
		return nil, false
	}
	c, err := scheduler.New(s)
	if err != nil {
		fmt.Fprintf(stderr, "gwnomad %s: %v\n", cmd, err)
		return nil, false
	}
	return c, true
}

// reporter picks the event output: JSON lines, a live view on a terminal,
// or one line per change.
func reporter(format string, stdout io.Writer) scheduler.Reporter {
	if format == "json" {
		return scheduler.NewJSONReporter(stdout)
	}
	if isTerminal(stdout) {
		return scheduler.NewLiveReporter(stdout)
	}
	return scheduler.NewTextReporter(stdout)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// exitFor prints err (if any) and returns the exit code its kind maps to.
func exitFor(cmd string, c *scheduler.Client, err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	var (
		inv  *scheduler.InvalidError
		unr  *scheduler.UnreachableError
		pl   *scheduler.PlacementError
		dep  *scheduler.DeployError
		intr *scheduler.InterruptedError
	)
	fmt.Fprintf(stderr, "gwnomad %s: %v\n", cmd, err)
	switch {
	case errors.As(err, &inv):
		return exitInvalid
	case errors.As(err, &unr):
		if !unr.Denied {
			fmt.Fprintf(stderr, "(Nomad: %s, Consul: %s; set NOMAD_ADDR / CONSUL_HTTP_ADDR or [nomad] / [consul] address in the spec)\n", c.NomadAddr(), c.ConsulAddr())
		}
		return exitUnreachable
	case errors.As(err, &pl):
		return exitPlacement
	case errors.As(err, &dep):
		for _, l := range dep.Explanation {
			fmt.Fprintln(stderr, "  "+l)
		}
		if dep.Reverted {
			fmt.Fprintf(stderr, "Nomad auto-reverted to job version %d: the previous version is serving ('gwnomad status').\n", dep.RevertedTo)
		} else {
			fmt.Fprintln(stderr, "Not reverted: the failed version stays registered ('gwnomad status').")
		}
		return exitFailed
	case errors.As(err, &intr):
		return exitFailed
	}
	return exitFailed
}
