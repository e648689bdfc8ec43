package certs

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb/certs/internal/childproc"
)

func testLogger(t *testing.T, name string) *slog.Logger {
	buf := &testenv.SyncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- %s log ----\n%s", name, buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("instance", name)
}

// acmeEnv is Consul and Pebble, the ports Pebble validates on, and a
// storage key file.
type acmeEnv struct {
	stack     *devstack.Stack
	p80, p443 int
	roots     *x509.CertPool
	keyFile   string
	prefix    string
}

func newACMEEnv(t *testing.T, shortLived int) *acmeEnv {
	ports, err := devstack.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	stack := testenv.Pebble(t, devstack.PebbleOptions{HTTPPort: ports[0], TLSPort: ports[1], ShortLivedSeconds: shortLived})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	roots, err := stack.Pebble.RootPool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	keyFile := filepath.Join(t.TempDir(), "storage.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &acmeEnv{stack: stack, p80: ports[0], p443: ports[1], roots: roots, keyFile: keyFile, prefix: "gwnomad/lb/certmagic"}
}

func (e *acmeEnv) config(t *testing.T, name string, domains ...string) Config {
	return Config{
		Mode: "acme", Domains: domains, Email: "sre@example.com",
		CA: e.stack.Pebble.DirectoryURL, CARoot: e.stack.Pebble.CAFile,
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", e.p80), HTTPSAddr: fmt.Sprintf("127.0.0.1:%d", e.p443),
		Storage: StorageConfig{Kind: "consul", Prefix: e.prefix, KeyFile: e.keyFile, LockTTL: 10 * time.Second},
		Logger:  testLogger(t, name),
	}
}

// orders counts the ACME orders Pebble created.
func (e *acmeEnv) orders(t *testing.T) int {
	b, err := os.ReadFile(e.stack.Pebble.Proc.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "Added order")
}

// lbFront is the test's stand-in for the LB's listeners on the ports that
// Pebble validates: :80 with HTTPHandler, :443 with TLSConfig in front of a
// tiny gateway. gate, when set, sees every challenge request first.
type lbFront struct {
	mu       sync.Mutex
	mgr      *Manager
	gate     func(kind string) error
	alpnHits atomic.Int32
}

func (f *lbFront) manager() *Manager {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mgr
}

func serveFront(t *testing.T, e *acmeEnv, m *Manager, gate func(kind string) error) *lbFront {
	f := &lbFront{mgr: m, gate: gate}
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "gateway answer for %s%s", r.Host, r.URL.Path)
	}))
	t.Cleanup(gateway.Close)
	gwURL, _ := url.Parse(gateway.URL)

	ln80, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", e.p80))
	if err != nil {
		t.Fatal(err)
	}
	ln443, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", e.p443))
	if err != nil {
		t.Fatal(err)
	}
	s80 := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.gate != nil && strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			if err := f.gate("http-01"); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		f.manager().HTTPHandler(nil).ServeHTTP(w, r)
	})}
	tlsConf := &tls.Config{
		NextProtos: []string{"http/1.1", "acme-tls/1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == "acme-tls/1" {
				f.alpnHits.Add(1)
				if f.gate != nil {
					if err := f.gate("tls-alpn-01"); err != nil {
						return nil, err
					}
				}
			}
			return f.manager().GetCertificate(hello)
		},
	}
	s443 := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: httputil.NewSingleHostReverseProxy(gwURL)}
	go func() { _ = s80.Serve(ln80) }()
	go func() { _ = s443.Serve(tls.NewListener(ln443, tlsConf)) }()
	t.Cleanup(func() { s80.Close(); s443.Close() })
	return f
}

// fetch makes one HTTPS request for name on addr over a new connection,
// verifying the certificate against Pebble's root. It returns the leaf's
// serial and the body.
func (e *acmeEnv) fetch(addr, name string) (*big.Int, string, error) {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: e.roots, ServerName: name},
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	resp, err := c.Get("https://" + name + "/hello")
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, string(body), fmt.Errorf("status %s", resp.Status)
	}
	return resp.TLS.PeerCertificates[0].SerialNumber, string(body), nil
}

// waitServed polls until name is served on addr with a valid certificate.
func (e *acmeEnv) waitServed(t *testing.T, addr, name string, timeout time.Duration) *big.Int {
	t.Helper()
	var serial *big.Int
	testenv.WaitFor(t, timeout, name+" served with a certificate from Pebble on "+addr, func() error {
		s, body, err := e.fetch(addr, name)
		if err != nil {
			return err
		}
		if !strings.Contains(body, "gateway answer for "+name) {
			return fmt.Errorf("unexpected body %q", body)
		}
		serial = s
		return nil
	})
	return serial
}

func TestACMEObtainServeRedirect(t *testing.T) {
	e := newACMEEnv(t, 0)
	const name = "gw.certs.example.com"
	cfg := e.config(t, "lb1", name)
	cfg.OnDemand = true
	cfg.OnDemandHosts = []string{name, "*.apps.example.com", "*"}
	cfg.HSTS = 24 * time.Hour
	m, err := New(cfg, e.stack.ConsulAPI())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	serveFront(t, e, m, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", e.p443)
	e.waitServed(t, addr, name, 2*time.Minute)
	if n := e.orders(t); n != 1 {
		t.Errorf("%d ACME orders, want 1", n)
	}

	t.Run("Redirect", func(t *testing.T) {
		c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/api/v1/pizza?size=large&x=%%20y", e.p80), strings.NewReader("body"))
		req.Host = name
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := fmt.Sprintf("https://%s:%d/api/v1/pizza?size=large&x=%%20y", name, e.p443)
		if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
			t.Errorf(":80 answered %s Location %q, want 308 %q", resp.Status, resp.Header.Get("Location"), want)
		}
	})

	t.Run("EncryptedInConsul", func(t *testing.T) {
		pairs, _, err := e.stack.ConsulAPI().KV().List(e.prefix+"/data/certificates", nil)
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, p := range pairs {
			if strings.HasSuffix(p.Key, name+".key") {
				found = true
			}
			if bytes.Contains(p.Value, []byte("BEGIN")) {
				t.Errorf("%s holds PEM in the clear", p.Key)
			}
		}
		if !found {
			t.Errorf("no private key for %s under %s/data/certificates (%d keys)", name, e.prefix, len(pairs))
		}
	})

	t.Run("OnDemandOnlyForRouteHosts", func(t *testing.T) {
		s, _, err := e.fetch(addr, "tenant1.apps.example.com")
		if err != nil {
			t.Fatalf("on-demand name of a wildcard route: %v", err)
		}
		t.Logf("on-demand certificate serial %x", s)
		if _, _, err := e.fetch(addr, "not-routed.example.org"); err == nil {
			t.Error("handshake for a name no route lists succeeded")
		}
		if v := counterValue(m.metrics.onDemandDenied); v < 1 {
			t.Errorf("on-demand denials counted: %v", v)
		}
	})

	t.Run("Metrics", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		reg.MustRegister(m)
		if v := counterValue(m.metrics.issued.WithLabelValues("obtain", "success")); v != 2 {
			t.Errorf("issuance successes = %v, want 2 (the domain and the on-demand name)", v)
		}
		if n, err := countSeries(reg, "gwnomad_lb_cert_not_after_timestamp_seconds"); err != nil || n != 1 {
			t.Errorf("expiry gauge: %d series, %v", n, err)
		}
		if m.HSTSHeader() != "max-age=86400" {
			t.Errorf("HSTS header %q", m.HSTSHeader())
		}
	})

	t.Run("FailedRenewalKeepsServing", func(t *testing.T) { // last: stops Pebble
		before, _, err := e.fetch(addr, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.stack.Pebble.Proc.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(ctx, time.Minute)
		defer rcancel()
		if err := m.Renew(rctx, name); err == nil {
			t.Fatal("renewal with the CA down succeeded")
		}
		if v := counterValue(m.metrics.issued.WithLabelValues("renew", "failure")); v < 1 {
			t.Errorf("renewal failures counted: %v", v)
		}
		after, _, err := e.fetch(addr, name)
		if err != nil || after.Cmp(before) != 0 {
			t.Errorf("after a failed renewal: serial %v, %v; want the same certificate served", after, err)
		}
	})
}

func TestACMERenewalWithoutFailedHandshake(t *testing.T) {
	e := newACMEEnv(t, 40)
	const name = "renew.certs.example.com"
	cfg := e.config(t, "lb1", name)
	cfg.Profile = "shortlived"
	cfg.RenewalWindowRatio = 0.5
	cfg.RenewCheckInterval = time.Second
	m, err := New(cfg, e.stack.ConsulAPI())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	serveFront(t, e, m, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", e.p443)
	first := e.waitServed(t, addr, name, 2*time.Minute)

	// A client that keeps connecting (a new connection and handshake every
	// 100ms) until it has seen two renewals.
	serials := map[string]bool{first.String(): true}
	var handshakes, failures int
	deadline := time.Now().Add(2 * time.Minute)
	for len(serials) < 3 && time.Now().Before(deadline) {
		s, _, err := e.fetch(addr, name)
		handshakes++
		if err != nil {
			failures++
			t.Errorf("request %d failed during renewal: %v", handshakes, err)
		} else {
			serials[s.String()] = true
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d requests, %d failed, %d certificates seen", handshakes, failures, len(serials))
	if len(serials) < 3 {
		t.Fatalf("saw %d certificates in 2 minutes, want the first and two renewals", len(serials))
	}
	if v := counterValue(m.metrics.issued.WithLabelValues("renew", "success")); v < 2 {
		t.Errorf("renewals counted: %v", v)
	}

	// A forced renewal works too.
	before, _, _ := e.fetch(addr, name)
	if err := m.Renew(ctx, name); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "forced renewal served", func() error {
		s, _, err := e.fetch(addr, name)
		if err != nil {
			return err
		}
		if before != nil && s.Cmp(before) == 0 {
			return errors.New("still the old certificate")
		}
		return nil
	})
}

// childConfig is what the helper process gets (JSON in CERTS_CHILD).
type childConfig struct {
	Consul    string
	Directory string
	CAFile    string
	HTTPAddr  string
	HTTPSAddr string
	KeyFile   string
	Prefix    string
	Domain    string
}

// TestHelperProcess is the second LB instance of the shared-storage tests:
// a Manager on the same Consul storage that serves on a TLS port of its own
// and prints its events.
func TestHelperProcess(t *testing.T) {
	if childproc.Role() == "" {
		t.Skip("helper process only")
	}
	var cc childConfig
	if err := json.Unmarshal([]byte(os.Getenv("CERTS_CHILD")), &cc); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	c, err := consulapi.NewClient(&consulapi.Config{Address: cc.Consul})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	m, err := New(Config{
		Mode: "acme", Domains: []string{cc.Domain}, Email: "sre@example.com",
		CA: cc.Directory, CARoot: cc.CAFile, HTTPAddr: cc.HTTPAddr, HTTPSAddr: cc.HTTPSAddr,
		Storage: StorageConfig{Kind: "consul", Prefix: cc.Prefix, KeyFile: cc.KeyFile, LockTTL: 10 * time.Second},
		Logger:  slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("instance", "child"),
		onEvent: func(event string, data map[string]any) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Println("EVENT", event, data["identifier"])
		},
	}, c)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "gateway answer for %s%s", r.Host, r.URL.Path)
	})}
	go func() { _ = srv.Serve(ln) }()
	mu.Lock()
	fmt.Println("LISTEN", ln.Addr().String())
	mu.Unlock()
	if err := m.Start(context.Background()); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	for range childproc.Lines() {
	}
	os.Exit(0)
}

func (e *acmeEnv) startChild(t *testing.T, domain string) (*childproc.Child, string) {
	cc := childConfig{
		Consul: e.stack.Consul.HTTPAddr, Directory: e.stack.Pebble.DirectoryURL, CAFile: e.stack.Pebble.CAFile,
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", e.p80), HTTPSAddr: fmt.Sprintf("127.0.0.1:%d", e.p443),
		KeyFile: e.keyFile, Prefix: e.prefix, Domain: domain,
	}
	b, _ := json.Marshal(cc)
	child := childproc.Start(t, "lb2", "CERTS_CHILD="+string(b))
	line := child.Expect(t, "LISTEN ", 60*time.Second)
	return child, strings.TrimPrefix(line, "LISTEN ")
}

// TestSharedStorageOneOrder: two LB instances (this process and a helper
// process) on one Consul storage. The helper starts first and takes the
// lock; this one, started while the helper orders, waits. Pebble validates
// on this process's ports, which answer the helper's challenge from
// Consul. Exactly one order; both serve the same certificate.
func TestSharedStorageOneOrder(t *testing.T) {
	e := newACMEEnv(t, 0)
	const name = "shared.certs.example.com"
	m, err := New(e.config(t, "lb1", name), e.stack.ConsulAPI())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	front := serveFront(t, e, m, nil)

	child, childAddr := e.startChild(t, name)
	child.Expect(t, "EVENT cert_obtaining", 60*time.Second) // it holds the lock and orders
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", e.p443)
	s1 := e.waitServed(t, addr, name, 2*time.Minute)
	s2 := e.waitServed(t, childAddr, name, 2*time.Minute)
	if s1.Cmp(s2) != 0 {
		t.Errorf("the instances serve different certificates: %x and %x", s1, s2)
	}
	if n := e.orders(t); n != 1 {
		t.Errorf("%d ACME orders, want exactly 1", n)
	}
	if v := counterValue(m.metrics.issued.WithLabelValues("obtain", "success")); v != 0 {
		t.Errorf("this instance ordered too (%v successes)", v)
	}
	answered := counterValue(m.metrics.challenges.WithLabelValues("http-01", "answered")) + float64(front.alpnHits.Load())
	if answered < 1 {
		t.Errorf("this instance answered no challenge of the other's order")
	}
	t.Logf("challenges of the other instance's order answered here: %v", answered)
}

// TestKillLockHolderMidOrder: the helper process takes the lock and orders;
// while Pebble is validating its challenge (held at this process's door),
// it is SIGKILLed. Its Consul session expires, this instance gets the lock
// and completes the certificate.
func TestKillLockHolderMidOrder(t *testing.T) {
	e := newACMEEnv(t, 0)
	const name = "killed.certs.example.com"
	arrived := make(chan string, 1)
	release := make(chan struct{})
	var gated atomic.Bool
	gate := func(kind string) error {
		if gated.CompareAndSwap(false, true) {
			arrived <- kind
			<-release
			return errors.New("the instance that ordered is gone")
		}
		return nil
	}
	var obtained atomic.Bool
	cfg := e.config(t, "lb1", name)
	cfg.onEvent = func(event string, _ map[string]any) {
		if event == "cert_obtained" {
			obtained.Store(true)
		}
	}
	m, err := New(cfg, e.stack.ConsulAPI())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	serveFront(t, e, m, gate)

	child, _ := e.startChild(t, name)
	child.Expect(t, "EVENT cert_obtaining", 60*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var kind string
	select {
	case kind = <-arrived:
	case <-time.After(90 * time.Second):
		t.Fatal("Pebble never came to validate the helper's challenge")
	}
	if n := e.orders(t); n != 1 {
		t.Fatalf("%d orders while the helper validates, want 1", n)
	}
	child.Kill()
	killed := time.Now()
	close(release)
	t.Logf("killed the lock holder while Pebble validated its %s challenge", kind)

	addr := fmt.Sprintf("127.0.0.1:%d", e.p443)
	e.waitServed(t, addr, name, 3*time.Minute)
	t.Logf("certificate served %s after the kill; %d orders in all", time.Since(killed).Round(time.Second), e.orders(t))
	if !obtained.Load() {
		t.Error("this instance did not obtain the certificate itself")
	}
	if n := e.orders(t); n != 2 {
		t.Errorf("%d ACME orders, want 2 (the killed one and the completed one)", n)
	}
}
