package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/gwnomad/gwnomad/lb/balancer"
	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/discovery"
)

var testHealth = balancer.Health{ConsecutiveFailures: 2, BaseEjection: 5 * time.Second, MaxEjection: 30 * time.Second, MaxEjectedPercent: 50}

func staticSnap(addrs ...string) map[discovery.Query]*discovery.Snapshot {
	s := &discovery.Snapshot{Query: discovery.Query{Service: "apim-gateway"}, Updated: time.Now()}
	for i, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		n, _ := strconv.Atoi(port)
		s.Instances = append(s.Instances, discovery.Instance{ID: fmt.Sprintf("gw-%d", i), Node: "node", Address: host, Port: n, Status: "passing"})
	}
	return map[discovery.Query]*discovery.Snapshot{s.Query: s}
}

// testLoop makes startLB serve with the event-loop engine
// (TestLoopEngine) instead of the goroutine one.
var testLoop bool

// testSndBuf, if set, is the send buffer of the balancer's client sockets
// in startLB: small, answers take many writes.
var testSndBuf int

type testLB struct {
	p    *Proxy
	b    *balancer.Builder
	h    *balancer.Holder
	addr string
	url  string
	loop *LoopServer // with testLoop
}

func startLB(t *testing.T, opt Options, backends ...string) *testLB {
	t.Helper()
	return startLBWith(t, opt, ServerOptions{ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: 5 * time.Second, MaxHeaderBytes: 4096, MaxBodyBytes: 1 << 20}, backends...)
}

func startLBWith(t *testing.T, opt Options, sopt ServerOptions, backends ...string) *testLB {
	t.Helper()
	h := &balancer.Holder{}
	p := New(h, opt)
	b := balancer.NewBuilder([]config.Route{{Hosts: []string{"gw.example.com", "127.0.0.1"}, Policy: "round_robin"}}, testHealth)
	b.OnRoute, b.OnNew, b.OnGone = p.OnRoute, p.OnNew, p.OnGone
	h.Store(b.Build(staticSnap(backends...)))
	ln := testListen(t)
	var loop *LoopServer
	if testLoop {
		srv := p.NewLoopServer(sopt)
		loop = srv
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		t.Cleanup(func() {
			ctx, cancel := contextWithTimeout(10 * time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Errorf("event loop: shutdown: %v", err)
			}
			if err := <-served; err != nil {
				t.Errorf("event loop: serve: %v", err)
			}
		})
	} else {
		srv := p.NewFastServer(sopt)
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return &testLB{p: p, b: b, h: h, addr: ln.Addr().String(), url: "http://" + ln.Addr().String(), loop: loop}
}

// testListen listens on a free loopback port, with testSndBuf if set.
func testListen(t *testing.T) net.Listener {
	t.Helper()
	lc := net.ListenConfig{}
	if testSndBuf > 0 { // accepted sockets inherit it, without autotuning
		lc.Control = func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) {
				_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, testSndBuf)
			})
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// backend answers with its name and echoes what it saw as headers.
func backend(t *testing.T, name string, status int) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Seen-URI", r.RequestURI)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-XFF", r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Seen-Proto", r.Header.Get("X-Forwarded-Proto"))
		w.Header().Set("X-Seen-XFH", r.Header.Get("X-Forwarded-Host"))
		w.Header().Set("X-Seen-Foo", r.Header.Get("X-Foo")+r.Header.Get("Keep-Alive")+r.Header.Get("Proxy-Authorization"))
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "should not pass")
		w.WriteHeader(status)
		fmt.Fprintf(w, "%s:%s", name, body)
	}))
	t.Cleanup(s.Close)
	return s
}

func addr(s *httptest.Server) string { return s.Listener.Addr().String() }

// closedAddr is a loopback port nobody listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func do(t *testing.T, method, url, host, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if host != "" {
		req.Host = host
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readBody(t *testing.T, r *http.Response) string {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestProxyBalancesAndRewritesHeaders(t *testing.T) {
	a, b := backend(t, "a", 200), backend(t, "b", 200)
	lb := startLB(t, Options{}, addr(a), addr(b))
	seen := map[string]int{}
	for range 10 {
		resp := do(t, "GET", lb.url+"/a//b/%2Fc?q=1&r=%20", "GW.example.com", "", map[string]string{
			"Connection": "X-Foo", "X-Foo": "hop", "Keep-Alive": "timeout=5", "Proxy-Authorization": "x",
			"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil",
		})
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		seen[resp.Header.Get("X-Backend")]++
		for k, want := range map[string]string{
			"X-Seen-URI": "/a//b/%2Fc?q=1&r=%20", "X-Seen-Host": "GW.example.com", "X-Seen-XFF": "127.0.0.1",
			"X-Seen-Proto": "http", "X-Seen-XFH": "GW.example.com", "X-Seen-Foo": "", "X-Hop": "",
		} {
			if got := resp.Header.Get(k); got != want {
				t.Errorf("%s = %q, want %q", k, got, want)
			}
		}
	}
	if seen["a"] != 5 || seen["b"] != 5 {
		t.Errorf("round robin spread: %v", seen)
	}
}

func TestTrustedProxyKeepsForwarded(t *testing.T) {
	a := backend(t, "a", 200)
	lb := startLB(t, Options{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, addr(a))
	resp := do(t, "GET", lb.url+"/", "gw.example.com", "", map[string]string{
		"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "front.example.com",
	})
	if got := resp.Header.Get("X-Seen-XFF"); got != "6.6.6.6, 127.0.0.1" {
		t.Errorf("XFF = %q", got)
	}
	if resp.Header.Get("X-Seen-Proto") != "https" || resp.Header.Get("X-Seen-XFH") != "front.example.com" {
		t.Errorf("proto/host not kept: %v", resp.Header)
	}
}

func TestRetryOnDialFailureAnyMethod(t *testing.T) {
	a := backend(t, "a", 200)
	lb := startLB(t, Options{Tries: 3}, closedAddr(t), addr(a))
	for i := range 6 {
		resp := do(t, "POST", lb.url+"/", "gw.example.com", "payload", nil)
		if body := readBody(t, resp); resp.StatusCode != 200 || body != "a:payload" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	r := lb.h.Load().Routes[0]
	ejected := 0
	for _, u := range r.Upstreams {
		if u.Ejections() > 0 {
			ejected++
		}
	}
	if ejected != 1 {
		t.Errorf("the dead instance was not ejected (ejected=%d)", ejected)
	}
}

func TestRetryIdempotentOn503Only(t *testing.T) {
	bad, good := backend(t, "bad", 503), backend(t, "good", 200)
	// POSTs are not resent: round robin alternates, and each POST that
	// meets "bad" gets its 503.
	lb := startLB(t, Options{Tries: 2}, addr(bad), addr(good))
	posts503 := 0
	for range 4 {
		if resp := do(t, "POST", lb.url+"/", "gw.example.com", "x", nil); resp.StatusCode == 503 {
			posts503++
		}
	}
	if n := counterValue(t, lb.p.m.Retries.WithLabelValues("gw.example.com")); posts503 != 2 || n != 0 {
		t.Errorf("POST: %d answered 503 (want 2), %v retries (want 0)", posts503, n)
	}
	// GETs are resent to the other instance (a fresh balancer: no ejection yet).
	lb2 := startLB(t, Options{Tries: 2}, addr(bad), addr(good))
	for i := range 4 {
		if resp := do(t, "GET", lb2.url+"/", "gw.example.com", "", nil); resp.StatusCode != 200 {
			t.Errorf("GET %d: %d", i, resp.StatusCode)
		}
	}
	if n := counterValue(t, lb2.p.m.Retries.WithLabelValues("gw.example.com")); n < 1 {
		t.Errorf("no GET retry counted")
	}
}

func TestNoInstanceIs503WithRetryAfter(t *testing.T) {
	lb := startLB(t, Options{})
	resp := do(t, "GET", lb.url+"/", "gw.example.com", "", nil)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("got %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	resp = do(t, "GET", lb.url+"/", "unknown.example.com", "", nil)
	if resp.StatusCode != 404 {
		t.Fatalf("unknown host: %d", resp.StatusCode)
	}
}

func TestAllDeadIs502(t *testing.T) {
	lb := startLB(t, Options{Tries: 2}, closedAddr(t), closedAddr(t))
	resp := do(t, "GET", lb.url+"/", "gw.example.com", "", nil)
	if resp.StatusCode != 502 {
		t.Fatalf("got %d", resp.StatusCode)
	}
}

func TestHeaderAndBodyLimits(t *testing.T) {
	a := backend(t, "a", 200)
	lb := startLB(t, Options{}, addr(a))
	resp := do(t, "GET", lb.url+"/", "gw.example.com", "", map[string]string{"X-Big": strings.Repeat("x", 8000)})
	if resp.StatusCode != 431 {
		t.Errorf("big header: %d", resp.StatusCode)
	}
	// A body over the limit is refused from its Content-Length, before it
	// is read (a client still sending it could see a reset instead).
	c, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: gw.example.com\r\nContent-Length: %d\r\n\r\n", 2<<20)
	big, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || big.StatusCode != 413 {
		t.Errorf("big body: %v %v", big, err)
	}
}

func TestWebSocketEcho(t *testing.T) {
	up := websocket.Upgrader{}
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, http.Header{"X-Seen-XFF": {r.Header.Get("X-Forwarded-For")}})
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, append([]byte("echo:"), msg...)); err != nil {
				return
			}
		}
	}))
	defer ws.Close()
	lb := startLB(t, Options{}, closedAddr(t), addr(ws))
	for i := range 3 { // the dead instance is skipped on connect
		c, resp, err := websocket.DefaultDialer.Dial("ws://"+lb.addr+"/ws", http.Header{"Host": {"gw.example.com"}})
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if resp.Header.Get("X-Seen-XFF") != "127.0.0.1" {
			t.Errorf("XFF on upgrade: %q", resp.Header.Get("X-Seen-XFF"))
		}
		for j := range 3 {
			msg := fmt.Sprintf("hello %d/%d", i, j)
			if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, got, err := c.ReadMessage()
			if err != nil || string(got) != "echo:"+msg {
				t.Fatalf("echo: %q %v", got, err)
			}
		}
		c.Close()
	}
}

func selfSigned(t testing.TB) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gw.example.com"},
		DNSNames: []string{"gw.example.com"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsLB serves a proxy with opt for gw.example.com -> backends over TLS
// (HTTP/2 and HTTP/1.1) on a free port.
type tlsLB struct {
	srv    *TLSServer
	addr   string
	pool   *x509.CertPool // trusts the server's certificate
	served chan error     // Serve's result
}

func startTLSLB(t *testing.T, opt Options, backends ...string) *tlsLB {
	t.Helper()
	h := &balancer.Holder{}
	p := New(h, opt)
	b := balancer.NewBuilder([]config.Route{{Hosts: []string{"gw.example.com"}}}, testHealth)
	b.OnRoute, b.OnNew, b.OnGone = p.OnRoute, p.OnNew, p.OnGone
	h.Store(b.Build(staticSnap(backends...)))
	cert := selfSigned(t)
	srv := &TLSServer{
		Fast:    p.NewFastServer(ServerOptions{ReadTimeout: 5 * time.Second, MaxHeaderBytes: 8192, MaxBodyBytes: 1 << 20}),
		Handler: p, Config: &tls.Config{Certificates: []tls.Certificate{cert}},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &tlsLB{srv: srv, addr: ln.Addr().String(), pool: x509.NewCertPool(), served: make(chan error, 1)}
	go func() { l.served <- srv.Serve(ln) }()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	l.pool.AddCert(leaf)
	t.Cleanup(func() {
		ctx, cancel := contextWithTimeout(5 * time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return l
}

func TestTLSServesHTTP2AndHTTP1(t *testing.T) {
	a := backend(t, "a", 200)
	l := startTLSLB(t, Options{}, addr(a))
	srv, pool, served := l.srv, l.pool, l.served
	for _, h2 := range []bool{true, false} {
		tr := &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: "gw.example.com"},
			ForceAttemptHTTP2: h2,
		}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		req, _ := http.NewRequest("POST", "https://"+l.addr+"/x?y=1", strings.NewReader("body"))
		req.Host = "gw.example.com"
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		body := readBody(t, resp)
		resp.Body.Close()
		wantProto := map[bool]string{true: "HTTP/2.0", false: "HTTP/1.1"}[h2]
		if resp.StatusCode != 200 || body != "a:body" || resp.Proto != wantProto || resp.Header.Get("X-Seen-Proto") != "https" ||
			resp.Header.Get("X-Seen-URI") != "/x?y=1" {
			t.Errorf("h2=%v: %d %q proto %s headers %v", h2, resp.StatusCode, body, resp.Proto, resp.Header)
		}
		tr.CloseIdleConnections()
	}
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
}

func TestAccessLogLine(t *testing.T) {
	a := backend(t, "a", 200)
	var buf strings.Builder
	al := NewAccessLog(&buf, nil)
	lb := startLB(t, Options{AccessLog: al}, addr(a))
	do(t, "GET", lb.url+`/q?x="y"`, "gw.example.com", "", nil)
	al.Flush()
	line := buf.String()
	for _, want := range []string{`"method":"GET"`, `"uri":"/q?x=\"y\""`, `"status":200`, `"route":"gw.example.com"`, `"tries":1`, `"upstream":"` + addr(a) + `"`} {
		if !strings.Contains(line, want) {
			t.Errorf("access log %q lacks %s", line, want)
		}
	}
}

// TestRawUpstreamKeepAliveClose: a gateway that closes every connection
// after answering must not make the client's connection close.
func TestGatewayConnectionCloseDoesNotLeak(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				n.Add(1)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	lb := startLB(t, Options{}, ln.Addr().String())
	c, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 3 {
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: gw.example.com\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on one client connection: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.Close {
			t.Fatalf("request %d: client connection closed", i)
		}
	}
}

func TestHeadAndChunkedAnswers(t *testing.T) {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			w.(http.Flusher).Flush() // no Content-Length: chunked
			io.WriteString(w, "part1,")
			w.(http.Flusher).Flush()
			io.WriteString(w, "part2")
			return
		}
		w.Header().Set("Content-Length", "5")
		if r.Method != "HEAD" {
			io.WriteString(w, "hello")
		}
	}))
	defer s.Close()
	lb := startLB(t, Options{}, addr(s))
	cl := &http.Client{Timeout: 5 * time.Second}
	req, _ := http.NewRequest("HEAD", lb.url+"/", nil)
	req.Host = "gw.example.com"
	resp, err := cl.Do(req)
	if err != nil || resp.StatusCode != 200 || resp.ContentLength != 5 {
		t.Fatalf("HEAD: %v %v", resp, err)
	}
	resp.Body.Close()
	req, _ = http.NewRequest("GET", lb.url+"/chunked", nil)
	req.Host = "gw.example.com"
	resp, err = cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, resp); body != "part1,part2" {
		t.Errorf("chunked answer: %q", body)
	}
	resp.Body.Close()
}

// Of a gateway's idle connections, the one used last serves the next
// request (LIFO): the others idle out instead of being cycled through.
func TestGatewayConnectionUsedLastGoesFirst(t *testing.T) {
	var (
		mu      sync.Mutex
		seen    []string
		arrived atomic.Int32
		both    = make(chan struct{})
	)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/both" { // hold the first request until the second arrives: two connections
			if arrived.Add(1) == 2 {
				close(both)
			}
			select {
			case <-both:
			case <-time.After(10 * time.Second):
			}
			return
		}
		mu.Lock()
		seen = append(seen, r.RemoteAddr)
		mu.Unlock()
	}))
	t.Cleanup(s.Close)
	lb := startLB(t, Options{}, addr(s))
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(lb.url + "/both")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if arrived.Load() != 2 {
		t.Fatalf("%d requests reached the gateway, want 2", arrived.Load())
	}
	for range 5 {
		readBody(t, do(t, "GET", lb.url+"/one", "", "", nil))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range seen[1:] {
		if a != seen[0] {
			t.Fatalf("sequential requests came over gateway connections %v, want one connection reused", seen)
		}
	}
}
