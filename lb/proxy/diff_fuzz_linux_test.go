package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gwnomad/gwnomad/lb/balancer"
	"github.com/gwnomad/gwnomad/lb/config"
)

// The differential rule: for any byte stream a client sends on one
// connection, what each engine forwards to a gateway is what Go's net/http
// server would have accepted from that stream, request for request: the
// same method, target, Host, end-to-end headers and body, in the same
// order. An engine may answer a request itself or stop earlier (reject
// more: a documented choice, strict.go), never forward a request net/http
// would not have served, nor forward one differently. The gateway always sees the balancer's own
// X-Forwarded-* and never a client's Forwarded or X-Real-IP (the client
// is not a trusted proxy).

// diffRequest is a request as a net/http handler saw it.
type diffRequest struct {
	Method, Target, Host string
	Header               http.Header
	Body                 string
	Forwarded            string // X-Forwarded-For/-Proto/-Host, Forwarded, X-Real-IP as the gateway saw them
}

func (r diffRequest) String() string {
	return fmt.Sprintf("%s %q host=%q body=%q header=%v fwd=%s", r.Method, r.Target, r.Host, r.Body, r.Header, r.Forwarded)
}

// diffDropped are the headers that do not cross a proxy or that the
// balancer sets itself; what remains must arrive as the client sent it.
var diffDropped = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Upgrade", "Expect", "Transfer-Encoding", "Content-Length",
	"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded", "X-Real-Ip",
}

// diffRecorder is a net/http handler that records what it is given.
type diffRecorder struct {
	mu     sync.Mutex
	seen   []diffRequest
	active atomic.Int32 // connections between a request's arrival and its answer
}

func (d *diffRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return // not whole: not a request that was served
	}
	h := r.Header.Clone()
	for _, v := range r.Header.Values("Connection") {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" && !strings.EqualFold(tok, "host") {
				h.Del(tok)
			}
		}
	}
	fwd := fmt.Sprintf("xff=%q proto=%q xfh=%q fwd=%q xri=%q", r.Header.Values("X-Forwarded-For"), r.Header.Values("X-Forwarded-Proto"),
		r.Header.Values("X-Forwarded-Host"), r.Header.Values("Forwarded"), r.Header.Values("X-Real-Ip"))
	for _, k := range diffDropped {
		delete(h, k)
	}
	if len(h) == 0 {
		h = nil
	}
	// An empty query ("/a?") reaches the gateway as "/a" from the
	// goroutine engine (fasthttp writes no "?" without a query): the one
	// rewrite of a target the rule allows, the same resource for a
	// gateway.
	target := strings.TrimSuffix(r.URL.RequestURI(), "?")
	d.mu.Lock()
	d.seen = append(d.seen, diffRequest{Method: r.Method, Target: target, Host: r.Host, Header: h, Body: string(body), Forwarded: fwd})
	d.mu.Unlock()
	w.Header().Set("Content-Length", "2")
	_, _ = io.WriteString(w, "ok")
}

func (d *diffRecorder) take() []diffRequest {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.seen
	d.seen = nil
	return s
}

// connState counts the connections with a request in progress, so that
// a run waits for what is still on its way to the recorder.
func (d *diffRecorder) connState(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateActive:
		d.active.Add(1)
	case http.StateIdle, http.StateHijacked, http.StateClosed:
		// Closed follows Active without Idle when a request fails.
		if d.active.Load() > 0 {
			d.active.Add(-1)
		}
	}
}

// diffRig is the reference (net/http), the gateway, and a balancer per
// engine in front of it, made once per fuzzing process.
type diffRig struct {
	gw, ref      *diffRecorder
	refAddr      string
	engines      []diffEngine
	gwSrv, refSv *httptest.Server
}

type diffEngine struct {
	name string
	addr string
	p    *Proxy
	tls  *tls.Config // the client's, when the engine serves TLS
}

var (
	rigOnce sync.Once
	rig     *diffRig
)

var diffSopt = ServerOptions{ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, IdleTimeout: 2 * time.Second, MaxHeaderBytes: 4096, MaxBodyBytes: 64 << 10}

func startDiffRig(t testing.TB) *diffRig {
	rigOnce.Do(func() {
		r := &diffRig{gw: &diffRecorder{}, ref: &diffRecorder{}}
		r.gwSrv = httptest.NewUnstartedServer(r.gw)
		r.gwSrv.Config.ConnState = r.gw.connState
		r.gwSrv.Start()
		r.refSv = httptest.NewUnstartedServer(r.ref)
		r.refSv.Config.ConnState = r.ref.connState
		r.refSv.Config.ReadTimeout = diffSopt.ReadTimeout
		r.refSv.Config.MaxHeaderBytes = diffSopt.MaxHeaderBytes
		r.refSv.Start()
		r.refAddr = r.refSv.Listener.Addr().String()
		cert := selfSigned(t)
		for _, name := range []string{"event-loop", "goroutines", "event-loop-tls"} {
			h := &balancer.Holder{}
			p := New(h, Options{Tries: 1, Logger: discardLogger()})
			b := balancer.NewBuilder([]config.Route{{Hosts: []string{"*"}, Policy: "round_robin"}}, testHealth)
			b.OnRoute, b.OnNew, b.OnGone = p.OnRoute, p.OnNew, p.OnGone
			h.Store(b.Build(staticSnap(r.gwSrv.Listener.Addr().String())))
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				panic(err)
			}
			e := diffEngine{name: name, addr: ln.Addr().String(), p: p}
			switch name {
			case "event-loop":
				srv := p.NewLoopServer(diffSopt)
				go func() { _ = srv.Serve(ln) }()
				waitServing(t, srv)
			case "goroutines":
				srv := p.NewFastServer(diffSopt)
				go func() { _ = srv.Serve(ln) }()
			case "event-loop-tls": // HTTP/1.1 over TLS on the loops (L8), records split where the stream is
				loop := p.NewLoopServer(diffSopt)
				go func() { _ = loop.Serve(nil) }()
				waitServing(t, loop)
				srv := &TLSServer{Fast: p.NewFastServer(diffSopt), Handler: p, Config: &tls.Config{Certificates: []tls.Certificate{cert}, SessionTicketsDisabled: true}, Loop: loop}
				go func() { _ = srv.Serve(ln) }()
				e.tls = &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}} //nolint:gosec // the test's own certificate
			}
			r.engines = append(r.engines, e)
		}
		rig = r
	})
	return rig
}

// exchange writes stream to addr in two writes (split at cut: two TLS
// records over TLS), half-closes, and reads until the server closes or
// the deadline.
func diffExchange(addr string, tc *tls.Config, stream []byte, cut int) ([]byte, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	c := nc
	if tc != nil {
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		t := tls.Client(nc, tc)
		if err := t.Handshake(); err != nil {
			return nil, err
		}
		c = t
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	cut = min(max(cut, 0), len(stream))
	if _, err := c.Write(stream[:cut]); err == nil && cut < len(stream) {
		_, _ = c.Write(stream[cut:])
	}
	if t, ok := c.(*tls.Conn); ok {
		_ = t.CloseWrite()
	} else {
		_ = c.(*net.TCPConn).CloseWrite()
	}
	out, err := io.ReadAll(c)
	if err != nil && tc != nil && errors.Is(err, io.ErrUnexpectedEOF) {
		err = nil // closed without close_notify, as servers do
	}
	return out, err
}

// settle waits until d has no request in progress.
func (d *diffRecorder) settle() {
	deadline := time.Now().Add(5 * time.Second)
	for d.active.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// diffCheck runs stream through net/http and each engine and reports a
// violation of the differential rule.
func diffCheck(t testing.TB, stream []byte, cut int) {
	r := startDiffRig(t)
	want := r.reference(t, stream, cut)
	var lenient []diffRequest // net/http's reading without the empty lines fasthttp skips
	for _, e := range r.engines {
		before := faults(e.p)
		out, err := diffExchange(e.addr, e.tls, stream, cut)
		if err != nil && !isTimeout(err) && !isReset(err) {
			t.Fatalf("%s: %v", e.name, err)
		}
		r.gw.settle()
		got := r.gw.take()
		if faults(e.p) != before {
			t.Fatalf("%s: the stream made a loop fault (L10)", e.name)
		}
		bad := unmatched(got, want)
		if bad >= 0 { // fasthttp parses what the loops hand over, too
			if lenient == nil {
				if s, ok := stripBlankLines(stream); ok {
					lenient = r.reference(t, s, len(s))
				} else {
					lenient = want
				}
			}
			if unmatched(got, lenient) < 0 {
				bad = -1
			}
		}
		if bad >= 0 {
			t.Fatalf("%s forwarded request %d of %d as\n  %v\nwhich is none of the requests net/http served, in order:\n  %v\nanswers: %q", e.name, bad, len(got), got[bad], want, out)
		}
		proto := "http"
		if e.tls != nil {
			proto = "https"
		}
		for i, g := range got {
			fwdWant := fmt.Sprintf("xff=%q proto=%q xfh=%q fwd=%q xri=%q", []string{"127.0.0.1"}, []string{proto}, []string{g.Host}, []string(nil), []string(nil))
			if g.Forwarded != fwdWant {
				t.Fatalf("%s forwarded request %d with %s, want %s", e.name, i, g.Forwarded, fwdWant)
			}
		}
	}
}

// unmatched is the index of the first request of got that is not, in
// order, one of want's (got must be a subsequence of want: an engine may
// answer a request itself, never forward one net/http would not serve);
// -1 if there is none.
func unmatched(got, want []diffRequest) int {
	j := 0
	for i, g := range got {
		g.Forwarded = ""
		for ; j < len(want); j++ {
			w := want[j]
			w.Forwarded = ""
			if reflect.DeepEqual(g, w) {
				break
			}
		}
		if j == len(want) {
			return i
		}
		j++
	}
	return -1
}

// reference is what net/http's server serves of stream.
func (r *diffRig) reference(t testing.TB, stream []byte, cut int) []diffRequest {
	if _, err := diffExchange(r.refAddr, nil, stream, cut); err != nil && !isTimeout(err) && !isReset(err) {
		t.Fatalf("net/http: %v", err)
	}
	r.ref.settle()
	return r.ref.take()
}

// stripBlankLines removes the empty lines (CRLF or LF) that come where a
// request line is due, as net/http frames the stream's requests; true if
// there were any. The goroutine engine (fasthttp, which also parses what
// the loops hand over) skips them, as RFC 9112 §2.2 says a server should;
// net/http and the loops refuse them. It is the one
// difference the rule allows (strict.go): the balancer writes each
// request anew, so a gateway never sees those lines.
func stripBlankLines(stream []byte) ([]byte, bool) {
	var out []byte
	rd := bytes.NewReader(stream)
	br := bufio.NewReader(rd)
	offset := func() int { return len(stream) - rd.Len() - br.Buffered() }
	stripped := false
	for {
		for {
			b, err := br.Peek(1)
			if err != nil || (b[0] != '\n' && b[0] != '\r') {
				break
			}
			if b[0] == '\r' {
				if b2, err := br.Peek(2); err != nil || b2[1] != '\n' {
					break
				}
				_, _ = br.Discard(1)
			}
			_, _ = br.Discard(1)
			stripped = true
		}
		from := offset()
		req, err := http.ReadRequest(br)
		if err == nil {
			_, err = io.Copy(io.Discard, req.Body)
		}
		end := offset()
		if err != nil {
			out = append(out, stream[from:]...)
			return out, stripped
		}
		out = append(out, stream[from:end]...)
	}
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// FuzzDifferential holds both engines to net/http's reading of whole
// connection streams (the rule above). Its seeds are the classic
// request-smuggling and parser-confusion payloads; what it found is kept
// in testdata/fuzz/FuzzDifferential.
func FuzzDifferential(f *testing.F) {
	for _, s := range diffSeeds {
		f.Add([]byte(s), uint16(len(s)))
		f.Add([]byte(s), uint16(len(s)/2))
	}
	f.Fuzz(func(t *testing.T, stream []byte, cut uint16) {
		if len(stream) > 8<<10 {
			return
		}
		diffCheck(t, stream, int(cut))
	})
}

// TestDifferentialSeeds runs the seeds in every test run, each named, so
// that a failure says which payload.
func TestDifferentialSeeds(t *testing.T) {
	for i, s := range diffSeeds {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			diffCheck(t, []byte(s), len(s))
			diffCheck(t, []byte(s), len(s)/2)
		})
	}
}

const (
	hdr = "Host: gw.example.com\r\n"
	get = "GET /a HTTP/1.1\r\n" + hdr + "\r\n"
)

var diffSeeds = []string{
	get,
	get + get + get,
	get + "POST /b HTTP/1.1\r\n" + hdr + "Content-Length: 1\r\n\r\nx",
	"POST /b HTTP/1.1\r\n" + hdr + "Content-Length: 5\r\n\r\nhello" + get,
	// Framing: CL.TE, TE.CL, TE.TE, duplicates, odd numbers.
	"POST /b HTTP/1.1\r\n" + hdr + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX" + get,
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n1\r\nx\r\n0\r\n\r\n",
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: identity\r\n\r\n" + get,
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: xchunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding:  chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked, identity\r\n\r\n1\r\nx\r\n0\r\n\r\n",
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: identity, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding\t: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\n\r\n1;ext=1\r\nx\r\n0\r\nTrailer: t\r\n\r\n" + get,
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\n\r\n1\nx\n0\n\n" + get,
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Trail: t\r\n\r\n" + get,
	"POST /b HTTP/1.1\r\n" + hdr + "X-Dup: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Dup: 2\r\n\r\n" + get,
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Forwarded-For: 7.7.7.7\r\nAuthorization: x\r\nHost: evil.test\r\n\r\n" + get,
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\n\r\n0x1\r\nx\r\n0\r\n\r\n",
	"POST /b HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\n\r\nffffffffffffffff1\r\nx\r\n0\r\n\r\n",
	"POST /b HTTP/1.1\r\n" + hdr + "Content-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
	"POST /b HTTP/1.1\r\n" + hdr + "Content-Length: 2\r\nContent-Length: 2\r\n\r\nxy",
	"POST /b HTTP/1.1\r\n" + hdr + "Content-Length: 1, 1\r\n\r\nx",
	"POST /b HTTP/1.1\r\n" + hdr + "Content-Length: +1\r\n\r\nx",
	"POST /b HTTP/1.1\r\n" + hdr + "Content-Length: 0x1\r\n\r\nx",
	"POST /b HTTP/1.1\r\n" + hdr + "Content-Length : 1\r\n\r\nx",
	"POST /b HTTP/1.1\r\n" + hdr + "Content-Length: 1\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "Content-Length: 4\r\n\r\n" + "GET /s HTTP/1.1\r\n" + hdr + "\r\n",
	// Heads: line endings, folding, odd bytes, names.
	"GET /a HTTP/1.1\n" + "Host: gw.example.com\n\n",
	"GET /a HTTP/1.1\r\nHost: gw.example.com\r\nX: a\nY: b\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: gw.example.com\rX: y\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "X-Folded: a\r\n b\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + " X-Lead: a\r\n\r\n",
	"GET /a HTTP/1.1\r\n X-Lead: a\r\n" + hdr + "\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "X-Nul: a\x00b\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "X Space: a\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "X-Bad(name): a\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "NoColon\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + ": empty-name\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "X-Obs: caf\xe9\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "X-Del: a\x7fb\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "X-Dup: 1\r\nX-Dup: 2\r\nx-dup: 3\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "X-Ws:   padded  \t\r\n\r\n",
	"\r\n\r\n" + get,
	"\r\n" + get,
	// Request lines.
	"GET /a HTTP/1.0\r\n" + hdr + "Connection: keep-alive\r\n\r\n" + get,
	"GET /a HTTP/1.0\r\n\r\n",
	"GET /a HTTP/2.0\r\n" + hdr + "\r\n",
	"GET /a HTTP/1.2\r\n" + hdr + "\r\n",
	"GET /a HTTP/1.10\r\n" + hdr + "\r\n",
	"GET /a http/1.1\r\n" + hdr + "\r\n",
	"GET  /a HTTP/1.1\r\n" + hdr + "\r\n",
	"GET /a  HTTP/1.1\r\n" + hdr + "\r\n",
	"GET\t/a HTTP/1.1\r\n" + hdr + "\r\n",
	"GET /a\r\n" + hdr + "\r\n",
	"GET /a b HTTP/1.1\r\n" + hdr + "\r\n",
	"G(T /a HTTP/1.1\r\n" + hdr + "\r\n",
	"get /a HTTP/1.1\r\n" + hdr + "\r\n",
	"GET /a#frag HTTP/1.1\r\n" + hdr + "\r\n",
	"GET /a?q=1&r=%zz HTTP/1.1\r\n" + hdr + "\r\n",
	"GET /a/../b HTTP/1.1\r\n" + hdr + "\r\n",
	"GET //a HTTP/1.1\r\n" + hdr + "\r\n",
	"GET * HTTP/1.1\r\n" + hdr + "\r\n",
	"OPTIONS * HTTP/1.1\r\n" + hdr + "\r\n",
	"GET a HTTP/1.1\r\n" + hdr + "\r\n",
	"GET http://gw.example.com/a HTTP/1.1\r\n" + hdr + "\r\n",
	"GET http://evil.test/a HTTP/1.1\r\n" + hdr + "\r\n",
	"GET https://evil.test/a HTTP/1.1\r\n" + hdr + "\r\n",
	"GET http://evil.test HTTP/1.1\r\n" + hdr + "\r\n",
	"CONNECT gw.example.com:443 HTTP/1.1\r\n" + hdr + "\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	// Host.
	"GET /a HTTP/1.1\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "Host: evil.test\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: adv.test:abc\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: adv.test:80\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a/b\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: \r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a@b\r\n\r\n",
	"GET /a HTTP/1.1\r\nHOST: gw.example.com\r\n\r\n",
	// Hop-by-hop and forwarding.
	"GET /a HTTP/1.1\r\n" + hdr + "Connection: Host\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "Connection: X-Foo, close\r\nX-Foo: 1\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "X-Forwarded-For: 7.7.7.7\r\nX-Forwarded-For: 8.8.8.8\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Host: evil.test\r\nForwarded: for=7.7.7.7\r\nX-Real-IP: 7.7.7.7\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "Expect: 100-continue\r\n\r\n",
	"POST /a HTTP/1.1\r\n" + hdr + "Expect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
	"POST /a HTTP/1.1\r\n" + hdr + "Expect: something-else\r\nContent-Length: 1\r\n\r\nx",
	"GET /a HTTP/1.1\r\n" + hdr + "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + "GET /s HTTP/1.1\r\nHost: evil.test\r\n\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + "TE: trailers\r\nTrailer: X\r\nKeep-Alive: 1\r\nProxy-Authorization: x\r\n\r\n",
	// Sizes.
	"GET /a HTTP/1.1\r\n" + hdr + "X-Long: " + strings.Repeat("a", 5000) + "\r\n\r\n",
	"GET /" + strings.Repeat("a", 5000) + " HTTP/1.1\r\n" + hdr + "\r\n",
	"GET /a HTTP/1.1\r\n" + hdr + strings.Repeat("X-Many: 1\r\n", 300) + "\r\n",
	"garbage\r\n\r\n",
	"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
}

// discardLogger drops everything: faults are counted, and the fuzzer's
// streams would fill the output.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func faults(p *Proxy) float64 {
	var m dto.Metric
	total := 0.0
	for _, c := range []prometheus.Counter{p.m.faultConn, p.m.faultLoop} {
		_ = c.Write(&m)
		total += m.GetCounter().GetValue()
	}
	return total
}
