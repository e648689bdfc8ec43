package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/spec"
	"github.com/gwnomad/gwnomad/templates"
)

func init() {
	register(&command{
		name:    "render",
		summary: "print the Nomad job or a node's deployment.toml for a spec",
		run:     runRender,
		// What follows the target are that target's flags.
		subcommands: []string{"job", "config"},
	})
}

const renderUsage = `Usage:
  gwnomad render job    [-f gwnomad.toml] [-o json|hcl]
  gwnomad render config [-f gwnomad.toml] [--node-ip IP] [--offline]

render job prints the Nomad job gwnomad deploys: -o json (default) is the
Nomad API JSON {"Job": ...} that 'nomad job run -json' accepts; -o hcl is a
readable HCL view of it.

render config renders deployment.toml for one node with consul-template, as
Nomad does on every node: the [config] values come from Consul KV (the
configuration's folder, gwnomad/<cluster>/config/<id>/..., which exists once
the spec was deployed), or from the spec itself with --offline. The result
is parsed back and checked for the keys a gateway needs; a missing KV key is
named (Nomad would wait for it forever). Secrets (keys named like
password/secret/token/...key, and $secret{...} values) are shown redacted.
Ports are the spec's (port + offset); dynamic ports render as 0.

Without -f the embedded default spec is used ('gwnomad init' writes it out).

Examples:
  gwnomad render job -f gwnomad.toml
  gwnomad render job -f gwnomad.toml -o hcl > gateway.nomad.hcl
  gwnomad render job -o json | nomad job run -json -
  gwnomad render config -f gwnomad.toml --offline
  CONSUL_HTTP_ADDR=127.0.0.1:8500 gwnomad render config -f gwnomad.toml --node-ip 10.0.0.5

Exit codes: 0 rendered; 1 a KV key is missing or the result is not a valid
deployment.toml; 3 invalid spec or flags; 4 Consul unreachable or permission
denied.
`

func runRender(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, renderUsage)
		return exitInvalid
	}
	switch args[0] {
	case "-h", "--help", "-help", "help":
		fmt.Fprint(stdout, renderUsage)
		return exitOK
	case "job":
		return runRenderJob(args[1:], stdout, stderr)
	case "config":
		return runRenderConfig(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "gwnomad render: unknown target %q (want job or config)\n\n%s", args[0], renderUsage)
	return exitInvalid
}

func renderFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("gwnomad render "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, renderUsage) }
	file := fs.String("f", "", "spec file (default: the embedded demo spec)")
	return fs, file
}

// renderParse parses flags; ok false means return code.
func renderParse(fs *flag.FlagSet, args []string, stdout io.Writer) (code int, ok bool) {
	if probed(stdout, fs) { // shell completion asks for the flags
		return exitOK, false
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, renderUsage)
			return exitOK, false
		}
		return exitInvalid, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected arguments %q\n", fs.Name(), fs.Args())
		return exitInvalid, false
	}
	return 0, true
}

// renderLoadSpec loads the spec and prints its warnings.
func renderLoadSpec(file string, stderr io.Writer) (*spec.Spec, bool) {
	if file == "" {
		fmt.Fprintln(stderr, "gwnomad: no -f given: using the embedded default spec ('gwnomad init' writes it out)")
	}
	s, warns, err := spec.LoadOrDefault(file)
	for _, w := range warns {
		fmt.Fprintln(stderr, w)
	}
	if err != nil {
		fmt.Fprintf(stderr, "gwnomad: invalid spec:\n%v\n", err)
		return nil, false
	}
	return s, true
}

func runRenderJob(args []string, stdout, stderr io.Writer) int {
	fs, file := renderFlags("job", stderr)
	format := fs.String("o", "json", "output format: json (Nomad API JSON) or hcl (readable)")
	if code, ok := renderParse(fs, args, stdout); !ok {
		return code
	}
	if *format != "json" && *format != "hcl" {
		fmt.Fprintf(stderr, "gwnomad render job: -o %q: want json or hcl\n", *format)
		return exitInvalid
	}
	s, ok := renderLoadSpec(*file, stderr)
	if !ok {
		return exitInvalid
	}
	job, err := jobs.Build(s)
	if err != nil {
		fmt.Fprintf(stderr, "gwnomad render job: %v\n", err)
		return exitInvalid
	}
	out := jobs.HCL(job)
	if *format == "json" {
		if out, err = jobs.JSON(job); err != nil {
			fmt.Fprintf(stderr, "gwnomad render job: %v\n", err)
			return exitFailed
		}
	}
	if _, err := stdout.Write(out); err != nil {
		return exitFailed
	}
	return exitOK
}

func runRenderConfig(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, file := renderFlags("config", stderr)
	nodeIP := fs.String("node-ip", "127.0.0.1", "the node's address ([server] node_ip)")
	offline := fs.Bool("offline", false, "render from the spec's own values instead of Consul KV")
	if code, ok := renderParse(fs, args, stdout); !ok {
		return code
	}
	s, ok := renderLoadSpec(*file, stderr)
	if !ok {
		return exitInvalid
	}
	opts := templates.Options{NodeIP: *nodeIP}
	if !*offline {
		client, err := consulapi.NewClient(s.ConsulConfig())
		if err != nil {
			fmt.Fprintf(stderr, "gwnomad render config: Consul client: %v\n", err)
			return exitInvalid
		}
		opts.Consul = client
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	r, err := templates.Render(ctx, s, opts)
	if err != nil {
		var missing *templates.MissingKeysError
		var cerr *templates.ConsulError
		switch {
		case errors.As(err, &missing):
			fmt.Fprintf(stderr, "gwnomad render config: %v\n(each configuration has its own folder, written when it is deployed: if this spec's was never deployed, `gwnomad deploy` writes it; or use --offline)\n", err)
			return exitFailed
		case errors.As(err, &cerr):
			fmt.Fprintf(stderr, "gwnomad render config: Consul at %s: %v\n", s.ConsulConfig().Address, err)
			return exitUnreachable
		}
		fmt.Fprintf(stderr, "gwnomad render config: %v\n", err)
		if r != nil {
			stdout.Write(templates.Redact(r.Output))
		}
		return exitFailed
	}
	if _, err := stdout.Write(templates.Redact(r.Output)); err != nil {
		return exitFailed
	}
	return exitOK
}
