// Package lbtest runs a load balancer inside a test: against a devstack's
// Consul, on free loopback ports, logging through t.Log, stopped (and
// drained) on t.Cleanup.
//
//	cfg := lbtest.Config(st, lbtest.Route("gw.test", "apim-gateway"))
//	l, stop := lbtest.Start(t, cfg)
//	resp, err := http.Get("http://" + l.Addrs().HTTP + "/")
package lbtest

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/lb"
	"github.com/gwnomad/gwnomad/lb/config"
)

// Route is a route for host to service with the default port and policy.
func Route(host, service string) config.Route {
	return config.Route{Hosts: []string{host}, Service: service}
}

// Config is config.Default() for a test: plain HTTP and admin on free
// loopback ports, st's Consul, a quick self-registration check and a short
// grace period, and the given routes.
func Config(st *devstack.Stack, routes ...config.Route) *config.Config {
	cfg := config.Default()
	cfg.Listen = config.Listen{HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0"}
	cfg.Consul.Address = st.Consul.HTTPAddr
	cfg.Consul.CheckInterval = config.Duration(time.Second)
	cfg.Proxy.GracePeriod = config.Duration(5 * time.Second)
	cfg.Routes = routes
	return cfg
}

// Logger logs through t.Log at level info, and to also (a test that reads
// what the balancer logged).
func Logger(t testing.TB, also ...io.Writer) *slog.Logger {
	w := io.MultiWriter(append([]io.Writer{tWriter{t}}, also...)...)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// Start builds and starts the balancer. cancel begins the drain (as SIGTERM
// does) without waiting; t.Cleanup cancels too, waits for the drain to end
// and fails the test if it takes over 30 s or ends with an error.
func Start(t testing.TB, cfg *config.Config, opts ...lb.Option) (l *lb.LB, cancel context.CancelFunc) {
	t.Helper()
	l, err := lb.New(cfg, append([]lb.Option{lb.WithLogger(Logger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := l.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		done := make(chan error, 1)
		go func() { done <- l.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("lb: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("lb did not stop within 30s")
		}
	})
	return l, cancel
}
