package lb_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb"
	"github.com/gwnomad/gwnomad/lb/admin"
	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/lbtest"
)

const host = "gw.test.local"

// TestMain doubles as a tiny gateway process (for SIGKILL tests) when
// GWNOMAD_LB_TEST_GATEWAY names one: it prints its address, then serves.
func TestMain(m *testing.M) {
	if name := os.Getenv("GWNOMAD_LB_TEST_GATEWAY"); name != "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(ln.Addr().String())
		_ = http.Serve(ln, gatewayHandler(name))
		return
	}
	os.Exit(m.Run())
}

// gatewayHandler answers with the gateway's name, /health with 200, and
// echoes WebSocket messages on /ws.
func gatewayHandler(name string) http.Handler {
	up := websocket.Upgrader{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			fmt.Fprintln(w, "ok")
		case "/headers": // what a client can spoof, as this gateway got it
			h := r.Header
			fmt.Fprintf(w, "xff=%v proto=%v xfh=%v fwd=%v xri=%v host=%s", h.Values("X-Forwarded-For"), h.Values("X-Forwarded-Proto"),
				h.Values("X-Forwarded-Host"), h.Values("Forwarded"), h.Values("X-Real-Ip"), r.Host)
		case "/ws":
			c, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			for {
				mt, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				if c.WriteMessage(mt, []byte(name+":"+string(msg))) != nil {
					return
				}
			}
		case "/slow":
			time.Sleep(1500 * time.Millisecond)
			fmt.Fprint(w, name)
		case "/large": // largeBody, chunked
			largeFetches.Add(1)
			for rest := largeBody; len(rest) > 0; rest = rest[min(len(rest), 64<<10):] {
				if _, err := w.Write(rest[:min(len(rest), 64<<10)]); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		default:
			w.Header().Set("X-Gateway", name)
			fmt.Fprint(w, name)
		}
	})
}

// gw is one test gateway registered in Consul.
type gw struct {
	name, addr string
	port       int
	checkID    string
	stop       func()
	accepted   *atomic.Int64 // connections accepted (in-process gateways)
}

// register puts g in Consul as service apim-gateway with the registration
// contract (meta port_*), with a TTL check (ttl) or an HTTP check.
func register(t *testing.T, c *consulapi.Client, g *gw, ttl bool) {
	t.Helper()
	_, ps, _ := net.SplitHostPort(g.addr)
	g.port, _ = strconv.Atoi(ps)
	g.checkID = g.name + ":check"
	check := &consulapi.AgentServiceCheck{CheckID: g.checkID, Name: "readiness", HTTP: "http://" + g.addr + "/health", Interval: "500ms", Timeout: "1s"}
	if ttl {
		check = &consulapi.AgentServiceCheck{CheckID: g.checkID, Name: "readiness", TTL: "5m", Status: consulapi.HealthPassing}
	}
	reg := &consulapi.AgentServiceRegistration{
		ID: g.name, Name: "apim-gateway", Address: "127.0.0.1", Port: g.port,
		Meta: map[string]string{"port_passthru_http": ps, "port_http": ps, "port_https": "1", "port_passthru_https": "1"},
		Checks: consulapi.AgentServiceChecks{
			check,
			{CheckID: g.name + ":liveness", Name: "liveness", TTL: "5m", Status: consulapi.HealthPassing},
		},
	}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("registering %s: %v", g.name, err)
	}
}

func inProcessGateway(t *testing.T, name string) *gw {
	s := httptest.NewUnstartedServer(gatewayHandler(name))
	accepted := new(atomic.Int64)
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			accepted.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return &gw{name: name, addr: s.Listener.Addr().String(), stop: s.Close, accepted: accepted}
}

// processGateway re-executes the test binary as a gateway process.
func processGateway(t *testing.T, name string) (*gw, *exec.Cmd) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GWNOMAD_LB_TEST_GATEWAY="+name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("gateway %s: %v", name, err)
	}
	return &gw{name: name, addr: strings.TrimSpace(line)}, cmd
}

// startLB runs a balancer against the stack's Consul, for route host ->
// apim-gateway.
func startLB(t *testing.T, st *devstack.Stack, policy string) *lb.LB {
	t.Helper()
	l, _ := startLBWith(t, st, policy, nil)
	return l
}

func startLBWith(t *testing.T, st *devstack.Stack, policy string, edit func(*config.Config), opts ...lb.Option) (*lb.LB, context.CancelFunc) {
	t.Helper()
	cfg := lbtest.Config(st, config.Route{Hosts: []string{host}, Policy: policy})
	if edit != nil {
		edit(cfg)
	}
	return lbtest.Start(t, cfg, opts...)
}

// instances is the live table's instance IDs for the route.
func instances(l *lb.LB) map[string]bool {
	out := map[string]bool{}
	r := l.Table().Routes[0]
	for _, m := range r.Members {
		out[m.ID] = true
	}
	return out
}

func waitInstances(t *testing.T, l *lb.LB, timeout time.Duration, want ...string) {
	t.Helper()
	testenv.WaitFor(t, timeout, fmt.Sprintf("instances %v in the table", want), func() error {
		got := instances(l)
		if len(got) != len(want) {
			return fmt.Errorf("table has %v", got)
		}
		for _, w := range want {
			if !got[w] {
				return fmt.Errorf("table has %v", got)
			}
		}
		return nil
	})
}

var client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

func get(l *lb.LB, path string) (*http.Response, string, error) {
	req, _ := http.NewRequest("GET", "http://"+l.Addrs().HTTP+path, nil)
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

func TestBalancesOverPassingAndFollowsChecks(t *testing.T) {
	st := testenv.Consul(t)
	c := st.ConsulAPI()
	gws := []*gw{inProcessGateway(t, "gw-1"), inProcessGateway(t, "gw-2"), inProcessGateway(t, "gw-3")}
	for _, g := range gws {
		register(t, c, g, true)
	}
	l := startLB(t, st, "round_robin")
	waitInstances(t, l, 30*time.Second, "gw-1", "gw-2", "gw-3")

	// Balanced over all passing instances.
	count := map[string]int{}
	for range 30 {
		resp, body, err := get(l, "/api")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET: %v %v", resp, err)
		}
		count[body]++
	}
	if count["gw-1"] != 10 || count["gw-2"] != 10 || count["gw-3"] != 10 {
		t.Errorf("round robin over 3 passing instances: %v", count)
	}

	// A failing check removes the instance from the table within 1 s.
	start := time.Now()
	if err := c.Agent().UpdateTTL("gw-2:check", "down for the test", consulapi.HealthCritical); err != nil {
		t.Fatal(err)
	}
	for instances(l)["gw-2"] {
		if time.Since(start) > 10*time.Second {
			t.Fatal("gw-2 still in the table 10 s after its check failed")
		}
		time.Sleep(2 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("failing check -> instance out of the table: %v", took)
	if took > time.Second {
		t.Errorf("instance left the table after %v, want < 1s", took)
	}
	for range 20 {
		if _, body, err := get(l, "/api"); err != nil || body == "gw-2" {
			t.Fatalf("after removal: %q %v", body, err)
		}
	}
	// /routes shows the critical instance as not passing.
	resp, err := http.Get("http://" + l.Addrs().Admin + "/routes")
	if err != nil {
		t.Fatal(err)
	}
	var dump admin.Table
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if r := dump.Routes[0]; len(r.Instances) != 2 || len(r.NotPassing) != 1 || r.NotPassing[0].ID != "gw-2" || r.NotPassing[0].State != "critical" {
		t.Errorf("/routes: %+v", r)
	}

	// /metrics: per-instance request counts and discovery state.
	mresp, err := http.Get("http://" + l.Addrs().Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`gwnomad_lb_requests_total{code="2xx",instance="` + gws[0].addr + `",route="` + host + `"}`,
		`gwnomad_lb_discovery_up{service="apim-gateway"} 1`,
		`gwnomad_lb_route_instances{route="` + host + `",state="healthy"} 2`,
		`gwnomad_lb_request_duration_seconds_bucket`,
	} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// WebSocket echo through the balancer.
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+l.Addrs().HTTP+"/ws", http.Header{"Host": {host}})
	if err != nil {
		t.Fatalf("websocket through the lb: %v", err)
	}
	for i := range 3 {
		msg := fmt.Sprintf("ping %d", i)
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := ws.ReadMessage()
		if err != nil || !strings.HasSuffix(string(got), ":"+msg) {
			t.Fatalf("websocket echo: %q %v", got, err)
		}
	}
	ws.Close()

	// No passing instance: 503 with Retry-After, never 404 or a hang.
	for _, id := range []string{"gw-1:check", "gw-3:check"} {
		if err := c.Agent().UpdateTTL(id, "down", consulapi.HealthCritical); err != nil {
			t.Fatal(err)
		}
	}
	waitInstances(t, l, 5*time.Second)
	resp2, _, err := get(l, "/api")
	if err != nil || resp2.StatusCode != 503 || resp2.Header.Get("Retry-After") == "" {
		t.Fatalf("no passing instance: %v %v", resp2, err)
	}
	// And back.
	if err := c.Agent().UpdateTTL("gw-3:check", "", consulapi.HealthPassing); err != nil {
		t.Fatal(err)
	}
	waitInstances(t, l, 5*time.Second, "gw-3")

	// The balancer registered itself, with a passing check against /healthz.
	testenv.WaitFor(t, 30*time.Second, "gwnomad-lb passing in consul", func() error {
		e, _, err := c.Health().Service("gwnomad-lb", "", true, nil)
		if err != nil {
			return err
		}
		if len(e) != 1 {
			return fmt.Errorf("%d passing gwnomad-lb instances", len(e))
		}
		return nil
	})
}

// load sends a steady stream of GETs from workers until ctx ends (or a
// bound on the count), and counts what failed.
type load struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	errs         []string
	by           map[string]int
}

func runLoad(ctx context.Context, l *lb.LB, workers int) (*load, func()) {
	ld := &load{by: map[string]int{}}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil && ld.sent.Load() < 200000 {
				ld.sent.Add(1)
				resp, body, err := get(l, "/api")
				if err != nil || resp.StatusCode != 200 {
					ld.failed.Add(1)
					ld.mu.Lock()
					if len(ld.errs) < 10 {
						if err != nil {
							ld.errs = append(ld.errs, err.Error())
						} else {
							ld.errs = append(ld.errs, fmt.Sprintf("%d %s", resp.StatusCode, body))
						}
					}
					ld.mu.Unlock()
				} else {
					ld.mu.Lock()
					ld.by[body]++
					ld.mu.Unlock()
				}
				time.Sleep(3 * time.Millisecond)
			}
		})
	}
	return ld, wg.Wait
}

func (ld *load) report(t *testing.T, what string) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	t.Logf("%s: sent %d, failed %d, by gateway %v", what, ld.sent.Load(), ld.failed.Load(), ld.by)
	if ld.failed.Load() != 0 {
		t.Errorf("%s: %d failed requests, first: %v", what, ld.failed.Load(), ld.errs)
	}
}

func TestSIGKILLOneOfThreeGatewaysZeroFailures(t *testing.T) {
	st := testenv.Consul(t)
	c := st.ConsulAPI()
	var cmds []*exec.Cmd
	for i := 1; i <= 3; i++ {
		g, cmd := processGateway(t, fmt.Sprintf("gw-%d", i))
		register(t, c, g, false)
		cmds = append(cmds, cmd)
	}
	l := startLB(t, st, "p2c")
	waitInstances(t, l, 30*time.Second, "gw-1", "gw-2", "gw-3")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ld, wait := runLoad(ctx, l, 3)
	testenv.WaitFor(t, 20*time.Second, "traffic to every gateway", func() error {
		ld.mu.Lock()
		defer ld.mu.Unlock()
		if len(ld.by) < 3 {
			return fmt.Errorf("answers by %v", ld.by)
		}
		return nil
	})
	if err := cmds[1].Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := ld.sent.Load()
	// Consul sees it critical, the table drops it; traffic keeps flowing.
	waitInstances(t, l, 20*time.Second, "gw-1", "gw-3")
	testenv.WaitFor(t, 20*time.Second, "500 more requests after the kill", func() error {
		if n := ld.sent.Load() - killedAt; n < 500 {
			return fmt.Errorf("%d requests since the kill", n)
		}
		return nil
	})
	cancel()
	wait()
	ld.report(t, "SIGKILL of gw-2 under load")
}

func TestConsulOutageZeroFailures(t *testing.T) {
	st := testenv.Consul(t)
	c := st.ConsulAPI()
	for i := 1; i <= 2; i++ {
		register(t, c, inProcessGateway(t, fmt.Sprintf("gw-%d", i)), false)
	}
	l := startLB(t, st, "round_robin")
	waitInstances(t, l, 30*time.Second, "gw-1", "gw-2")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ld, wait := runLoad(ctx, l, 2)
	defer func() { cancel(); wait() }()

	if err := st.Consul.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	t.Log("consul stopped")
	// The scenario: 20 s without Consul while traffic flows.
	testenv.WaitFor(t, 40*time.Second, "20 s of consul outage under traffic", func() error {
		if d := time.Since(stoppedAt); d < 20*time.Second {
			return fmt.Errorf("%v of outage so far", d.Round(time.Second))
		}
		return nil
	})
	r := l.Table().Routes[0]
	if r.Snapshot == nil || r.Snapshot.StaleSince.IsZero() || len(r.Upstreams) != 2 {
		t.Errorf("during the outage: want the last good table marked stale, got %d upstreams, snapshot %+v", len(r.Upstreams), r.Snapshot)
	}
	sentDuring := ld.sent.Load()
	if err := st.Consul.Proc.Start(); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer rcancel()
	if err := st.Consul.WaitReady(rctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("consul back after %v", time.Since(stoppedAt).Round(time.Second))
	// A new instance appears and gets traffic.
	register(t, c, inProcessGateway(t, "gw-3"), false)
	waitInstances(t, l, 60*time.Second, "gw-1", "gw-2", "gw-3")
	testenv.WaitFor(t, 30*time.Second, "traffic to the new instance", func() error {
		ld.mu.Lock()
		defer ld.mu.Unlock()
		if ld.by["gw-3"] == 0 {
			return fmt.Errorf("answers by %v", ld.by)
		}
		return nil
	})
	cancel()
	wait()
	t.Logf("requests sent while consul was down: %d", sentDuring)
	ld.report(t, "consul stopped 20 s under load")
	if r := l.Table().Routes[0]; r.Snapshot == nil || !r.Snapshot.StaleSince.IsZero() {
		t.Errorf("after the outage the snapshot is still stale: %+v", r.Snapshot)
	}
}

func TestDrainFinishesInFlightRequests(t *testing.T) {
	st := testenv.Consul(t)
	c := st.ConsulAPI()
	register(t, c, inProcessGateway(t, "gw-1"), true)
	l, stop := startLBWith(t, st, "p2c", func(cfg *config.Config) {
		cfg.Proxy.DrainDelay = config.Duration(3 * time.Second)
	})
	waitInstances(t, l, 30*time.Second, "gw-1")
	testenv.WaitFor(t, 30*time.Second, "gwnomad-lb registered", func() error {
		s, _, err := c.Catalog().Service("gwnomad-lb", "", nil)
		if err != nil || len(s) != 1 {
			return fmt.Errorf("%d registrations, %v", len(s), err)
		}
		return nil
	})
	type result struct {
		code int
		body string
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		resp, body, err := get(l, "/slow")
		if err != nil {
			slow <- result{err: err}
			return
		}
		slow <- result{code: resp.StatusCode, body: body}
	}()
	testenv.WaitFor(t, 10*time.Second, "the slow request in flight", func() error {
		if n := l.Table().Routes[0].Upstreams[0].Inflight(); n != 1 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})
	stop() // SIGTERM
	// During the drain delay: /healthz fails, the registration is gone, and
	// requests are still served.
	testenv.WaitFor(t, 5*time.Second, "healthz 503 while draining", func() error {
		resp, err := http.Get("http://" + l.Addrs().Admin + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 503 {
			return fmt.Errorf("healthz %d", resp.StatusCode)
		}
		return nil
	})
	testenv.WaitFor(t, 2*time.Second, "deregistered from the agent while draining", func() error {
		svcs, err := c.Agent().ServicesWithFilter(`Service == "gwnomad-lb"`)
		if err != nil || len(svcs) != 0 {
			return fmt.Errorf("%d registrations, %v", len(svcs), err)
		}
		return nil
	})
	if resp, body, err := get(l, "/api"); err != nil || resp.StatusCode != 200 || body != "gw-1" {
		t.Errorf("request during the drain delay: %v %q %v", resp, body, err)
	}
	r := <-slow
	if r.err != nil || r.code != 200 || r.body != "gw-1" {
		t.Errorf("in-flight request during shutdown: %+v", r)
	}
	done := make(chan error, 1)
	go func() { done <- l.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("drain did not end")
	}
	if conn, err := net.DialTimeout("tcp", l.Addrs().HTTP, time.Second); err == nil {
		conn.Close()
		t.Error("listener still accepting after the drain")
	}
}

// tls.mode = "files": HTTP/2 and HTTP/1.1 over TLS, HSTS on both.
func TestTLSFilesServesHTTP2AndHTTP1(t *testing.T) {
	st := testenv.Consul(t)
	register(t, st.ConsulAPI(), inProcessGateway(t, "gw-1"), true)
	certFile, keyFile, pool := testenv.CertFiles(t, t.TempDir(), host)
	l, _ := startLBWith(t, st, "p2c", func(cfg *config.Config) {
		cfg.Listen.HTTPS = "127.0.0.1:0"
		cfg.TLS.Mode, cfg.TLS.CertFile, cfg.TLS.KeyFile = "files", certFile, keyFile
		cfg.TLS.HSTS = config.Duration(365 * 24 * time.Hour)
	})
	waitInstances(t, l, 30*time.Second, "gw-1")
	for _, h2 := range []bool{true, false} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		req, _ := http.NewRequest("GET", "https://"+l.Addrs().HTTPS+"/api", nil)
		req.Host = host
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		want := map[bool]string{true: "HTTP/2.0", false: "HTTP/1.1"}[h2]
		if resp.StatusCode != 200 || string(b) != "gw-1" || resp.Proto != want {
			t.Errorf("h2=%v: %d %q %s", h2, resp.StatusCode, b, resp.Proto)
		}
		if got := resp.Header.Get("Strict-Transport-Security"); got != "max-age=31536000" {
			t.Errorf("h2=%v: Strict-Transport-Security %q", h2, got)
		}
	}
	// The default engine, the event loop, served the HTTP/1.1 connection
	// after its handshake; net/http the h2 one.
	if got, want := metricLine(t, "http://"+l.Addrs().Admin+"/metrics", "gwnomad_lb_event_loop_tls_connections_total "), "gwnomad_lb_event_loop_tls_connections_total 1"; got != want {
		t.Errorf("/metrics: %q, want %q", got, want)
	}
}
