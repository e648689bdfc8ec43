package lb_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb/config"
)

// One client must not take the entrypoint down. With the default engine
// and real Consul: a request the loop serves followed in the same write
// by one it hands over (a body, HTTP/1.0, Expect, a bare-LF head,
// garbage, a host no route has), two POSTs with a body on one HTTPS
// keep-alive connection (curl --next), and smuggling attempts through
// duplicated forwarding headers and Connection: each is answered, the
// balancer lives, and other clients are served.
func TestOneClientCannotTakeTheEntrypointDown(t *testing.T) {
	st := testenv.Consul(t)
	register(t, st.ConsulAPI(), inProcessGateway(t, "gw-1"), true)
	certFile, keyFile, pool := testenv.CertFiles(t, t.TempDir(), host)
	// With TLS on, the plain listener only redirects: one balancer for
	// each.
	plain, _ := startLBWith(t, st, "round_robin", nil)
	l, _ := startLBWith(t, st, "round_robin", func(cfg *config.Config) {
		cfg.Listen.HTTPS = "127.0.0.1:0"
		cfg.TLS.Mode, cfg.TLS.CertFile, cfg.TLS.KeyFile = "files", certFile, keyFile
	})
	waitInstances(t, plain, 30*time.Second, "gw-1")
	waitInstances(t, l, 30*time.Second, "gw-1")
	tlsConf := &tls.Config{RootCAs: pool, ServerName: host, NextProtos: []string{"http/1.1"}}
	dial := func(t *testing.T, https bool) net.Conn {
		t.Helper()
		var c net.Conn
		var err error
		if https {
			c, err = tls.Dial("tcp", l.Addrs().HTTPS, tlsConf)
		} else {
			c, err = net.Dial("tcp", plain.Addrs().HTTP)
		}
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		return c
	}
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	alive := func(t *testing.T, when string) {
		t.Helper()
		if resp, body, err := get(plain, "/alive"); err != nil || resp.StatusCode != 200 || body != "gw-1" {
			t.Fatalf("%s: the plain balancer no longer serves: %v %q %v", when, resp, body, err)
		}
		req, _ := http.NewRequest("GET", "https://"+l.Addrs().HTTPS+"/alive", nil)
		req.Host = host
		resp, err := fresh.Do(req)
		if err != nil {
			t.Fatalf("%s: the TLS balancer no longer serves: %v", when, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: the TLS balancer answers %d", when, resp.StatusCode)
		}
	}
	first := "GET /a HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	for _, tc := range []struct{ name, req string }{
		{"body", "POST /b HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 1\r\n\r\nx"},
		{"http10", "GET /b HTTP/1.0\r\nHost: " + host + "\r\n\r\n"},
		{"expect", "POST /b HTTP/1.1\r\nHost: " + host + "\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"},
		{"bare-lf", "GET /b HTTP/1.1\nHost: " + host + "\n\n"},
		{"garbage", "\x00garbage\r\n\r\n"},
		{"no-route", "POST /b HTTP/1.1\r\nHost: adv.test\r\nContent-Length: 1\r\n\r\nx"},
	} {
		for _, https := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/https=%v", tc.name, https), func(t *testing.T) {
				c := dial(t, https)
				defer c.Close()
				io.WriteString(c, first+tc.req)
				br := bufio.NewReader(c)
				for i := range 2 {
					resp, err := http.ReadResponse(br, nil)
					for err == nil && resp.StatusCode < 200 {
						resp, err = http.ReadResponse(br, nil)
					}
					if err != nil {
						t.Fatalf("answer %d: %v", i, err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
				}
				alive(t, "after "+tc.name)
			})
		}
	}

	// curl --next: two POSTs on one HTTPS keep-alive connection, and
	// clients that each sent one and stay idle.
	tr := &http.Transport{TLSClientConfig: tlsConf, MaxConnsPerHost: 1, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for i := range 2 {
		req, _ := http.NewRequest("POST", "https://"+l.Addrs().HTTPS+"/p", strings.NewReader("body"))
		req.Host = host
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("POST %d over HTTPS: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST %d over HTTPS: %d", i, resp.StatusCode)
		}
	}
	for range 4 {
		c := dial(t, true)
		defer c.Close()
		io.WriteString(c, "POST /b HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 1\r\n\r\nx")
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("idle client's POST: %v %v", resp, err)
		}
	}
	for i := range 4 {
		req, _ := http.NewRequest("GET", "https://"+l.Addrs().HTTPS+"/x", nil)
		req.Host = host
		resp, err := fresh.Do(req)
		if err != nil {
			t.Fatalf("GET %d over HTTPS beside idle handed-over clients: %v", i, err)
		}
		resp.Body.Close()
	}

	// Spoofed forwarding headers and Connection tricks from an untrusted
	// client never reach the gateway.
	c := dial(t, false)
	defer c.Close()
	io.WriteString(c, "GET /headers HTTP/1.1\r\nHost: "+host+"\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-For: 8.8.8.8\r\n"+
		"X-Forwarded-Proto: https\r\nX-Forwarded-Proto: https\r\nForwarded: for=7.7.7.7\r\nX-Real-IP: 7.7.7.7\r\nConnection: Host\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	want := "xff=[127.0.0.1] proto=[http] xfh=[" + host + "] fwd=[] xri=[] host=" + host
	if resp.StatusCode != 200 || string(b) != want {
		t.Errorf("the gateway saw %d %q, want %q", resp.StatusCode, b, want)
	}
	// An upgrade the gateway does not agree to leaves the connection HTTP:
	// what follows is routed (no route for evil.test: 404), not relayed.
	// A Transfer-Encoding net/http would not take is refused, and what
	// it would have smuggled never arrives.
	for _, https := range []bool{false, true} {
		c := dial(t, https)
		defer c.Close()
		io.WriteString(c, "GET /api HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"+
			"GET /api HTTP/1.1\r\nHost: evil.test\r\nX-Forwarded-For: 7.7.7.7\r\n\r\n")
		br := bufio.NewReader(c)
		for i, want := range []int{200, 404} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("https=%v: answer %d after an unagreed upgrade: %v", https, i, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != want {
				t.Fatalf("https=%v: answer %d after an unagreed upgrade: %d, want %d", https, i, resp.StatusCode, want)
			}
		}
		c2 := dial(t, https)
		defer c2.Close()
		io.WriteString(c2, "POST /api HTTP/1.1\r\nHost: "+host+"\r\nTransfer-Encoding: identity\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		out, _ := io.ReadAll(c2)
		if !strings.HasPrefix(string(out), "HTTP/1.1 501 ") || strings.Count(string(out), "HTTP/1.1 ") != 1 {
			t.Fatalf("https=%v: Transfer-Encoding: identity answered %q, want one 501", https, out)
		}
	}

	for _, admin := range []string{plain.Addrs().Admin, l.Addrs().Admin} {
		for _, scope := range []string{"connection", "loop"} {
			m := `gwnomad_lb_event_loop_faults_total{scope="` + scope + `"}`
			if got := metricLine(t, "http://"+admin+"/metrics", m); got != m+" 0" {
				t.Errorf("/metrics: %q, want %s 0", got, m)
			}
		}
	}
	alive(t, "at the end")
}
