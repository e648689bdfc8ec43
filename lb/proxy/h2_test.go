package proxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwnomad/gwnomad/lb/balancer"
	"github.com/gwnomad/gwnomad/lb/config"
)

// h2LB is a TLS listener (TLSServer) in front of a proxy, for raw HTTP/2
// clients (rawH2).
type h2LB struct {
	p    *Proxy
	srv  *TLSServer
	addr string
	pool *x509.CertPool
}

// startH2LB serves p (made with opt) for gw.example.com -> backends over
// TLS; tune, if not nil, sets the TLSServer's fields before it serves, and
// ln, if not nil, is its listener.
func startH2LB(t *testing.T, opt Options, sopt ServerOptions, tune func(*TLSServer), ln net.Listener, backends ...string) *h2LB {
	t.Helper()
	h := &balancer.Holder{}
	p := New(h, opt)
	b := balancer.NewBuilder([]config.Route{{Hosts: []string{"gw.example.com"}}}, testHealth)
	b.OnRoute, b.OnNew, b.OnGone = p.OnRoute, p.OnNew, p.OnGone
	h.Store(b.Build(staticSnap(backends...)))
	cert := selfSigned(t)
	srv := &TLSServer{Fast: p.NewFastServer(sopt), Handler: p, Config: &tls.Config{Certificates: []tls.Certificate{cert}},
		IdleTimeout: sopt.IdleTimeout, WriteTimeout: sopt.WriteTimeout}
	if tune != nil {
		tune(srv)
	}
	if ln == nil {
		ln = testListen(t)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	l := &h2LB{p: p, srv: srv, addr: ln.Addr().String(), pool: x509.NewCertPool()}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	l.pool.AddCert(leaf)
	t.Cleanup(func() {
		ctx, cancel := contextWithTimeout(5 * time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-served; err != nil {
			t.Errorf("tls server: serve: %v", err)
		}
	})
	return l
}

// rawH2 is an HTTP/2 client made of frames, which says what net/http's
// client would not (a Host header beside :authority, a window of zero,
// ...). Once started (start), a goroutine reads the server's frames,
// acknowledges its settings and answers its pings; until then nothing is
// read.
type rawH2 struct {
	t    *testing.T
	conn *tls.Conn
	fr   *http2.Framer
	wmu  sync.Mutex // the framer's writing side
	enc  *hpack.Encoder
	hbuf bytes.Buffer
	next uint32
	// window, when set, gives back the flow-control window of every DATA
	// frame read, on its stream and on the connection.
	window bool

	mu      sync.Mutex
	streams map[uint32]*h2Stream
	err     error // what ended reading: the connection was closed
}

// h2Stream is what the server sent on one stream.
type h2Stream struct {
	status string
	header http.Header
	body   []byte
	ended  bool // END_STREAM came
	reset  bool // RST_STREAM came
	code   http2.ErrCode
}

// dialH2 opens an h2 connection to addr (with d, if not nil) and sends
// the preface with settings (none: the defaults).
func dialH2(t *testing.T, addr string, pool *x509.CertPool, d *net.Dialer, settings ...http2.Setting) *rawH2 {
	t.Helper()
	if d == nil {
		d = &net.Dialer{}
	}
	tc, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: "gw.example.com", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN: %q, want h2", p)
	}
	c := &rawH2{t: t, conn: tc, fr: http2.NewFramer(tc, tc), next: 1, streams: map[uint32]*h2Stream{}}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hbuf)
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return c
}

// get opens a stream with a GET for path at authority, with the header
// fields hdr (name, value, name, value...), and returns its id.
func (c *rawH2) get(path, authority string, hdr ...string) uint32 {
	c.t.Helper()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.hbuf.Reset()
	fields := append([]string{":method", "GET", ":scheme", "https", ":authority", authority, ":path", path}, hdr...)
	for i := 0; i+1 < len(fields); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	id := c.next
	c.next += 2
	c.mu.Lock()
	c.streams[id] = &h2Stream{}
	c.mu.Unlock()
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
	return id
}

// write writes frames under the writing side's lock.
func (c *rawH2) write(f func(*http2.Framer) error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = f(c.fr)
}

// start reads the server's frames on a goroutine until the connection
// ends.
func (c *rawH2) start() {
	go func() {
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				c.mu.Lock()
				c.err = err
				c.mu.Unlock()
				return
			}
			c.frame(f)
		}
	}()
}

// frame takes in one frame of the server's; what it answers is written
// after c's lock is let go (get takes the locks the other way round).
func (c *rawH2) frame(f http2.Frame) {
	var reply func(*http2.Framer) error
	c.mu.Lock()
	s := c.streams[f.Header().StreamID]
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() {
			reply = func(fr *http2.Framer) error { return fr.WriteSettingsAck() }
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			reply = func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) }
		}
	case *http2.MetaHeadersFrame:
		if s != nil {
			s.status = f.PseudoValue("status")
			s.header = http.Header{}
			for _, hf := range f.RegularFields() {
				s.header.Add(hf.Name, hf.Value)
			}
			s.ended = f.StreamEnded()
		}
	case *http2.DataFrame:
		if s != nil {
			s.body = append(s.body, f.Data()...)
			s.ended = f.StreamEnded()
		}
		if n, id, end := uint32(f.Length), f.StreamID, f.StreamEnded(); c.window && n > 0 {
			reply = func(fr *http2.Framer) error {
				if !end {
					_ = fr.WriteWindowUpdate(id, n)
				}
				return fr.WriteWindowUpdate(0, n)
			}
		}
	case *http2.RSTStreamFrame:
		if s != nil {
			s.reset, s.code = true, f.ErrCode
		}
	}
	c.mu.Unlock()
	if reply != nil {
		c.write(reply)
	}
}

// wait waits until cond holds over the streams (read under c's lock); it
// fails the test if the connection ends first or 10 s pass.
func (c *rawH2) wait(what string, cond func(streams map[uint32]*h2Stream) bool) {
	c.t.Helper()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		c.mu.Lock()
		ok, err := cond(c.streams), c.err
		c.mu.Unlock()
		switch {
		case ok:
			return
		case err != nil:
			c.t.Fatalf("waiting for %s: the connection ended: %v", what, err)
		case time.Now().After(end):
			c.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// answer waits until stream id ends and returns what came on it.
func (c *rawH2) answer(id uint32) h2Stream {
	c.t.Helper()
	var s h2Stream
	c.wait(fmt.Sprintf("the answer on stream %d", id), func(m map[uint32]*h2Stream) bool {
		s = *m[id]
		return s.ended || s.reset
	})
	return s
}

// An h2 request is routed by :authority, and its gateway gets that as Host
// and X-Forwarded-Host. A Host header that names the same authority (case
// and the default port aside) is dropped; one that names another, or more than one, makes the
// request malformed (RFC 9113 section 8.3.1): 400, and nothing reaches a
// gateway.
func TestH2HostMustMatchAuthority(t *testing.T) {
	var got atomic.Int64
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-XFH", strings.Join(r.Header.Values("X-Forwarded-Host"), ","))
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(gw.Close)
	l := startH2LB(t, Options{}, ServerOptions{ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: 5 * time.Second,
		MaxHeaderBytes: 8192, MaxBodyBytes: 1 << 20}, nil, nil, addr(gw))
	c := dialH2(t, l.addr, l.pool, nil)
	c.start()
	for _, tc := range []struct {
		name, authority string
		hdr             []string
		status          string
	}{
		{"no Host", "gw.example.com", nil, "200"},
		{"the same Host", "gw.example.com", []string{"host", "gw.example.com"}, "200"},
		{"the same Host in capitals", "gw.example.com", []string{"host", "GW.Example.COM"}, "200"},
		{"another Host", "gw.example.com", []string{"host", "other.example.com"}, "400"},
		{"a routed Host, :authority not", "nowhere.example.com", []string{"host", "gw.example.com"}, "400"},
		{"the same Host with the default port", "gw.example.com", []string{"host", "gw.example.com:443"}, "200"},
		{"the same Host, another port", "gw.example.com", []string{"host", "gw.example.com:8443"}, "400"},
		{"two Hosts", "gw.example.com", []string{"host", "gw.example.com", "host", "gw.example.com"}, "400"},
	} {
		before := got.Load()
		s := c.answer(c.get("/p", tc.authority, tc.hdr...))
		if s.status != tc.status {
			t.Errorf("%s: status %s, want %s (%q)", tc.name, s.status, tc.status, s.body)
			continue
		}
		n := got.Load() - before
		if tc.status != "200" {
			if n != 0 {
				t.Errorf("%s: %d requests reached the gateway", tc.name, n)
			}
			continue
		}
		if n != 1 || string(s.body) != "ok" || s.header.Get("X-Seen-Host") != "gw.example.com" || s.header.Get("X-Seen-XFH") != "gw.example.com" {
			t.Errorf("%s: %d requests, body %q, gateway saw Host %q, X-Forwarded-Host %q", tc.name, n, s.body,
				s.header.Get("X-Seen-Host"), s.header.Get("X-Seen-XFH"))
		}
	}
}
