package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// largeGateway is a gateway for large answers: it answers /large with
// size bytes of a fixed pattern (with Content-Length, or chunked when the
// query has chunked=1) to any method, /small with "small", and counts the
// requests and the connections it gets.
type largeGateway struct {
	*httptest.Server
	requests       atomic.Int64
	opened, closed atomic.Int64
	body           []byte
}

func largeBackend(t *testing.T, size int) *largeGateway {
	t.Helper()
	g := &largeGateway{body: bytes.Repeat([]byte("0123456789abcdef"), size/16)}
	g.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.requests.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/small" {
			_, _ = w.Write([]byte("small"))
			return
		}
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", strconv.Itoa(len(g.body)))
		}
		for rest := g.body; len(rest) > 0; { // in pieces, flushed: chunked when no length
			k := min(len(rest), 64<<10)
			if _, err := w.Write(rest[:k]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			rest = rest[k:]
		}
	}))
	g.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			g.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			g.closed.Add(1)
		}
	}
	g.Start()
	t.Cleanup(g.Close)
	return g
}

// Answers larger than MaxBufferedResponse reach clients whole, streamed
// (HTTP/1.1 with Content-Length or chunked, and HTTP/2), fetched once
// whatever the method, and their gateway connection is used again after
// them. Small answers on the same connections afterwards are buffered as
// before.
func TestLargeAnswersStreamed(t *testing.T) {
	const limit = 256 << 10
	gw := largeBackend(t, 3<<20)
	body := gw.body
	lb := startLB(t, Options{MaxBufferedResponse: limit}, addr(gw.Server))
	want := sha256.Sum256(body)
	cl := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	do := func(method, path string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, lb.url+path, strings.NewReader("x"))
		req.Host = "gw.example.com"
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: reading: %v", method, path, err)
		}
		return resp, b
	}
	get := func(method, path string) (int, []byte) {
		t.Helper()
		resp, b := do(method, path)
		return resp.StatusCode, b
	}

	if code, b := get("GET", "/small"); code != 200 || string(b) != "small" {
		t.Fatalf("GET /small: %d %q", code, b)
	}
	for _, c := range []struct {
		method, path string
		fetches      int64
	}{
		{"GET", "/large", 1},            // Content-Length: streamed at once
		{"POST", "/large", 1},           // whatever the method
		{"GET", "/large?chunked=1", 1},  // chunked: buffered, then streamed on
		{"POST", "/large?chunked=1", 1}, // whatever the method
	} {
		before, conns := gw.requests.Load(), gw.opened.Load()
		code, b := get(c.method, c.path)
		if code != 200 || sha256.Sum256(b) != want {
			t.Errorf("%s %s: %d, %d bytes (want 200, %d bytes intact)", c.method, c.path, code, len(b), len(body))
		}
		if n := gw.requests.Load() - before; n != c.fetches {
			t.Errorf("%s %s: the gateway saw %d requests, want %d", c.method, c.path, n, c.fetches)
		}
		// The same client connection goes on with buffered answers.
		if code, b := get("GET", "/small"); code != 200 || string(b) != "small" {
			t.Errorf("GET /small after %s %s: %d %q", c.method, c.path, code, b)
		}
		// Read to its end, the streamed answer's connection went back to
		// the pool and served /small.
		if n := gw.opened.Load() - conns; n != 0 {
			t.Errorf("%s %s then GET /small opened %d new gateway connections, want 0", c.method, c.path, n)
		}
	}

	// HEAD: the header's length, no body, and the connection is fine.
	resp, b := do("HEAD", "/large")
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(body)) || len(b) != 0 {
		t.Errorf("HEAD /large: %d, Content-Length %d, %d body bytes", resp.StatusCode, resp.ContentLength, len(b))
	}
	if code, b := get("GET", "/small"); code != 200 || string(b) != "small" {
		t.Errorf("GET /small after HEAD /large: %d %q", code, b)
	}

	// HTTP/2 clients get the stream too.
	tl := startTLSLB(t, Options{MaxBufferedResponse: limit}, addr(gw.Server))
	pool := tl.pool
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "gw.example.com"}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	h2 := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	for _, path := range []string{"/large", "/large?chunked=1"} {
		req, _ := http.NewRequest("GET", "https://"+tl.addr+path, nil)
		req.Host = "gw.example.com"
		resp, err := h2.Do(req)
		if err != nil {
			t.Fatalf("h2 GET %s: %v", path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || resp.ProtoMajor != 2 || sha256.Sum256(b) != want {
			t.Errorf("h2 GET %s: %s %s, %d bytes (%v)", path, resp.Proto, resp.Status, len(b), err)
		}
	}
}

// A client that leaves in the middle of a streamed answer: the gateway
// connection, with the rest of the body still on it, is closed, not put
// back in the pool, and the next requests get their own answers.
func TestAbandonedStreamClosesGatewayConnection(t *testing.T) {
	gw := largeBackend(t, 8<<20)
	lb := startLB(t, Options{MaxBufferedResponse: 64 << 10}, addr(gw.Server))
	c, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET /large HTTP/1.1\r\nHost: gw.example.com\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /large: %v %v", resp, err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 100<<10)); err != nil {
		t.Fatalf("reading the start of the answer: %v", err)
	}
	closed := gw.closed.Load()
	hc := lb.h.Load().Routes[0].Upstreams[0].Ext.(*upstreamExt).hc
	c.Close() // with most of the 8 MiB unread

	// Until the balancer is done with the stream's connection: closed, or
	// (wrongly) idle in the pool.
	deadline := time.Now().Add(20 * time.Second)
	for gw.closed.Load() == closed && hc.IdleConnsCount() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the gateway connection of the abandoned answer is still in use after 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := hc.IdleConnsCount(); n != 0 || gw.closed.Load() == closed {
		t.Fatalf("the abandoned answer's gateway connection went back to the pool (%d idle) instead of being closed", n)
	}
	cl := &http.Client{Timeout: 10 * time.Second}
	for i := range 5 {
		req, _ := http.NewRequest("GET", lb.url+"/small", nil)
		req.Host = "gw.example.com"
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("GET /small #%d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "small" {
			t.Errorf("GET /small #%d after the abandoned stream: %d %q", i, resp.StatusCode, b)
		}
	}
}

// rawGateway serves keep-alive requests on raw connections: /hints gets a
// 103 Early Hints and then the final answer; /trailer a chunked answer
// whose trailer comes in a later segment than its last chunk, so a round
// trip that does not wait for it leaves it on the connection;
// /until-close 256 KiB ended by closing the connection (HTTP/1.0 style).
// It counts the connections it accepts and the /until-close requests.
func rawGateway(t *testing.T) (string, *atomic.Int64, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var opened, requests atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			opened.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					switch req.URL.Path {
					case "/hints":
						_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"+
							"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
					case "/until-close": // no length, no chunks: the body ends when the connection does
						requests.Add(1)
						_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
						_, _ = c.Write(bytes.Repeat([]byte("0123456789abcdef"), 1<<14)) // 256 KiB
						return
					case "/switch": // 101 to a request that asked for no upgrade, then another protocol
						_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: Upgrade\r\n\r\nnot http")
					case "/trailer":
						_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"+
							"8\r\nchunk-1 \r\n7\r\nchunk-2\r\n0\r\n")
						time.Sleep(20 * time.Millisecond) // the trailer comes later (part of the answer's shape, not a wait)
						_, _ = io.WriteString(c, "X-Checksum: abc\r\n\r\n")
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), &opened, &requests
}

// The round trip reads past interim answers (103 Early Hints) to the
// final one, and reads a chunked answer's trailer, so the gateway
// connection is used again after both.
func TestInterimAnswersAndTrailers(t *testing.T) {
	gw, opened, _ := rawGateway(t)
	lb := startLB(t, Options{MaxBufferedResponse: 1 << 20}, gw)
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	for i, c := range []struct{ path, body string }{
		{"/hints", "final"}, {"/trailer", "chunk-1 chunk-2"}, {"/hints", "final"}, {"/trailer", "chunk-1 chunk-2"}, {"/hints", "final"},
	} {
		req, _ := http.NewRequest("GET", lb.url+c.path, nil)
		req.Host = "gw.example.com"
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", c.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != c.body {
			t.Errorf("GET %s (#%d): %d %q, want 200 %q", c.path, i, resp.StatusCode, b, c.body)
		}
	}
	if n := opened.Load(); n != 1 {
		t.Errorf("the gateway saw %d connections for five requests in a row, want 1", n)
	}
}

// An answer that ends when the gateway closes (no length, no chunks) is
// buffered when small; past the limit it is streamed on, fetched once
// whatever the method.
func TestUntilCloseAnswers(t *testing.T) {
	gw, _, requests := rawGateway(t)
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<14)
	for _, limit := range []int{64 << 10, 1 << 20} { // streamed, then buffered
		lb := startLB(t, Options{MaxBufferedResponse: limit}, gw)
		cl := &http.Client{Timeout: 10 * time.Second}
		for _, method := range []string{"GET", "POST"} {
			before := requests.Load()
			req, _ := http.NewRequest(method, lb.url+"/until-close", nil)
			req.Host = "gw.example.com"
			resp, err := cl.Do(req)
			if err != nil {
				t.Fatalf("%s /until-close: %v", method, err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || !bytes.Equal(b, want) || requests.Load()-before != 1 {
				t.Errorf("limit %d, %s /until-close: %d, %d bytes, %d fetches, %v (want 200, %d bytes, 1 fetch)",
					limit, method, resp.StatusCode, len(b), requests.Load()-before, err, len(want))
			}
			if buffered := resp.ContentLength == int64(len(want)); buffered != (limit > len(want)) {
				t.Errorf("limit %d, %s /until-close: Content-Length %d (buffered answers have one, streamed ones are chunked)", limit, method, resp.ContentLength)
			}
		}
	}
}

// A 101 answer to a request that asked for no upgrade: the gateway
// connection speaks something else after it, so it is closed, not put
// back in the pool (a POST on it would fail).
func TestUnaskedSwitchClosesConnection(t *testing.T) {
	gw, opened, _ := rawGateway(t)
	lb := startLB(t, Options{}, gw)
	c, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /switch HTTP/1.1\r\nHost: gw.example.com\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 101") {
		t.Fatalf("GET /switch: %q %v", line, err)
	}
	req, _ := http.NewRequest("POST", lb.url+"/hints", strings.NewReader("x"))
	req.Host = "gw.example.com"
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "final" || opened.Load() != 2 {
		t.Errorf("POST /hints after the 101: %d %q on %d gateway connections (want 200, a new connection)", resp.StatusCode, b, opened.Load())
	}
}
