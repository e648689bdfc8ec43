// Package testenv ties real agents from package devstack to a test: it skips
// in -short mode, starts the agents in the test's temp dir, stops them on
// t.Cleanup and prints their logs' tails when the test failed.
//
//	func TestDeploy(t *testing.T) {
//		st := testenv.Cluster(t, testenv.Options{Clients: 3})
//		nomad := st.NomadAPI()
//		...
//	}
//
// The binaries come from bin/ (`make tools`; `make test` builds them first).
package testenv

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/devstack"
)

// Options for Cluster.
type Options struct {
	// Clients is the number of Nomad clients (each with its own Consul
	// agent). Default 2.
	Clients int
	// Pebble starts the ACME test server too when non-nil.
	Pebble *devstack.PebbleOptions
}

// Consul starts one Consul server agent.
func Consul(t testing.TB) *devstack.Stack {
	return start(t, devstack.Config{})
}

// Cluster starts Consul, a Nomad server and opts.Clients Nomad clients that
// share one host-volume directory (Stack.SharedDir).
func Cluster(t testing.TB, opts Options) *devstack.Stack {
	if opts.Clients == 0 {
		opts.Clients = 2
	}
	return start(t, devstack.Config{NomadClients: opts.Clients, Pebble: opts.Pebble})
}

// Pebble starts Consul and Pebble (challenges validated on the given ports).
func Pebble(t testing.TB, opts devstack.PebbleOptions) *devstack.Stack {
	return start(t, devstack.Config{Pebble: &opts})
}

// Start starts the agents that cfg asks for (Dir and Logf are set here), for
// tests that need something the helpers above do not give, such as ACLs.
func Start(t testing.TB, cfg devstack.Config) *devstack.Stack { return start(t, cfg) }

func start(t testing.TB, cfg devstack.Config) *devstack.Stack {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs real agents (skipped with -short)")
	}
	cfg.Dir = tempDir(t)
	cfg.Logf = t.Logf
	if cfg.NomadClients > 0 {
		bin, err := devstack.FindBinDir()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(bin, "gatewaysim")); err != nil {
			t.Fatalf("gateway simulator not built (run `make build`): %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st, err := devstack.Start(ctx, cfg)
	if err != nil {
		DumpLogs(t, cfg.Dir)
		t.Fatalf("starting agents: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			DumpLogs(t, cfg.Dir)
		}
		if err := st.Stop(); err != nil {
			t.Errorf("stopping agents: %v", err)
		}
	})
	return st
}

// tempDir is a short directory (unix socket paths have a length limit)
// removed at the end of the test, after the agents stopped.
func tempDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "gwn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing %s: %v", dir, err)
		}
	})
	return dir
}

// DumpLogs prints the last lines of every agent log under dir/logs.
func DumpLogs(t testing.TB, dir string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("---- %s (last %d lines) ----\n%s", filepath.Base(f), len(lines), strings.Join(lines, "\n"))
	}
}

// WaitFor polls cond every 100ms until it returns nil; it fails the test
// with the last error when timeout passes. Use it instead of sleeps.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = cond(); last == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
