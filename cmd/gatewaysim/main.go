// Command gatewaysim is a stand-in for a WSO2 API Manager gateway node, for
// tests, benchmarks and the demo (see package internal/gatewaysim).
//
// Usage:
//
//	gatewaysim [-home DIR] [-node NAME] [-scan-interval 500ms] [-grace 10s]
//	           [-fail-readiness] [-delay DUR] [-crash-after N]
//
// Exit codes: 0 stopped by SIGTERM/SIGINT; 1 runtime error; 2 invalid flags
// or deployment.toml; 3 crashed on purpose by -crash-after.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/gwnomad/gwnomad/internal/gatewaysim"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("gatewaysim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defHome := os.Getenv("GATEWAYSIM_HOME")
	if defHome == "" {
		defHome = "."
	}
	var (
		home          = fs.String("home", defHome, "gateway home: reads <home>/"+gatewaysim.ConfigRelPath+" and serves <home>/"+gatewaysim.APIDirRelPath+"/*.xml (default $GATEWAYSIM_HOME, else the current directory)")
		node          = fs.String("node", os.Getenv("GATEWAYSIM_NODE"), "node name for the X-Gateway-Node header and answers (default $GATEWAYSIM_NODE, else the host name)")
		scanInterval  = fs.Duration("scan-interval", gatewaysim.DefaultScanInterval, "artifact directory poll period")
		grace         = fs.Duration("grace", gatewaysim.DefaultGrace, "bound of the graceful shutdown on SIGTERM/SIGINT")
		failReadiness = fs.Bool("fail-readiness", false, "readiness endpoint always answers 503")
		delay         = fs.Duration("delay", 0, "added to every answer of the API (passthrough) ports")
		crashAfter    = fs.Int64("crash-after", 0, "after N API requests exit abruptly with code 3 (0: never)")
		version       = fs.String("product-version", gatewaysim.DefaultProductVersion, "WSO2 API-M version named by /services/Version")
	)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "gatewaysim: a stand-in for a WSO2 API-M gateway node (tests, benchmarks, demo).\n\nUsage: gatewaysim [flags]\n\nFlags:\n")
		fs.PrintDefaults()
		fmt.Fprintf(stderr, "\nExit codes: 0 stopped by SIGTERM/SIGINT; 1 runtime error; 2 invalid flags or deployment.toml; 3 crashed by -crash-after.\n")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "gatewaysim: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *scanInterval <= 0 || *grace <= 0 || *delay < 0 || *crashAfter < 0 {
		fmt.Fprintln(stderr, "gatewaysim: -scan-interval and -grace must be > 0, -delay and -crash-after >= 0")
		return 2
	}
	cfg, err := gatewaysim.LoadConfig(*home)
	if err != nil {
		fmt.Fprintf(stderr, "gatewaysim: refusing to start: invalid configuration: %v\n", err)
		var ce *gatewaysim.ConfigError
		if errors.As(err, &ce) && ce.Detail != "" {
			fmt.Fprintln(stderr, ce.Detail)
		}
		return 2
	}
	srv, err := gatewaysim.New(gatewaysim.Options{
		Config:         cfg,
		Node:           *node,
		ScanInterval:   *scanInterval,
		Grace:          *grace,
		FailReadiness:  *failReadiness,
		Delay:          *delay,
		CrashAfter:     *crashAfter,
		Exit:           os.Exit,
		Log:            stderr,
		ProductVersion: *version,
	})
	if err != nil {
		fmt.Fprintf(stderr, "gatewaysim: refusing to start: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := srv.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "gatewaysim: %v\n", err)
		if errors.Is(err, gatewaysim.ErrCrashed) {
			return gatewaysim.CrashExitCode
		}
		return 1
	}
	return 0
}
