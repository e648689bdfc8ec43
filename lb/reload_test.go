package lb_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb"
	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/lbtest"
)

// registerAs registers g in Consul as an instance of service, passing.
func registerAs(t *testing.T, c *consulapi.Client, g *gw, service string) {
	t.Helper()
	_, port, _ := net.SplitHostPort(g.addr)
	var p int
	fmt.Sscan(port, &p)
	err := c.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: g.name, Name: service, Address: "127.0.0.1", Port: p,
		Check: &consulapi.AgentServiceCheck{CheckID: g.name + ":ttl", TTL: "5m", Status: consulapi.HealthPassing},
	})
	if err != nil {
		t.Fatalf("registering %s: %v", g.name, err)
	}
}

// askOn sends one GET for host on an open connection and returns the body.
func askOn(t *testing.T, conn net.Conn, br *bufio.Reader, host string) string {
	t.Helper()
	if _, err := fmt.Fprintf(conn, "GET /api HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		t.Fatalf("writing on the kept connection: %v", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading on the kept connection: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("kept connection: %d %s", resp.StatusCode, b)
	}
	return string(b)
}

// Reload (SIGHUP) moves a route to another Consul service and adds a route
// under load: no request fails, a client's keep-alive connection stays open
// and is served by the new route, and the new table goes live only once
// Consul answered for the new service. Changes that need a restart and
// invalid files are refused whole.
func TestReloadRoutesUnderLoadZeroFailures(t *testing.T) {
	st := testenv.Consul(t)
	c := st.ConsulAPI()
	ga := inProcessGateway(t, "gw-a")
	register(t, c, ga, true) // apim-gateway
	gb := inProcessGateway(t, "gw-b")
	registerAs(t, c, gb, "gw-other")

	level := new(slog.LevelVar)
	cfg := lbtest.Config(st, config.Route{Hosts: []string{host}})
	l, _ := lbtest.Start(t, cfg, lb.WithLogLevel(level))
	waitInstances(t, l, 30*time.Second, "gw-a")

	conn, err := net.Dial("tcp", l.Addrs().HTTP)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	if got := askOn(t, conn, br, host); got != "gw-a" {
		t.Fatalf("before the reload: answered by %q", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ld, wait := runLoad(ctx, l, 2)
	testenv.WaitFor(t, 20*time.Second, "traffic to gw-a", func() error {
		ld.mu.Lock()
		defer ld.mu.Unlock()
		if ld.by["gw-a"] < 20 {
			return fmt.Errorf("answers by %v", ld.by)
		}
		return nil
	})

	next := lbtest.Config(st,
		config.Route{Hosts: []string{host}, Service: "gw-other", Policy: "round_robin"},
		config.Route{Hosts: []string{"second.test.local"}},
	)
	next.Log.Level = "debug"
	version := l.Table().Version
	if err := l.Reload(ctx, next); err != nil {
		t.Fatalf("reload: %v", err)
	}
	// Reload returns once the new table is live, and it went live only
	// after Consul answered for gw-other: it is not empty.
	if got := instances(l); len(got) != 1 || !got["gw-b"] {
		t.Fatalf("right after the reload the route has %v, want gw-b", got)
	}
	if l.Table().Version == version {
		t.Error("the table version did not move")
	}
	reloadedAt := ld.sent.Load()
	testenv.WaitFor(t, 20*time.Second, "200 requests after the reload, served by gw-b", func() error {
		ld.mu.Lock()
		defer ld.mu.Unlock()
		if n := ld.sent.Load() - reloadedAt; n < 200 || ld.by["gw-b"] < 100 {
			return fmt.Errorf("%d requests since the reload; answers by %v", n, ld.by)
		}
		return nil
	})
	cancel()
	wait()
	ld.report(t, "reload under load")

	if got := askOn(t, conn, br, host); got != "gw-b" {
		t.Errorf("the connection kept across the reload was answered by %q, want gw-b", got)
	}
	if got := askOn(t, conn, br, "second.test.local"); got != "gw-a" {
		t.Errorf("the added route was answered by %q, want gw-a", got)
	}
	// The old instance's series went with it; the route's own stayed.
	if hasSeries(t, l, "gwnomad_lb_requests_total", map[string]string{"route": host, "instance": ga.addr}) {
		t.Error("the series of gw-a under the moved route are still exported")
	}
	if !hasSeries(t, l, "gwnomad_lb_request_duration_seconds", map[string]string{"route": host}) {
		t.Error("the moved route's duration series is gone")
	}
	// The balancer's own registration now names both services it routes to.
	testenv.WaitFor(t, 30*time.Second, "the registration's meta services updated", func() error {
		svcs, err := c.Agent().ServicesWithFilter(`Service == "gwnomad-lb"`)
		if err != nil {
			return err
		}
		for _, s := range svcs {
			if s.Meta["services"] == "apim-gateway,gw-other" {
				return nil
			}
			return fmt.Errorf("meta %v", s.Meta)
		}
		return fmt.Errorf("not registered: %v", svcs)
	})
	if level.Level() != slog.LevelDebug {
		t.Errorf("log.level not applied: %v", level.Level())
	}

	// A route removed: its series go.
	if !hasSeries(t, l, "gwnomad_lb_request_duration_seconds", map[string]string{"route": "second.test.local"}) {
		t.Fatal("no series for the added route")
	}
	// The first route is unchanged but moves to second place (a route is
	// added before it, the other removed): its instance carries on (the
	// same counter, not a new one from 0), and so does its keep-alive
	// connection to the gateway.
	gbSeries := map[string]string{"route": host, "instance": gb.addr, "code": "2xx"}
	before, ok := seriesValue(t, l, "gwnomad_lb_requests_total", gbSeries)
	if !ok || before < 100 {
		t.Fatalf("gw-b's 2xx counter before the reload: %v %v", before, ok)
	}
	gbConns := gb.accepted.Load()
	next = lbtest.Config(st,
		config.Route{Hosts: []string{"third.test.local"}},
		config.Route{Hosts: []string{host}, Service: "gw-other", Policy: "round_robin"},
	)
	if err := l.Reload(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	if after, ok := seriesValue(t, l, "gwnomad_lb_requests_total", gbSeries); !ok || after != before {
		t.Errorf("gw-b's 2xx counter across a reload that moved its route: %v -> %v (%v)", before, after, ok)
	}
	if got := askOn(t, conn, br, host); got != "gw-b" {
		t.Errorf("after the route moved: answered by %q, want gw-b", got)
	}
	if n := gb.accepted.Load(); n != gbConns {
		t.Errorf("gw-b accepted %d new connections after its route moved: the pool did not carry on", n-gbConns)
	}
	if got := askOn(t, conn, br, "third.test.local"); got != "gw-a" {
		t.Errorf("the route added first was answered by %q, want gw-a", got)
	}
	for _, name := range []string{"gwnomad_lb_request_duration_seconds", "gwnomad_lb_requests_total"} {
		if hasSeries(t, l, name, map[string]string{"route": "second.test.local"}) {
			t.Errorf("%s of the removed route is still exported", name)
		}
	}

	// Refused whole: a listener change, and an invalid route.
	version = l.Table().Version
	moved := lbtest.Config(st, config.Route{Hosts: []string{host}})
	moved.Listen.Admin = "127.0.0.1:1"
	if err := l.Reload(context.Background(), moved); err == nil || !strings.Contains(err.Error(), "[listen] changed, which needs a restart") {
		t.Errorf("a listener change: %v", err)
	}
	bad, err := config.Parse("lb.toml", []byte("[[routes]]\nhosts = [\""+host+"\"]\npolicy = \"random\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	bad.Listen, bad.Consul = next.Listen, next.Consul
	if err := l.Reload(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "lb.toml:3:1: routes[0].policy") {
		t.Errorf("an invalid file: %v", err)
	}
	if v := l.Table().Version; v != version {
		t.Errorf("a refused reload changed the table (version %d -> %d)", version, v)
	}
	if got := askOn(t, conn, br, host); got != "gw-b" {
		t.Errorf("after the refused reloads: answered by %q, want gw-b", got)
	}
}

// hasSeries reports whether the balancer exports a series of metric name
// with these label values.
func hasSeries(t *testing.T, l *lb.LB, name string, labels map[string]string) bool {
	t.Helper()
	_, ok := seriesValue(t, l, name, labels)
	return ok
}

// seriesValue is the value of the first series of metric name with these
// label values (a counter's, a gauge's or a histogram's sample count).
func seriesValue(t *testing.T, l *lb.LB, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := l.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
			return 0, true
		}
	}
	return 0, false
}
