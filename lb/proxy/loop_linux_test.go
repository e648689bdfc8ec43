package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestLoopEngine runs the request path's tests with the event-loop engine
// serving: what it serves itself (L2) must behave as the goroutine engine
// does, and what it hands over (L3, L4) must arrive whole.
func TestLoopEngine(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"BalancesAndRewritesHeaders", TestProxyBalancesAndRewritesHeaders},
		{"TrustedProxyKeepsForwarded", TestTrustedProxyKeepsForwarded},
		{"RetryOnDialFailureAnyMethod", TestRetryOnDialFailureAnyMethod},
		{"RetryIdempotentOn503Only", TestRetryIdempotentOn503Only},
		{"NoInstanceIs503WithRetryAfter", TestNoInstanceIs503WithRetryAfter},
		{"AllDeadIs502", TestAllDeadIs502},
		{"HeaderAndBodyLimits", TestHeaderAndBodyLimits},
		{"WebSocketEcho", TestWebSocketEcho},
		{"AccessLogLine", TestAccessLogLine},
		{"GatewayConnectionCloseDoesNotLeak", TestGatewayConnectionCloseDoesNotLeak},
		{"HeadAndChunkedAnswers", TestHeadAndChunkedAnswers},
		{"GatewayConnectionUsedLastGoesFirst", TestGatewayConnectionUsedLastGoesFirst},
		{"LargeAnswersStreamed", TestLargeAnswersStreamed},
		{"AbandonedStreamClosesGatewayConnection", TestAbandonedStreamClosesGatewayConnection},
		{"InterimAnswersAndTrailers", TestInterimAnswersAndTrailers},
		{"UntilCloseAnswers", TestUntilCloseAnswers},
		{"UnaskedSwitchClosesConnection", TestUnaskedSwitchClosesConnection},
		{"HTTP1SlowReadersBudget", TestHTTP1SlowReadersBudget},
		{"AnswersBeyondTheBudgetStreamed", TestAnswersBeyondTheBudgetStreamed},
		{"UpgradeAnsweredAsHTTPStaysHTTP", TestUpgradeAnsweredAsHTTPStaysHTTP},
		{"UpgradeSwitchMustAgree", TestUpgradeSwitchMustAgree},
		{"TunnelIdleTimeout", TestTunnelIdleTimeout},
		{"TunnelLimit", TestTunnelLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testLoop = true
			defer func() { testLoop = false }()
			tc.f(t)
		})
	}
}

// startLoop is startLB with the event-loop engine.
func startLoop(t *testing.T, opt Options, sopt ServerOptions, backends ...string) *testLB {
	t.Helper()
	testLoop = true
	defer func() { testLoop = false }()
	return startLBWith(t, opt, sopt, backends...)
}

var loopSopt = ServerOptions{ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: 5 * time.Second, MaxHeaderBytes: 4096, MaxBodyBytes: 1 << 20}

func handoffs(t *testing.T, lb *testLB) (request, answer float64) {
	t.Helper()
	return counterValue(t, lb.p.m.handRequest), counterValue(t, lb.p.m.handAnswer)
}

// What a loop serves itself (L2) it serves without handing anything over:
// balanced, headers rewritten, HEAD and bodyless methods, 404 and 503 of
// its own, on one keep-alive connection.
func TestLoopServesItself(t *testing.T) {
	a, b := backend(t, "a", 200), backend(t, "b", 200)
	lb := startLoop(t, Options{}, loopSopt, addr(a), addr(b))
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	seen := map[string]int{}
	for i := range 20 {
		method := []string{"GET", "DELETE", "POST"}[i%3] // POST without a body: Content-Length: 0
		req, _ := http.NewRequest(method, lb.url+"/p?q=1", http.NoBody)
		req.Host = "gw.example.com"
		req.Header.Set("Keep-Alive", "hop")
		req.Header.Set("X-Forwarded-For", "6.6.6.6")
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("%s %d: %v", method, i, err)
		}
		body := readBody(t, resp)
		resp.Body.Close()
		name := resp.Header.Get("X-Backend")
		seen[name]++
		if resp.StatusCode != 200 || body != name+":" {
			t.Fatalf("%s %d: %d %q", method, i, resp.StatusCode, body)
		}
		if resp.Header.Get("X-Seen-XFF") != "127.0.0.1" || resp.Header.Get("X-Seen-Proto") != "http" ||
			resp.Header.Get("X-Seen-XFH") != "gw.example.com" || resp.Header.Get("X-Seen-URI") != "/p?q=1" ||
			resp.Header.Get("X-Seen-Foo") != "" || resp.Header.Get("X-Hop") != "" {
			t.Fatalf("%s %d: headers not rewritten: %v", method, i, resp.Header)
		}
	}
	if seen["a"] != 10 || seen["b"] != 10 {
		t.Errorf("round robin over two instances: %v", seen)
	}
	req, _ := http.NewRequest("HEAD", lb.url+"/", nil)
	req.Host = "gw.example.com"
	if resp, err := cl.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	req, _ = http.NewRequest("GET", lb.url+"/", nil)
	req.Host = "nowhere.example.com"
	if resp, err := cl.Do(req); err != nil || resp.StatusCode != 404 || readBody(t, resp) != "gwnomad-lb: no route for this host\n" {
		t.Fatalf("unknown host: %v %v", resp, err)
	}
	if r, an := handoffs(t, lb); r != 0 || an != 0 {
		t.Errorf("handed over %v connections for requests and %v for answers, want none", r, an)
	}
	if n := counterValue(t, lb.p.m.NoRoute); n != 1 {
		t.Errorf("no-route counter %v, want 1", n)
	}
	ok := 0.0
	for _, u := range lb.h.Load().Routes[0].Upstreams {
		ok += counterValue(t, u.Ext.(*upstreamExt).codes[2])
	}
	if ok != 21 {
		t.Errorf("2xx counted %v, want 21", ok)
	}
}

// A dead instance: connection failures are retried elsewhere, whatever
// the method, and count against its health; 503 is retried for
// idempotent methods only; all dead is 502.
func TestLoopRetries(t *testing.T) {
	a := backend(t, "a", 200)
	lb := startLoop(t, Options{Tries: 3}, loopSopt, closedAddr(t), addr(a))
	for i := range 6 {
		resp := do(t, []string{"GET", "POST"}[i%2], lb.url+"/", "gw.example.com", "", nil)
		if body := readBody(t, resp); resp.StatusCode != 200 || body != "a:" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	ejected := 0
	for _, u := range lb.h.Load().Routes[0].Upstreams {
		if u.Ejections() > 0 {
			ejected++
		}
	}
	if ejected != 1 {
		t.Errorf("the dead instance was not ejected (ejected=%d)", ejected)
	}

	bad, good := backend(t, "bad", 503), backend(t, "good", 200)
	lb2 := startLoop(t, Options{Tries: 2}, loopSopt, addr(bad), addr(good))
	posts503 := 0
	for range 4 {
		if resp := do(t, "POST", lb2.url+"/", "gw.example.com", "", nil); resp.StatusCode == 503 {
			posts503++
		}
	}
	if n := counterValue(t, lb2.p.m.Retries.WithLabelValues("gw.example.com")); posts503 != 2 || n != 0 {
		t.Errorf("POST: %d answered 503 (want 2), %v retries (want 0)", posts503, n)
	}
	lb3 := startLoop(t, Options{Tries: 2}, loopSopt, addr(bad), addr(good))
	for i := range 4 {
		if resp := do(t, "GET", lb3.url+"/", "gw.example.com", "", nil); resp.StatusCode != 200 {
			t.Errorf("GET %d: %d", i, resp.StatusCode)
		}
	}
	if n := counterValue(t, lb3.p.m.Retries.WithLabelValues("gw.example.com")); n < 1 {
		t.Errorf("no GET retry counted")
	}
	// Only "bad" left: its 503 is the client's answer, not a 502.
	lb4 := startLoop(t, Options{Tries: 3}, loopSopt, addr(bad))
	if resp := do(t, "GET", lb4.url+"/", "gw.example.com", "", nil); resp.StatusCode != 503 || readBody(t, resp) != "bad:" {
		t.Errorf("GET with one instance answering 503: %d", resp.StatusCode)
	}
	lb5 := startLoop(t, Options{Tries: 2}, loopSopt, closedAddr(t), closedAddr(t))
	if resp := do(t, "GET", lb5.url+"/", "gw.example.com", "", nil); resp.StatusCode != 502 {
		t.Errorf("all dead: %d, want 502", resp.StatusCode)
	}
	for _, l := range []*testLB{lb, lb2, lb3, lb4, lb5} {
		if r, an := handoffs(t, l); r != 0 || an != 0 {
			t.Errorf("handed over %v connections for requests and %v for answers, want none", r, an)
		}
	}
}

// Requests a loop does not serve go over with their bytes (L3), answers
// it does not hold are relayed (L4); either way the client's connection
// goes on serving its next requests.
func TestLoopHandsOver(t *testing.T) {
	gw := largeBackend(t, 2<<20)
	a := backend(t, "a", 200)
	lb := startLoop(t, Options{MaxBufferedResponse: 64 << 10}, loopSopt, addr(a))
	lbLarge := startLoop(t, Options{MaxBufferedResponse: 64 << 10}, loopSopt, gw.Listener.Addr().String())

	c, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	// A body, then a bodyless request, pipelined in one write.
	io.WriteString(c, "POST /x HTTP/1.1\r\nHost: gw.example.com\r\nContent-Length: 7\r\n\r\npayloadGET /y HTTP/1.1\r\nHost: gw.example.com\r\n\r\n")
	for i, want := range []string{"a:payload", "a:"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != want {
			t.Fatalf("answer %d: %d %q, want 200 %q", i, resp.StatusCode, b, want)
		}
	}
	if r, _ := handoffs(t, lb); r != 1 {
		t.Errorf("handed over %v connections for requests, want 1", r)
	}

	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	for _, path := range []string{"/large", "/large?chunked=1", "/small", "/large?chunked=1", "/small"} {
		req, _ := http.NewRequest("GET", lbLarge.url+path, nil)
		req.Host = "gw.example.com"
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := gw.body
		if path == "/small" {
			want = []byte("small")
		}
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(b, want) {
			t.Fatalf("GET %s: %d, %d bytes, %v (want 200, %d bytes)", path, resp.StatusCode, len(b), err, len(want))
		}
	}
	if _, an := handoffs(t, lbLarge); an != 1 {
		// The first large answer moves the connection to the goroutine
		// engine, which serves the rest.
		t.Errorf("handed over %v connections for answers, want 1", an)
	}
}

// Pipelined requests are answered in order; an answer larger than the
// client's socket takes is written as the client reads it.
func TestLoopPipelinedAndSlowReader(t *testing.T) {
	gw := largeBackend(t, 1<<20)
	testSndBuf = 8192
	lb := startLoop(t, Options{}, loopSopt, gw.Listener.Addr().String())
	testSndBuf = 0
	c, err := smallReader.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	pipelineLargeSmall(t, c, gw.body)
	if r, an := handoffs(t, lb); r != 0 || an != 0 {
		t.Errorf("handed over %v/%v connections, want none", r, an)
	}
}

// smallReader dials with a small receive buffer: a large answer is written
// as the client reads it.
var smallReader = &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
	return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
}}

// pipelineLargeSmall sends GET /large, /small, /large in one write and
// reads their answers (large: body) in order, a little at a time.
func pipelineLargeSmall(t *testing.T, c io.ReadWriter, body []byte) *bufio.Reader {
	t.Helper()
	io.WriteString(c, "GET /large HTTP/1.1\r\nHost: gw.example.com\r\n\r\nGET /small HTTP/1.1\r\nHost: gw.example.com\r\n\r\nGET /large HTTP/1.1\r\nHost: gw.example.com\r\n\r\n")
	br := bufio.NewReaderSize(c, 512)
	for i, want := range [][]byte{body, []byte("small"), body} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(b, want) {
			t.Fatalf("answer %d: %d, %d bytes, %v (want %d bytes)", i, resp.StatusCode, len(b), err, len(want))
		}
	}
	return br
}

// Timeouts (L5): an idle connection is closed after idle_timeout, a
// request begun and not finished within read_timeout gets 408.
func TestLoopTimeouts(t *testing.T) {
	a := backend(t, "a", 200)
	sopt := loopSopt
	sopt.IdleTimeout, sopt.ReadTimeout = 300*time.Millisecond, 300*time.Millisecond
	lb := startLoop(t, Options{}, sopt, addr(a))
	idle, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	partial, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	io.WriteString(partial, "GET / HTTP/1.1\r\nHost: gw.exa")
	_ = idle.SetDeadline(time.Now().Add(10 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle connection: read %d, %v, want EOF", n, err)
	}
	_ = partial.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(partial), nil)
	if err != nil || resp.StatusCode != 408 {
		t.Errorf("unfinished request: %v %v, want 408", resp, err)
	}
}

// A gateway that closes its keep-alive connections behind the pool's back
// costs the clients nothing, and its health nothing (L6).
func TestLoopStalePooledConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				// Keep-alive promised, then closed at once.
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	lb := startLoop(t, Options{Tries: 1}, loopSopt, ln.Addr().String())
	for i := range 30 {
		resp := do(t, "GET", lb.url+"/", "gw.example.com", "", nil)
		if body := readBody(t, resp); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	u := lb.h.Load().Routes[0].Upstreams[0]
	if u.Ejections() != 0 || u.ConsecutiveFailures() != 0 {
		t.Errorf("the instance has %d ejections and %d failures, want none", u.Ejections(), u.ConsecutiveFailures())
	}
}

// Shutdown (L7): idle connections close at once, a request in flight is
// answered (with Connection: close), then Serve returns.
func TestLoopShutdown(t *testing.T) {
	gw := newSlowGateway(t)
	lb := startLoop(t, Options{}, loopSopt, addr(gw.Server))
	idle, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	shut := gw.shutDuring(t, busy, lb.loop)
	_ = idle.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle connection during shutdown: %v, want EOF", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("shutdown returned (%v) with a request in flight", err)
	default:
	}
	gw.finish(t, busy, shut)
}

// slowGateway answers "done"; GET /slow first waits for release.
type slowGateway struct {
	*httptest.Server
	release, arrived chan struct{}
}

func newSlowGateway(t *testing.T) *slowGateway {
	g := &slowGateway{release: make(chan struct{}), arrived: make(chan struct{}, 1)}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			g.arrived <- struct{}{}
			<-g.release
		}
		io.WriteString(w, "done")
	}))
	t.Cleanup(g.Close)
	return g
}

// shutDuring sends GET /slow on busy and, once it is at the gateway,
// shuts s down; the channel gets Shutdown's result.
func (g *slowGateway) shutDuring(t *testing.T, busy net.Conn, s *LoopServer) <-chan error {
	t.Helper()
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: gw.example.com\r\n\r\n")
	select {
	case <-g.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the gateway")
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := contextWithTimeout(10 * time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	return shut
}

// finish lets the request in flight go on: its answer must come with
// Connection: close, then Shutdown return.
func (g *slowGateway) finish(t *testing.T, busy net.Conn, shut <-chan error) {
	t.Helper()
	close(g.release)
	_ = busy.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil || resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("the request in flight: %v %v, want 200 with Connection: close", resp, err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "done" {
		t.Errorf("body %q", b)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown did not return")
	}
}

// A chunked answer that fits is decoded in the loop, in place as its
// chunks come, and sent with its length; interim answers are skipped and
// trailers dropped; the gateway connection is kept.
func TestLoopChunkedInPlace(t *testing.T) {
	gw := largeBackend(t, 512<<10)
	raw, opened, _ := rawGateway(t)
	lb := startLoop(t, Options{}, loopSopt, gw.Listener.Addr().String())
	lbRaw := startLoop(t, Options{}, loopSopt, raw)
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	get := func(l *testLB, path string, want []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", l.url+path, nil)
		req.Host = "gw.example.com"
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(b, want) || resp.ContentLength != int64(len(want)) {
			t.Fatalf("GET %s: %d, %d bytes, Content-Length %d, %v (want 200, %d bytes with their length)", path, resp.StatusCode, len(b), resp.ContentLength, err, len(want))
		}
	}
	for range 3 {
		get(lb, "/large?chunked=1", gw.body)
		get(lbRaw, "/trailer", []byte("chunk-1 chunk-2"))
		get(lbRaw, "/hints", []byte("final"))
	}
	if n := gw.opened.Load(); n != 1 {
		t.Errorf("the gateway saw %d connections for three chunked answers in a row, want 1", n)
	}
	if n := opened.Load(); n != 1 {
		t.Errorf("the raw gateway saw %d connections, want 1", n)
	}
	for _, l := range []*testLB{lb, lbRaw} {
		if r, an := handoffs(t, l); r != 0 || an != 0 {
			t.Errorf("handed over %v/%v connections, want none", r, an)
		}
	}
}

// A gateway registered by name is resolved when it appears (the loops do
// not resolve): requests reach it from the loop.
func TestLoopGatewayByName(t *testing.T) {
	a := backend(t, "a", 200)
	_, port, _ := net.SplitHostPort(addr(a))
	lb := startLoop(t, Options{}, loopSopt, net.JoinHostPort("localhost", port))
	for i := range 3 {
		resp := do(t, "GET", lb.url+"/", "gw.example.com", "", nil)
		if body := readBody(t, resp); resp.StatusCode != 200 || body != "a:" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if r, an := handoffs(t, lb); r != 0 || an != 0 {
		t.Errorf("handed over %v/%v connections, want none", r, an)
	}
}

// FuzzLoopChunked holds the loops' in-place chunked decoder to body.go's
// chunkedBody: fed the same bytes in pieces of any size (as reads bring
// them), it decodes the same body and ends at the same byte, or both
// fail; any data in any chunk size comes back the same.
func FuzzLoopChunked(f *testing.F) {
	f.Add([]byte("hello world"), uint8(3), uint8(1), []byte("5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte(""), uint8(0), uint8(7), []byte("1;a=b\r\nx\r\n0\r\nT: v\r\n\r\n"))
	f.Add([]byte("x"), uint8(1), uint8(2), []byte("2\r\nab\n0\r\n\r\n"))
	f.Add([]byte("xy"), uint8(0), uint8(255), []byte("1\r\naXY0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte, step, piece uint8, raw []byte) {
		body, _, err := loopDecode(chunk(data, int(step)+1), int(piece)+1)
		if err != nil || !bytes.Equal(body, data) {
			t.Fatalf("%d bytes in chunks of %d, read %d at a time: got %d bytes, %v", len(data), int(step)+1, int(piece)+1, len(body), err)
		}
		enc := append(bytes.Clone(raw), "NEXT"...)
		body, end, err := loopDecode(enc, int(piece)+1)
		ref, after, rerr := refDecode(enc)
		if (err == nil) != (rerr == nil) {
			t.Fatalf("%q: loop decoder %v, chunkedBody %v", raw, err, rerr)
		}
		if err == nil && (!bytes.Equal(body, ref) || string(enc[end:]) != string(after)) {
			t.Fatalf("%q: loop decoder %q then %q, chunkedBody %q then %q", raw, body, enc[end:], ref, after)
		}
	})
}

// loopDecode feeds enc to decodeChunks piece bytes at a time, as reads
// append to a gateway connection's buffer.
func loopDecode(enc []byte, piece int) (body []byte, end int, err error) {
	var st chunkState
	var buf []byte
	for n := 0; ; {
		done, err := decodeChunks(buf, &st, 1<<30)
		if err != nil {
			return nil, 0, err
		}
		if done {
			return buf[:st.dec], st.scan, nil
		}
		if n == len(enc) {
			return nil, 0, io.ErrUnexpectedEOF
		}
		k := min(piece, len(enc)-n)
		buf = append(buf, enc[n:n+k]...)
		n += k
	}
}

// refDecode is body.go's chunkedBody on enc, with a reader as large as the
// loops' line limit.
func refDecode(enc []byte) (body, after []byte, err error) {
	br := bufio.NewReaderSize(bytes.NewReader(enc), loopGatewayHead+1)
	cb := chunkedBody{br: br}
	body, err = io.ReadAll(&cb)
	if err != nil {
		return nil, nil, err
	}
	after, _ = io.ReadAll(br)
	return body, after, nil
}

// A burst of connections is spread over the loops (L1): the kernel wakes
// one loop, which would otherwise accept the whole burst itself.
func TestLoopSpreadsConnections(t *testing.T) {
	a := backend(t, "a", 200)
	if loopProcs < 2 {
		t.Skip("one processor: one loop")
	}
	lb := startLoop(t, Options{}, loopSopt, addr(a))
	waitServing(t, lb.loop)
	const n = 64
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			if c, err := net.Dial("tcp", lb.addr); err == nil {
				conns[i] = c
			}
		})
	}
	wg.Wait()
	for _, c := range conns {
		if c == nil {
			t.Fatal("a dial failed")
		}
		defer c.Close()
	}
	// Each connection's first request is served: all are in a loop.
	for i, c := range conns {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: gw.example.com\r\n\r\n")
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection %d: %v %v", i, resp, err)
		}
	}
	lo, hi := int32(n), int32(0)
	for _, lp := range lb.loop.loops {
		k := lp.load.Load()
		lo, hi = min(lo, k), max(hi, k)
	}
	if hi-lo > 2 { // loops deciding at the same moment may each keep one
		t.Errorf("connections per loop from %d to %d, want within two of each other", lo, hi)
	}
}

// waitServing waits until s's Serve started its loops.
// TestLoopLeavesASpareP: L9. Two servers have a loop per processor each,
// and the process one P more than that, not two.
func TestLoopLeavesASpareP(t *testing.T) {
	a := backend(t, "a", 200)
	for range 2 {
		lb := startLoop(t, Options{}, loopSopt, addr(a))
		waitServing(t, lb.loop)
		if len(lb.loop.loops) != loopProcs {
			t.Errorf("%d loops, want %d (GOMAXPROCS at start)", len(lb.loop.loops), loopProcs)
		}
		if got := runtime.GOMAXPROCS(0); got != loopProcs+1 {
			t.Errorf("GOMAXPROCS %d while serving, want %d", got, loopProcs+1)
		}
	}
}

func waitServing(t testing.TB, s *LoopServer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		serving := s.serving
		s.mu.Unlock()
		if serving {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the event loops did not start")
		}
		time.Sleep(time.Millisecond)
	}
}
