// Command gwnomad runs WSO2 API Manager Gateway nodes in high availability on
// Nomad and Consul, with its own TLS load balancer in front.
//
// main only parses the command line and calls packages; every subcommand lives
// in a file of its own in this directory and registers itself in init.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// Exit codes shared by every subcommand (documented in --help).
const (
	exitOK          = 0 // success (plan: no change)
	exitFailed      = 1 // deployment failed (plan: changes present)
	exitPlacement   = 2 // placement failed
	exitInvalid     = 3 // invalid input, spec or flags
	exitUnreachable = 4 // Nomad or Consul unreachable, or permission denied
)

// command is one gwnomad subcommand.
type command struct {
	name    string
	summary string
	// run executes the command. It returns the process exit code; it never
	// calls os.Exit itself.
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) int
	// subcommands are the words the command takes first (render's targets),
	// for shell completion; each has its own flags.
	subcommands []string
	// hidden commands are left out of the usage and of completion.
	hidden bool
}

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

func usage(w io.Writer) {
	fmt.Fprintf(w, `gwnomad: WSO2 API-M Gateway nodes in HA on Nomad and Consul, with a TLS load balancer.

Usage: gwnomad <command> [flags]
       gwnomad --version

Commands:
`)
	names := make([]string, 0, len(commands))
	width := 0
	for n, c := range commands {
		if !c.hidden {
			names = append(names, n)
			width = max(width, len(n))
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-*s %s\n", width, n, commands[n].summary)
	}
	fmt.Fprintf(w, `
Run 'gwnomad <command> --help' for a command's flags and examples.

Environment (overrides the spec's [nomad] and [consul] tables): NOMAD_ADDR,
NOMAD_TOKEN, NOMAD_CACERT, NOMAD_CAPATH, NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY,
NOMAD_TLS_SERVER_NAME, NOMAD_SKIP_VERIFY, CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
CONSUL_CACERT, CONSUL_CAPATH, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY,
CONSUL_HTTP_SSL. The region and namespace always come from the spec's
[cluster] table, so every command looks where the job lives.

Examples:
  make demo                                   # a local stack with everything running
  gwnomad init && gwnomad plan && gwnomad deploy
  gwnomad status -o json
  gwnomad lb --config /etc/gwnomad/lb.toml

Exit codes: 0 ok; 1 deployment failed (plan: changes); 2 placement failed;
3 invalid input or spec; 4 Nomad or Consul unreachable / permission denied.
`)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		return exitOK
	}
	switch args[0] {
	case "-v", "-version", "--version": // as nomad and consul take them
		printVersionLine(stdout)
		return exitOK
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "gwnomad: unknown command %q\n\n", args[0])
		usage(stderr)
		return exitInvalid
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return c.run(ctx, args[1:], stdout, stderr)
}
