package proxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// largeBackend answers /large with size bytes of a fixed pattern (with
// Content-Length, or chunked when the query has chunked=1) to any method,
// /small with "small", and counts the requests it gets.
func largeBackend(t *testing.T, size int) (*httptest.Server, *atomic.Int64, []byte) {
	t.Helper()
	body := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/small" {
			_, _ = w.Write([]byte("small"))
			return
		}
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		for rest := body; len(rest) > 0; { // in pieces, flushed: chunked when no length
			k := min(len(rest), 64<<10)
			_, _ = w.Write(rest[:k])
			w.(http.Flusher).Flush()
			rest = rest[k:]
		}
	}))
	t.Cleanup(s.Close)
	return s, &n, body
}

// Answers larger than MaxBufferedResponse reach clients of idempotent
// requests whole, streamed (HTTP/1.1 with Content-Length or chunked, and
// HTTP/2); other requests get 502 and the gateway is not held at fault;
// small answers on the same connection afterwards are buffered as before.
func TestLargeAnswersStreamed(t *testing.T) {
	const limit = 256 << 10
	gw, requests, body := largeBackend(t, 3<<20)
	lb := startLB(t, Options{MaxBufferedResponse: limit}, addr(gw))
	want := sha256.Sum256(body)
	cl := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	get := func(method, path string) (int, []byte) {
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
		return resp.StatusCode, b
	}

	for _, path := range []string{"/large", "/large?chunked=1"} {
		before := requests.Load()
		code, b := get("GET", path)
		if code != 200 || sha256.Sum256(b) != want {
			t.Errorf("GET %s: %d, %d bytes (want 200, %d bytes intact)", path, code, len(b), len(body))
		}
		if n := requests.Load() - before; n != 2 {
			t.Errorf("GET %s: the gateway saw %d requests, want 2 (buffered try, then streamed)", path, n)
		}
		// The same client connection goes on with buffered answers.
		if code, b := get("GET", "/small"); code != 200 || string(b) != "small" {
			t.Errorf("GET /small after %s: %d %q", path, code, b)
		}
	}

	for range testHealth.ConsecutiveFailures + 1 {
		code, b := get("POST", "/large")
		if code != 502 || !strings.Contains(string(b), "max_buffered_response_bytes") {
			t.Errorf("POST /large: %d %q, want 502 naming max_buffered_response_bytes", code, b)
		}
	}
	// Not the gateway's fault: it was not ejected.
	if code, b := get("POST", "/small"); code != 200 || string(b) != "small" {
		t.Errorf("POST /small after the refused answers: %d %q (gateway ejected?)", code, b)
	}

	// HTTP/2 clients get the stream too.
	tl := startTLSLB(t, Options{MaxBufferedResponse: limit}, addr(gw))
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
