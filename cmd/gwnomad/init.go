package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/gwnomad/gwnomad/spec"
)

func init() {
	register(&command{
		name:    "init",
		summary: "write the default spec (gwnomad.toml) to edit",
		run:     runInit,
	})
}

const initUsage = `Usage: gwnomad init [-f gwnomad.toml] [--force]

Writes the embedded default spec, the one 'gwnomad deploy' uses without -f,
to a file to edit: three simulated gateway nodes (exec driver, dynamic ports,
hostname gw.am.wso2.com). Every key left out takes its documented production
default; 'gwnomad render job' and 'gwnomad render config --offline' show what
the file becomes. An existing file is left alone unless --force is given.

Examples:
  gwnomad init
  gwnomad init -f prod/gwnomad.toml
  gwnomad init -f - | less        # print it

Exit codes: 0 written; 1 the file exists (use --force) or cannot be written;
3 invalid flags.
`

func runInit(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fset := flag.NewFlagSet("gwnomad init", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() { fmt.Fprint(stderr, initUsage) }
	file := fset.String("f", "gwnomad.toml", `file to write ("-" prints it)`)
	force := fset.Bool("force", false, "overwrite an existing file")
	if probed(stdout, fset) { // shell completion asks for the flags
		return exitOK
	}
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, initUsage)
			return exitOK
		}
		return exitInvalid
	}
	if fset.NArg() > 0 {
		fmt.Fprintf(stderr, "gwnomad init: unexpected arguments %q\n", fset.Args())
		return exitInvalid
	}
	if *file == "-" {
		if _, err := stdout.Write(spec.DefaultTOML); err != nil {
			return exitFailed
		}
		return exitOK
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if *force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(*file, flags, 0o644)
	if errors.Is(err, fs.ErrExist) {
		fmt.Fprintf(stderr, "gwnomad init: %s exists; --force overwrites it\n", *file)
		return exitFailed
	}
	if err != nil {
		fmt.Fprintf(stderr, "gwnomad init: %v\n", err)
		return exitFailed
	}
	_, err = f.Write(spec.DefaultTOML)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintf(stderr, "gwnomad init: writing %s: %v\n", *file, err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "wrote %s: edit it, then 'gwnomad render job -f %s' or 'gwnomad deploy -f %s'\n", *file, *file, *file)
	return exitOK
}
