// Command devstack starts and stops the local stack of real agents that
// `make demo` runs gwnomad on: a Consul server with its UI, one Consul agent
// and one Nomad client per simulated host (all sharing one host-volume
// directory, the stand-in for the NFS mount), a Nomad server and Pebble.
//
//	devstack up   -dir .demo -clients 3   # detached: the agents outlive it
//	devstack down -dir .demo              # stops everything, removes .demo
//
// `up` first takes down whatever an earlier `up` left in -dir, so running it
// twice is safe. It writes dir/env (CONSUL_HTTP_ADDR, NOMAD_ADDR, ...),
// dir/pebble-ca.pem (trust for Pebble's ACME directory) and
// dir/pebble-root.pem (the root of the certificates Pebble issues), and puts
// the sample API artifact into the shared directory.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/gatewaysim"
	"github.com/gwnomad/gwnomad/spec"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "up" && args[0] != "down") {
		fmt.Fprintln(stderr, "usage: devstack up|down [-dir .demo] [-clients 3] [-acme-http-port 80] [-acme-tls-port 443]")
		return 3
	}
	fs := flag.NewFlagSet("devstack "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", ".demo", "state directory (data, logs, configs)")
	clients := fs.Int("clients", 3, "Nomad clients (simulated hosts)")
	httpPort := fs.Int("acme-http-port", 80, "where Pebble validates HTTP-01 (the load balancer's HTTP port)")
	tlsPort := fs.Int("acme-tls-port", 443, "where Pebble validates TLS-ALPN-01 (the load balancer's HTTPS port)")
	if err := fs.Parse(args[1:]); err != nil {
		return 3
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintln(stderr, "devstack:", err)
		return 1
	}
	if args[0] == "down" {
		if err := devstack.Down(abs); err != nil {
			fmt.Fprintln(stderr, "devstack down:", err)
			return 1
		}
		fmt.Fprintf(stdout, "devstack: stopped and removed %s\n", *dir)
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := up(ctx, abs, *clients, *httpPort, *tlsPort, stdout); err != nil {
		fmt.Fprintln(stderr, "devstack up:", err)
		return 1
	}
	return 0
}

func up(ctx context.Context, dir string, clients, httpPort, tlsPort int, stdout io.Writer) error {
	if err := devstack.Down(dir); err != nil {
		return fmt.Errorf("taking down the previous stack: %w", err)
	}
	start := time.Now()
	st, err := devstack.Start(ctx, devstack.Config{
		Dir: dir, NomadClients: clients, Detach: true,
		Pebble: &devstack.PebbleOptions{HTTPPort: httpPort, TLSPort: tlsPort},
		Logf: func(format string, args ...any) {
			fmt.Fprintf(stdout, "devstack: "+format+"\n", args...)
		},
	})
	if err != nil {
		return fmt.Errorf("%w (logs in %s/logs)", err, dir)
	}
	if err := st.SaveState(); err != nil {
		return err
	}
	root, err := st.Pebble.RootPEM(ctx)
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(st.Pebble.CAFile)
	if err != nil {
		return err
	}
	apiDir, err := sampleAPIDir(st.SharedDir)
	if err != nil {
		return err
	}
	env := fmt.Sprintf("export CONSUL_HTTP_ADDR=%s\nexport NOMAD_ADDR=http://%s\nexport PEBBLE_DIRECTORY=%s\n",
		st.Consul.HTTPAddr, st.NomadServer.HTTPAddr, st.Pebble.DirectoryURL)
	for path, b := range map[string][]byte{
		filepath.Join(dir, "env"):                       []byte(env),
		filepath.Join(dir, "pebble-ca.pem"):             ca,
		filepath.Join(dir, "pebble-root.pem"):           root,
		filepath.Join(apiDir, gatewaysim.SampleAPIFile): gatewaysim.SampleAPI,
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "devstack: up in %s: Consul http://%s/ui/, Nomad http://%s, ACME %s\n",
		time.Since(start).Round(time.Second), st.Consul.HTTPAddr, st.NomadServer.HTTPAddr, st.Pebble.DirectoryURL)
	return nil
}

// sampleAPIDir is where the demo spec's gateways look for Synapse API
// artifacts, inside the shared directory.
func sampleAPIDir(shared string) (string, error) {
	s, _, err := spec.Default()
	if err != nil {
		return "", err
	}
	rel, ok := s.SharedPath(gatewaysim.APIDirRelPath)
	if !ok {
		return "", fmt.Errorf("the default spec does not share %s", gatewaysim.APIDirRelPath)
	}
	return filepath.Join(shared, rel), nil
}
