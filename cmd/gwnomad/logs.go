package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/scheduler"
	"github.com/gwnomad/gwnomad/spec"
)

func init() {
	register(&command{
		name:    "logs",
		summary: "a gateway node's task log (stdout or stderr) through Nomad, followed with -f",
		run:     runLogs,
	})
}

const logsUsage = `Usage: gwnomad logs [NODE|ALLOC] [-f] [--stderr] [--tail N] [--spec gwnomad.toml]

logs prints the log of a gateway node's task through Nomad's API: its
stdout, or its stderr with --stderr (where the gateway simulator and most
startup failures write). NODE is the Nomad client name as 'gwnomad status'
shows it (the allocation running there, or the latest one there when none
runs); ALLOC is a prefix of an allocation ID, which may also name a failed
or stopped allocation Nomad still keeps. Without an argument the one
running gateway node is shown; when several run, the choices are listed.

Here -f follows the log, as tail -f does; the spec file is --spec (the
embedded demo spec without it). The token needs the read-logs capability
(deploy/acl/nomad-gwnomad.policy.hcl has it).

Flags:
  -f, --follow     print what the task writes, as it comes, until Ctrl-C
  --stderr         the task's stderr instead of its stdout
  --tail N         only the last N lines (then follow with -f); -1: all
  --spec FILE      spec file (default: the embedded demo spec)

Examples:
  gwnomad logs --spec gwnomad.toml --stderr               # the only node
  gwnomad logs nomad-client-2 --stderr --tail 50 -f
  gwnomad logs 3f2a9c1e --stderr | grep -i error
  gwnomad logs --tail 0 -f --stderr nomad-client-1        # only what comes next

Exit codes:
  0  printed (with -f: ended by Ctrl-C)
  1  the log could not be read (e.g. the task has not started yet)
  3  invalid flags or spec, no such node or allocation, or several to choose from
  4  Nomad unreachable, or permission denied
`

func runLogs(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gwnomad logs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, logsUsage) }
	var follow bool
	fs.BoolVar(&follow, "f", false, "follow the log until Ctrl-C")
	fs.BoolVar(&follow, "follow", false, "follow the log until Ctrl-C")
	useStderr := fs.Bool("stderr", false, "the task's stderr instead of its stdout")
	tail := fs.Int("tail", -1, "only the last N lines; -1 for all")
	file := fs.String("spec", "", "spec file (default: the embedded demo spec)")
	if probed(stdout, fs) {
		return exitOK
	}
	// The argument may come before, between or after the flags.
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stdout, logsUsage)
				return exitOK
			}
			return exitInvalid
		}
		if rest = fs.Args(); len(rest) == 0 {
			break
		}
		pos, rest = append(pos, rest[0]), rest[1:]
	}
	if len(pos) > 1 {
		fmt.Fprintf(stderr, "gwnomad logs: one node or allocation at a time, got %q\n", pos)
		return exitInvalid
	}
	if *tail < -1 {
		fmt.Fprintf(stderr, "gwnomad logs: --tail %d: want a number of lines, or -1 for all\n", *tail)
		return exitInvalid
	}
	target := ""
	if len(pos) == 1 {
		target = pos[0]
	}
	if *file == "" {
		fmt.Fprintln(stderr, "gwnomad: no --spec given: using the embedded default spec ('gwnomad init' writes it out)")
	}
	s, warns, err := spec.LoadOrDefault(*file)
	for _, w := range warns {
		fmt.Fprintln(stderr, w)
	}
	if err != nil {
		fmt.Fprintf(stderr, "gwnomad logs: invalid spec:\n%v\n", err)
		return exitInvalid
	}
	c, err := scheduler.New(s)
	if err != nil {
		fmt.Fprintf(stderr, "gwnomad logs: %v\n", err)
		return exitInvalid
	}
	a, err := c.FindLogAlloc(ctx, target)
	if err != nil {
		return exitFor("logs", c, err, stderr)
	}
	stream := "stdout"
	if *useStderr {
		stream = "stderr"
	}
	fmt.Fprintf(stderr, "gwnomad logs: allocation %s: task %q, %s\n", a, jobs.TaskName, stream)
	err = c.Logs(ctx, a, scheduler.LogsOptions{Stderr: *useStderr, Tail: *tail, Follow: follow}, stdout)
	if err != nil && ctx.Err() != nil {
		return exitOK // Ctrl-C
	}
	return exitFor("logs", c, err, stderr)
}
