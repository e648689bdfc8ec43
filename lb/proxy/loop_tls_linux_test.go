package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/lb/balancer"
	"github.com/gwnomad/gwnomad/lb/config"
)

// loopTLS is a TLS listener whose HTTP/1.1 connections the loops serve
// after the handshake (L8).
type loopTLS struct {
	p    *Proxy
	h    *balancer.Holder
	srv  *TLSServer
	loop *LoopServer
	addr string
	pool *x509.CertPool
}

func startLoopTLS(t *testing.T, opt Options, sopt ServerOptions, backends ...string) *loopTLS {
	t.Helper()
	h := &balancer.Holder{}
	p := New(h, opt)
	b := balancer.NewBuilder([]config.Route{{Hosts: []string{"gw.example.com"}, Policy: "round_robin"}}, testHealth)
	b.OnRoute, b.OnNew, b.OnGone = p.OnRoute, p.OnNew, p.OnGone
	h.Store(b.Build(staticSnap(backends...)))
	cert := selfSigned(t)
	loop := p.NewLoopServer(sopt)
	loopDone := make(chan error, 1)
	go func() { loopDone <- loop.Serve(nil) }()
	srv := &TLSServer{Fast: p.NewFastServer(sopt), Handler: p, Config: &tls.Config{Certificates: []tls.Certificate{cert}, SessionTicketsDisabled: true}, Loop: loop}
	ln := testListen(t)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	l := &loopTLS{p: p, h: h, srv: srv, loop: loop, addr: ln.Addr().String(), pool: x509.NewCertPool()}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	l.pool.AddCert(leaf)
	t.Cleanup(func() {
		ctx, cancel := contextWithTimeout(10 * time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("tls server: shutdown: %v", err)
		}
		if err := loop.Shutdown(ctx); err != nil {
			t.Errorf("event loop: shutdown: %v", err)
		}
		if err := <-loopDone; err != nil {
			t.Errorf("event loop: serve: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("tls server: serve: %v", err)
		}
	})
	waitServing(t, loop) // the loops adopt once Serve is under way; before, Fast serves
	return l
}

// client is an HTTP/1.1 (or h2) client that trusts l's certificate and
// keeps one connection.
func (l *loopTLS) client(h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: l.pool, ServerName: "gw.example.com"}, ForceAttemptHTTP2: h2, MaxConnsPerHost: 1,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// dial opens a raw HTTP/1.1 TLS connection to l.
func (l *loopTLS) dial(t *testing.T, d *net.Dialer) *tls.Conn {
	t.Helper()
	if d == nil {
		d = &net.Dialer{}
	}
	c, err := tls.DialWithDialer(d, "tcp", l.addr, &tls.Config{RootCAs: l.pool, ServerName: "gw.example.com", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

func (l *loopTLS) get(t *testing.T, cl *http.Client, method, path, host string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "https://"+l.addr+path, http.NoBody)
	req.Host = host
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp, string(b)
}

// Over TLS a loop serves what it serves over plain HTTP (L2, L8), with
// X-Forwarded-Proto https and HSTS; h2 stays with net/http.
func TestLoopTLSServesItself(t *testing.T) {
	a, b := backend(t, "a", 200), backend(t, "b", 200)
	const hsts = "max-age=60"
	l := startLoopTLS(t, Options{HSTS: hsts}, loopSopt, addr(a), addr(b))
	cl := l.client(false)
	seen := map[string]int{}
	for i := range 20 {
		method := []string{"GET", "DELETE", "POST"}[i%3]
		resp, body := l.get(t, cl, method, "/p?q=1", "gw.example.com")
		name := resp.Header.Get("X-Backend")
		seen[name]++
		if resp.StatusCode != 200 || body != name+":" || resp.Proto != "HTTP/1.1" {
			t.Fatalf("%s %d: %d %q %s", method, i, resp.StatusCode, body, resp.Proto)
		}
		if resp.Header.Get("X-Seen-XFF") != "127.0.0.1" || resp.Header.Get("X-Seen-Proto") != "https" ||
			resp.Header.Get("X-Seen-XFH") != "gw.example.com" || resp.Header.Get("X-Seen-URI") != "/p?q=1" ||
			resp.Header.Get("X-Hop") != "" || resp.Header.Get("Strict-Transport-Security") != hsts {
			t.Fatalf("%s %d: headers not rewritten: %v", method, i, resp.Header)
		}
	}
	if seen["a"] != 10 || seen["b"] != 10 {
		t.Errorf("round robin over two instances: %v", seen)
	}
	if resp, body := l.get(t, cl, "GET", "/", "nowhere.example.com"); resp.StatusCode != 404 || body != "gwnomad-lb: no route for this host\n" {
		t.Errorf("unknown host: %d %q", resp.StatusCode, body)
	}
	if n := counterValue(t, l.p.m.LoopTLS); n != 1 {
		t.Errorf("the loops took %v TLS connections, want 1 (one keep-alive connection)", n)
	}
	if r, an := counterValue(t, l.p.m.handRequest), counterValue(t, l.p.m.handAnswer); r != 0 || an != 0 {
		t.Errorf("handed over %v/%v connections, want none", r, an)
	}
	resp, body := l.get(t, l.client(true), "GET", "/h2", "gw.example.com")
	if resp.Proto != "HTTP/2.0" || resp.StatusCode != 200 || !strings.HasSuffix(body, ":") || resp.Header.Get("X-Seen-Proto") != "https" {
		t.Errorf("h2: %s %d %q", resp.Proto, resp.StatusCode, body)
	}
	if n := counterValue(t, l.p.m.LoopTLS); n != 1 {
		t.Errorf("the loops took %v TLS connections after an h2 one, want 1", n)
	}
}

// Errors the balancer answers itself carry HSTS over TLS, as the
// goroutine engine's do.
func TestLoopTLSErrorAnswers(t *testing.T) {
	l := startLoopTLS(t, Options{HSTS: "max-age=60", Tries: 2}, loopSopt, closedAddr(t))
	resp, body := l.get(t, l.client(false), "GET", "/", "gw.example.com")
	if resp.StatusCode != 502 || resp.Header.Get("Strict-Transport-Security") != "max-age=60" || body == "" {
		t.Errorf("all dead: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if n := counterValue(t, l.p.m.LoopTLS); n != 1 {
		t.Errorf("the loops took %v TLS connections, want 1", n)
	}
}

// What a loop does not serve goes to the TLS listener's goroutine engine,
// still over TLS: a request with a body (L3), an answer too large to hold
// (L4); the connection goes on there.
func TestLoopTLSHandsOver(t *testing.T) {
	a := backend(t, "a", 200)
	l := startLoopTLS(t, Options{MaxBufferedResponse: 64 << 10}, loopSopt, addr(a))
	c := l.dial(t, nil)
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /first HTTP/1.1\r\nHost: gw.example.com\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first answer: %v %v", resp, err)
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	// A body, then a bodyless request, pipelined in one write.
	io.WriteString(c, "POST /x HTTP/1.1\r\nHost: gw.example.com\r\nContent-Length: 7\r\n\r\npayloadGET /y HTTP/1.1\r\nHost: gw.example.com\r\n\r\n")
	for i, want := range []string{"a:payload", "a:"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != want || resp.Header.Get("X-Seen-Proto") != "https" {
			t.Fatalf("answer %d: %d %q (proto seen %q), want 200 %q over https", i, resp.StatusCode, b, resp.Header.Get("X-Seen-Proto"), want)
		}
	}
	if r := counterValue(t, l.p.m.handRequest); r != 1 {
		t.Errorf("handed over %v connections for requests, want 1", r)
	}

	gw := largeBackend(t, 2<<20)
	lLarge := startLoopTLS(t, Options{MaxBufferedResponse: 64 << 10}, loopSopt, gw.Listener.Addr().String())
	cl := lLarge.client(false)
	for _, path := range []string{"/small", "/large", "/large?chunked=1", "/small"} {
		resp, body := lLarge.get(t, cl, "GET", path, "gw.example.com")
		want := gw.body
		if path == "/small" {
			want = []byte("small")
		}
		if resp.StatusCode != 200 || body != string(want) {
			t.Fatalf("GET %s: %d, %d bytes (want 200, %d bytes)", path, resp.StatusCode, len(body), len(want))
		}
	}
	if an := counterValue(t, lLarge.p.m.handAnswer); an != 1 {
		t.Errorf("handed over %v connections for answers, want 1", an)
	}
	if n := counterValue(t, lLarge.p.m.LoopTLS); n != 1 {
		t.Errorf("the loops took %v TLS connections, want 1", n)
	}
}

// Pipelined requests over TLS are answered in order; answers larger than
// the client's socket takes are sealed whole and written as it reads.
func TestLoopTLSPipelinedAndSlowReader(t *testing.T) {
	gw := largeBackend(t, 1<<20)
	testSndBuf = 8192
	l := startLoopTLS(t, Options{}, loopSopt, gw.Listener.Addr().String())
	testSndBuf = 0
	c := l.dial(t, smallReader)
	br := pipelineLargeSmall(t, c, gw.body)
	// Requests written a byte at a time: each read ends in the middle of a
	// record or a head.
	for _, ch := range []byte("GET /small HTTP/1.1\r\nHost: gw.example.com\r\n\r\n") {
		if _, err := c.Write([]byte{ch}); err != nil {
			t.Fatal(err)
		}
	}
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("request a byte at a time: %v %v", resp, err)
	} else if b, _ := io.ReadAll(resp.Body); string(b) != "small" {
		t.Fatalf("request a byte at a time: %q", b)
	}
	if r, an := counterValue(t, l.p.m.handRequest), counterValue(t, l.p.m.handAnswer); r != 0 || an != 0 {
		t.Errorf("handed over %v/%v connections, want none", r, an)
	}
}

// Timeouts (L5) over TLS: an idle connection is closed with close_notify,
// an unfinished request gets 408; Shutdown (L7) closes idle connections
// and answers the one in flight with Connection: close.
func TestLoopTLSTimeoutsAndShutdown(t *testing.T) {
	a := backend(t, "a", 200)
	sopt := loopSopt
	sopt.IdleTimeout, sopt.ReadTimeout = 300*time.Millisecond, 300*time.Millisecond
	l := startLoopTLS(t, Options{}, sopt, addr(a))
	raw, err := net.Dial("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	counted := &countConn{Conn: raw}
	idle := tls.Client(counted, &tls.Config{RootCAs: l.pool, ServerName: "gw.example.com", NextProtos: []string{"http/1.1"}})
	defer idle.Close()
	_ = idle.SetDeadline(time.Now().Add(20 * time.Second))
	if err := idle.Handshake(); err != nil {
		t.Fatal(err)
	}
	counted.on.Store(true)
	partial := l.dial(t, nil)
	io.WriteString(partial, "GET / HTTP/1.1\r\nHost: gw.exa")
	if n, err := idle.Read(make([]byte, 1)); err != io.EOF || counted.n.Load() == 0 {
		t.Errorf("idle connection: read %d, %v after %d bytes, want EOF after a close_notify record", n, err, counted.n.Load())
	}
	resp, err := http.ReadResponse(bufio.NewReader(partial), nil)
	if err != nil || resp.StatusCode != 408 {
		t.Errorf("unfinished request: %v %v, want 408", resp, err)
	}

	gw := newSlowGateway(t)
	l2 := startLoopTLS(t, Options{}, loopSopt, addr(gw.Server))
	idle2 := l2.dial(t, nil)
	io.WriteString(idle2, "GET / HTTP/1.1\r\nHost: gw.example.com\r\n\r\n")
	br := bufio.NewReader(idle2)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("before shutdown: %v %v", resp, err)
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	busy := l2.dial(t, nil)
	shut := gw.shutDuring(t, busy, l2.loop)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection during shutdown: %v, want EOF", err)
	}
	gw.finish(t, busy, shut)
	if n := counterValue(t, l2.p.m.LoopTLS); n != 2 {
		t.Errorf("the loops took %v TLS connections, want 2", n)
	}
}

// countConn counts the bytes read through it once on.
type countConn struct {
	net.Conn
	on atomic.Bool
	n  atomic.Int64
}

func (c *countConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.on.Load() {
		c.n.Add(int64(n))
	}
	return n, err
}

// A request that came in the same segment as the handshake's last flight
// is in crypto/tls's buffer when the loop adopts the connection, and the
// socket brings no edge for it: the loop reads it at once (L8). So are
// records read with one that was served.
func TestLoopTLSRequestWithTheHandshake(t *testing.T) {
	a := backend(t, "a", 200)
	l := startLoopTLS(t, Options{}, loopSopt, addr(a))
	raw, err := net.Dial("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	held := &holdConn{Conn: raw}
	c := tls.Client(held, &tls.Config{RootCAs: l.pool, ServerName: "gw.example.com", NextProtos: []string{"http/1.1"}})
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET /with-handshake HTTP/1.1\r\nHost: gw.example.com\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := held.flush(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the request sent with the client's Finished: %v", err)
	}
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "a:" || resp.Header.Get("X-Seen-URI") != "/with-handshake" {
		t.Errorf("%d %q %v", resp.StatusCode, b, resp.Header)
	}
	// Three requests in three records, in one segment: the loop's one
	// read takes all three, and crypto/tls gives them a record at a time
	// while the socket stays empty.
	for i := range 3 {
		if _, err := fmt.Fprintf(c, "GET /record-%d HTTP/1.1\r\nHost: gw.example.com\r\n\r\n", i); err != nil {
			t.Fatal(err)
		}
	}
	if err := held.flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		if want := fmt.Sprintf("/record-%d", i); resp.StatusCode != 200 || resp.Header.Get("X-Seen-URI") != want {
			t.Errorf("record %d: %d for %q, want 200 for %q", i, resp.StatusCode, resp.Header.Get("X-Seen-URI"), want)
		}
	}
	if n := counterValue(t, l.p.m.LoopTLS); n != 1 {
		t.Errorf("the loops took %v TLS connections, want 1", n)
	}
}

// holdConn writes its first write (the ClientHello) and holds the rest
// until flush, which writes them in one system call.
type holdConn struct {
	net.Conn
	writes int
	held   []byte
}

func (c *holdConn) Write(b []byte) (int, error) {
	if c.writes++; c.writes == 1 {
		return c.Conn.Write(b)
	}
	c.held = append(c.held, b...)
	return len(b), nil
}

func (c *holdConn) flush() error {
	_, err := c.Conn.Write(c.held)
	c.held = nil
	return err
}

// What crypto/tls wrote while a loop owned the connection and the loop
// had not sent yet (a reply to a client's KeyUpdate, say) goes out first
// once goroutines own it.
func TestTLSLinkWritesPendingFirst(t *testing.T) {
	a, b := net.Pipe()
	l := &tlsLink{fd: -1}
	c := &client{tls: l}
	l.c = c
	if _, err := l.Write([]byte("pending:")); err != nil || string(c.out) != "pending:" {
		t.Fatalf("a write on the loop: %q, %v; want it in the client's output", c.out, err)
	}
	detachTLS(c, a)
	go func() {
		_, _ = l.Write([]byte("next"))
		a.Close()
	}()
	if got, _ := io.ReadAll(b); string(got) != "pending:next" {
		t.Errorf("written after the hand-over: %q, want %q", got, "pending:next")
	}
}
