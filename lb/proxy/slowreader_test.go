package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// budgetWatch samples p's answer budget every millisecond until the test
// ends and keeps the highest use seen.
type budgetWatch struct {
	p    *Proxy
	peak atomic.Int64
}

func watchBudget(t *testing.T, p *Proxy) *budgetWatch {
	w := &budgetWatch{p: p}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if n := p.BufferedAnswerBytes(); n > w.peak.Load() {
				w.peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return w
}

// smallRcvBuf makes a dialer whose sockets have a small receive buffer:
// a client that does not read stalls the server's writes soon.
func smallRcvBuf() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}
}

// closedBy reads c to its end and tells whether the server closed it
// (EOF or a reset) before deadline.
func closedBy(c net.Conn, deadline time.Time) error {
	_ = c.SetReadDeadline(deadline)
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("still open: %w", err)
	}
	return nil
}

// h2 clients that open many streams for large answers and give them no
// flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0, no WINDOW_UPDATE)
// hold, each connection, at most max_buffered_per_connection_bytes of
// answers, and all together at most max_buffered_total_bytes; the answers
// beyond are streamed. Each stream is reset once the write timeout passes,
// which lets go of everything the connection held.
func TestH2ZeroWindowBudget(t *testing.T) {
	const size = 256 << 10
	g := largeBackend(t, size)
	opt := Options{MaxBufferedResponse: 1 << 20, MaxBufferedTotal: 12 * size, MaxBufferedPerConn: 8 * size}
	sopt := ServerOptions{ReadTimeout: 5 * time.Second, WriteTimeout: time.Second, IdleTimeout: 30 * time.Second, MaxHeaderBytes: 8192, MaxBodyBytes: 1 << 20}
	l := startH2LB(t, opt, sopt, nil, nil, g.Listener.Addr().String())
	w := watchBudget(t, l.p)
	const streams = 20
	open := func() (*rawH2, []uint32) {
		c := dialH2(t, l.addr, l.pool, nil, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		c.start()
		var ids []uint32
		for i := range streams {
			path := "/large"
			if i%2 == 1 {
				path += "?chunked=1"
			}
			ids = append(ids, c.get(path, "gw.example.com"))
		}
		return c, ids
	}
	all := func(ids []uint32, f func(*h2Stream) bool) func(map[uint32]*h2Stream) bool {
		return func(m map[uint32]*h2Stream) bool {
			for _, id := range ids {
				if !f(m[id]) {
					return false
				}
			}
			return true
		}
	}
	answered := func(s *h2Stream) bool { return s.status != "" }
	a, aIDs := open()
	a.wait("the answers' heads on the first connection", all(aIDs, answered))
	if n, peak := l.p.BufferedAnswerBytes(), w.peak.Load(); n == 0 || peak > int64(opt.MaxBufferedPerConn) {
		t.Errorf("one connection: %d bytes held now, %d at most, want some and at most %d", n, peak, opt.MaxBufferedPerConn)
	}
	if n := l.p.AnswersStreamedForBudget(); n < streams-8 {
		t.Errorf("one connection: %d answers streamed for the budget, want at least %d", n, streams-8)
	}
	b, bIDs := open()
	b.wait("the answers' heads on the second connection", all(bIDs, answered))
	if peak := w.peak.Load(); peak > int64(opt.MaxBufferedTotal) {
		t.Errorf("two connections: %d bytes held at most, want at most %d", peak, opt.MaxBufferedTotal)
	}
	if n := l.p.AnswersStreamedForBudget(); n < 2*streams-12 {
		t.Errorf("two connections: %d answers streamed for the budget, want at least %d", n, 2*streams-12)
	}
	if got := g.requests.Load(); got != 2*streams {
		t.Errorf("the gateway got %d requests, want %d", got, 2*streams)
	}
	for _, c := range []struct {
		c   *rawH2
		ids []uint32
	}{{a, aIDs}, {b, bIDs}} {
		c.c.wait("every stream reset by the write timeout", all(c.ids, func(s *h2Stream) bool {
			return s.reset && s.code == http2.ErrCodeInternal && len(s.body) == 0 && s.status == "200"
		}))
	}
	waitFor(t, "the budget given back", func() bool { return l.p.BufferedAnswerBytes() == 0 })
}

// An h2 client that stops reading its socket (with windows wide open) has
// its connection closed by the write timeout, and what its streams held
// given back. (Closing takes up to 5 s more: crypto/tls's Close sends its
// close_notify alert with a deadline of its own, which a stalled socket
// takes to the end.)
func TestH2StalledSocketClosed(t *testing.T) {
	const size = 256 << 10
	g := largeBackend(t, size)
	testSndBuf = 16 << 10
	ln := testListen(t)
	testSndBuf = 0
	sopt := ServerOptions{ReadTimeout: 5 * time.Second, WriteTimeout: 500 * time.Millisecond, IdleTimeout: 30 * time.Second, MaxHeaderBytes: 8192, MaxBodyBytes: 1 << 20}
	l := startH2LB(t, Options{MaxBufferedResponse: 1 << 20}, sopt, nil, ln, g.Listener.Addr().String())
	c := dialH2(t, l.addr, l.pool, smallRcvBuf(), http2.Setting{ID: http2.SettingInitialWindowSize, Val: 16 << 20})
	c.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 1<<30) })
	for range 10 {
		c.get("/large", "gw.example.com")
	}
	start := time.Now()
	waitFor(t, "the answers held", func() bool { return l.p.BufferedAnswerBytes() > 0 })
	waitFor(t, "the budget given back", func() bool { return g.requests.Load() == 10 && l.p.BufferedAnswerBytes() == 0 })
	if err := closedBy(c.conn, time.Now().Add(5*time.Second)); err != nil {
		t.Errorf("the connection of a client that does not read, after %v: %v", time.Since(start), err)
	}
}

// HTTP/1.1 clients that never read their answers (the goroutine engine)
// hold at most max_buffered_total_bytes of answers together; the answers
// beyond are streamed, and each connection is closed by the write timeout,
// which gives back what it held.
func TestHTTP1SlowReadersBudget(t *testing.T) {
	const size = 256 << 10
	g := largeBackend(t, size)
	opt := Options{MaxBufferedResponse: 1 << 20, MaxBufferedTotal: 8 * size}
	testSndBuf = 16 << 10
	defer func() { testSndBuf = 0 }()
	lb := startLBWith(t, opt, ServerOptions{ReadTimeout: 5 * time.Second, WriteTimeout: time.Second, IdleTimeout: 5 * time.Second,
		MaxHeaderBytes: 4096, MaxBodyBytes: 1 << 20}, g.Listener.Addr().String())
	w := watchBudget(t, lb.p)
	const clients = 16
	var conns []net.Conn
	for i := range clients {
		c, err := smallRcvBuf().Dial("tcp", lb.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		path := "/large"
		if i%2 == 1 {
			path += "?chunked=1"
		}
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: gw.example.com\r\n\r\n", path); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	start := time.Now()
	waitFor(t, "every answer held or streamed", func() bool {
		return g.requests.Load() == clients && lb.p.AnswersStreamedForBudget() >= clients-8
	})
	if n, peak := lb.p.BufferedAnswerBytes(), w.peak.Load(); n == 0 || peak > int64(opt.MaxBufferedTotal) {
		t.Errorf("%d bytes held now, %d at most, want some and at most %d", n, peak, opt.MaxBufferedTotal)
	}
	waitFor(t, "the budget given back", func() bool { return lb.p.BufferedAnswerBytes() == 0 })
	for i, c := range conns {
		if err := closedBy(c, time.Now().Add(5*time.Second)); err != nil {
			t.Errorf("client %d, after %v: %v", i, time.Since(start), err)
		}
	}
}

// An answer the budget cannot take whole reaches the client whole,
// streamed (with a length, chunked, over HTTP/1.1 and HTTP/2), and the
// budget is all given back after each; answers within it are still held.
func TestAnswersBeyondTheBudgetStreamed(t *testing.T) {
	const size = 256 << 10
	g := largeBackend(t, size)
	// No per-answer limit: only the budget makes these answers streamed.
	opt := Options{MaxBufferedTotal: 100 << 10}
	sopt := ServerOptions{ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: 5 * time.Second, MaxHeaderBytes: 8192, MaxBodyBytes: 1 << 20}
	h2 := startH2LB(t, opt, sopt, nil, nil, g.Listener.Addr().String())
	// Made last: the HTTP/1.1 path's transports take the budget of the
	// Proxy made last (processAnswers).
	lb := startLB(t, opt, g.Listener.Addr().String())
	h2c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h2.pool, ServerName: "gw.example.com"}, ForceAttemptHTTP2: true}, Timeout: 10 * time.Second}
	for _, tc := range []struct {
		name   string
		p      *Proxy
		cl     *http.Client
		url    string
		path   string
		stream bool
	}{
		{"http/1.1 length", lb.p, http.DefaultClient, lb.url, "/large", true},
		{"http/1.1 chunked", lb.p, http.DefaultClient, lb.url, "/large?chunked=1", true},
		{"http/1.1 small", lb.p, http.DefaultClient, lb.url, "/small", false},
		{"h2 length", h2.p, h2c, "https://" + h2.addr, "/large", true},
		{"h2 chunked", h2.p, h2c, "https://" + h2.addr, "/large?chunked=1", true},
		{"h2 small", h2.p, h2c, "https://" + h2.addr, "/small", false},
	} {
		before := tc.p.AnswersStreamedForBudget()
		req, _ := http.NewRequest("GET", tc.url+tc.path, nil)
		req.Host = "gw.example.com"
		resp, err := tc.cl.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := g.body
		if tc.path == "/small" {
			want = []byte("small")
		}
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, want) {
			t.Errorf("%s: %d, %d bytes (want %d), %v", tc.name, resp.StatusCode, len(body), len(want), err)
		}
		if streamed := tc.p.AnswersStreamedForBudget() - before; streamed != map[bool]int64{true: 1, false: 0}[tc.stream] {
			t.Errorf("%s: %d answers streamed for the budget", tc.name, streamed)
		}
		waitFor(t, tc.name+": the budget given back", func() bool { return tc.p.BufferedAnswerBytes() == 0 })
	}
}
