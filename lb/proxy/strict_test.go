package proxy

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// Each rule of strict.go, by the status it answers (0: forwarded).
func TestCheckHead(t *testing.T) {
	const h = "Host: gw.example.com\r\n"
	for _, tc := range []struct {
		head string
		want int
	}{
		{"GET /a HTTP/1.1\r\n" + h + "\r\n", 0},
		{"GET /a?q=1 HTTP/1.0\r\n" + h + "\r\n", 0},
		{"GET /a HTTP/1.0\r\n\r\n", 400},
		{"OPTIONS * HTTP/1.1\r\n" + h + "\r\n", 0},
		{"GET http://gw.example.com/a HTTP/1.1\r\n" + h + "\r\n", 0},
		{"GET http://GW.example.com:80/a HTTP/1.1\r\nHost: gw.example.com:80\r\n\r\n", 0},
		{"POST /a HTTP/1.1\r\n" + h + "Content-Length: 12\r\n\r\n", 0},
		{"POST /a HTTP/1.1\r\n" + h + "Transfer-Encoding: Chunked\r\n\r\n", 0},
		{"POST /a HTTP/1.1\r\n" + h + "Expect: 100-Continue\r\nContent-Length: 1\r\n\r\n", 0},
		{"GET /a HTTP/1.1\r\n" + h + "X-Obs: caf\xe9\tx\r\nX-Empty:\r\n\r\n", 0},
		{"GET /a HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 0},

		{"GET /a HTTP/1.1\n" + h + "\r\n", 400},
		{"GET /a HTTP/1.1\r\nHost: gw.example.com\n\r\n", 400},
		{"GET /a HTTP/1.1\r\n" + h + "X: a\rb\r\n\r\n", 400},
		{"\r\nGET /a HTTP/1.1\r\n" + h + "\r\n", 400},
		{"GET /a HTTP/1.1\r\n" + h + "X: a\r\n b\r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\n X: a\r\n" + h + "\r\n", 400},
		{"GET /a HTTP/1.1\r\n" + h + "X Y: a\r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\n" + h + "X : a\r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\n" + h + "NoColon\r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\n" + h + ": a\r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\n" + h + "X: a\x00b\r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\n" + h + "X: a\x7fb\r\n\r\n", 400},
		{"G(T /a HTTP/1.1\r\n" + h + "\r\n", 400},
		{"GET  /a HTTP/1.1\r\n" + h + "\r\n", 400},
		{"GET /a b HTTP/1.1\r\n" + h + "\r\n", 400},
		{"GET /a\r\n" + h + "\r\n", 400},
		{"GET /a http/1.1\r\n" + h + "\r\n", 400},
		{"GET /a#f HTTP/1.1\r\n" + h + "\r\n", 400},
		{"GET a HTTP/1.1\r\n" + h + "\r\n", 400},
		{"GET * HTTP/1.1\r\n" + h + "\r\n", 400},
		{"GET http://evil.test/a HTTP/1.1\r\n" + h + "\r\n", 400},
		{"GET http://u@gw.example.com/a HTTP/1.1\r\n" + h + "\r\n", 400},
		{"GET ftp://gw.example.com/a HTTP/1.1\r\n" + h + "\r\n", 400},
		{"GET /a HTTP/1.1\r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\n" + h + h + "\r\n", 400},
		{"GET /a HTTP/1.1\r\nHost: \r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\nHost: a:b\r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\nHost: a/b\r\n\r\n", 400},
		{"GET /a HTTP/1.1\r\nHost: a:123456\r\n\r\n", 400},
		{"POST /a HTTP/1.1\r\n" + h + "Content-Length: +1\r\n\r\n", 400},
		{"POST /a HTTP/1.1\r\n" + h + "Content-Length: 1, 1\r\n\r\n", 400},
		{"POST /a HTTP/1.1\r\n" + h + "Content-Length: 1\r\nContent-Length: 1\r\n\r\n", 400},
		{"POST /a HTTP/1.1\r\n" + h + "Content-Length: " + strings.Repeat("9", 19) + "\r\n\r\n", 400},
		{"POST /a HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", 400},
		{"POST /a HTTP/1.0\r\n" + h + "Transfer-Encoding: chunked\r\n\r\n", 501},
		{"POST /a HTTP/1.1\r\n" + h + "Transfer-Encoding: identity\r\n\r\n", 501},
		{"POST /a HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked, identity\r\n\r\n", 501},
		{"POST /a HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
		{"POST /a HTTP/1.1\r\n" + h + "Expect: x\r\n\r\n", 417},
		{"CONNECT gw.example.com:443 HTTP/1.1\r\n" + h + "\r\n", 501},
		{"GET /a HTTP/1.2\r\n" + h + "\r\n", 505},
		{"GET /a HTTP/2.0\r\n" + h + "\r\n", 505},
		{"PRI * HTTP/2.0\r\n\r\n", 505},
	} {
		got := 0
		if f := checkHead([]byte(tc.head)); f != nil {
			got = f.code
		}
		if got != tc.want {
			t.Errorf("%q: %d, want %d", tc.head, got, tc.want)
		}
	}
}

func BenchmarkCheckHead(b *testing.B) {
	head := []byte("GET /api/orders?id=42 HTTP/1.1\r\nHost: gw.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\nAuthorization: Bearer abcdefghijklmnopqrstuvwxyz\r\n\r\n")
	for b.Loop() {
		if checkHead(head) != nil {
			b.Fatal("refused")
		}
	}
}

// A refused head is answered, the connection closed, the refusal counted
// and logged on both engines; a head that does not parse logs no method
// or URI of its own invention.
func TestRefusedHeads(t *testing.T) {
	for _, loop := range []bool{false, true} {
		t.Run(map[bool]string{false: "goroutines", true: "event-loop"}[loop], func(t *testing.T) {
			a := backend(t, "a", 200)
			var buf strings.Builder
			al := NewAccessLog(&buf, nil)
			opt := Options{AccessLog: al}
			var lb *testLB
			if loop {
				lb = startLoop(t, opt, loopSopt, addr(a))
			} else {
				lb = startLB(t, opt, addr(a))
			}
			for _, tc := range []struct {
				req  string
				code int
			}{
				{"POST /a HTTP/1.1\r\nHost: gw.example.com\r\nTransfer-Encoding: identity\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw.example.com\r\n\r\n", 501},
				{"GET /a HTTP/1.1\r\nHost: gw.example.com\r\nX Bad: 1\r\n\r\n", 400},
				{"GET /a HTTP/2.0\r\nHost: gw.example.com\r\n\r\n", 505},
			} {
				c, err := net.Dial("tcp", lb.addr)
				if err != nil {
					t.Fatal(err)
				}
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, tc.req)
				out, _ := io.ReadAll(c) // the balancer closes after its answer
				c.Close()
				if !strings.HasPrefix(string(out), fmt.Sprintf("HTTP/1.1 %d ", tc.code)) || strings.Count(string(out), "HTTP/1.1 ") != 1 {
					t.Errorf("%q: answered %q, want one %d", tc.req, out, tc.code)
				}
			}
			for _, code := range []string{"400", "501", "505"} {
				if n := counterValue(t, lb.p.m.Refused.WithLabelValues(code)); n != 1 {
					t.Errorf("refused with %s: counted %v, want 1", code, n)
				}
			}
			al.Flush()
			if n := strings.Count(buf.String(), "\n"); n != 3 || strings.Contains(buf.String(), "smuggled") {
				t.Errorf("access log: %d lines, want 3, none of the smuggled request:\n%s", n, buf.String())
			}
		})
	}
}

// present finds the fields the hop-by-hop and forwarding rules act on
// whatever their case, and says both for a header not read from the wire.
func TestPresent(t *testing.T) {
	for _, tc := range []struct {
		raw        string
		hop, spoof bool
	}{
		{"", true, true},
		{"Host: a\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n", false, false},
		{"Host: a\r\nconnection: close\r\n\r\n", true, false},
		{"Host: a\r\nTE: trailers\r\n\r\n", true, false},
		{"Host: a\r\nPROXY-AUTHORIZATION: x\r\n\r\n", true, false},
		{"Host: a\r\nx-forwarded-for: 1.2.3.4\r\n\r\n", false, true},
		{"Host: a\r\nX-Forwarded-Host: e\r\nKeep-Alive: 1\r\n\r\n", true, true},
		{"Host: a\r\nx-real-ip: 1\r\n\r\n", false, true},
		{"Host: a\r\nForwarded: for=1\r\n\r\n", false, true},
		{"Host: a\r\nX-Forwarded-Proto: https\r\n\r\n", false, true},
	} {
		if hop, spoof := present([]byte(tc.raw)); hop != tc.hop || spoof != tc.spoof {
			t.Errorf("%q: hop %v spoof %v, want %v %v", tc.raw, hop, spoof, tc.hop, tc.spoof)
		}
	}
}
