package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	dto "github.com/prometheus/client_model/go"

	"github.com/gwnomad/gwnomad/internal/testenv"
)

func gaugeValue(t *testing.T, g interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// recordingBackend answers 200 "ok" to everything (an upgrade asked for
// too) and records the Host and X-Forwarded-For of what it got.
type recordingBackend struct {
	mu    sync.Mutex
	hosts []string
	xff   []string
}

func (rb *recordingBackend) seen() (hosts, xff []string) {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return append([]string(nil), rb.hosts...), append([]string(nil), rb.xff...)
}

func startRecordingBackend(t *testing.T) (*recordingBackend, string) {
	rb := &recordingBackend{}
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rb.mu.Lock()
		rb.hosts = append(rb.hosts, r.Host)
		rb.xff = append(rb.xff, r.Header.Get("X-Forwarded-For"))
		rb.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(s.Close)
	return rb, addr(s)
}

// An upgrade the gateway answers with 200 is an ordinary exchange: the
// client's connection stays HTTP, so a request after it on the same
// connection is routed (404 for a host without a route, which the
// gateway never sees) and gets its X-Forwarded-For replaced; the access
// log says 200, not 101.
func TestUpgradeAnsweredAsHTTPStaysHTTP(t *testing.T) {
	rb, gw := startRecordingBackend(t)
	var logged testenv.SyncBuffer
	al := NewAccessLog(&logged, nil)
	lb := startLB(t, Options{AccessLog: al}, gw)
	rc := dialRaw(t, lb.addr)

	resp, body := rc.do("GET /ws HTTP/1.1\r\nHost: gw.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("upgrade answered 200 by the gateway: %d %q", resp.StatusCode, body)
	}
	resp, body = rc.do("GET /smuggled HTTP/1.1\r\nHost: evil.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n")
	if resp.StatusCode != 404 || !strings.Contains(body, "no route") {
		t.Errorf("request for evil.test after the upgrade's 200: %d %q, want the balancer's 404", resp.StatusCode, body)
	}
	resp, body = rc.do("GET /next HTTP/1.1\r\nHost: gw.example.com\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
	if resp.StatusCode != 200 || body != "ok" {
		t.Errorf("request after them: %d %q", resp.StatusCode, body)
	}

	hosts, xff := rb.seen()
	if len(hosts) != 2 {
		t.Errorf("the gateway got %d requests (%v), want 2", len(hosts), hosts)
	}
	for i := range hosts {
		if hosts[i] != "gw.example.com" || xff[i] != "127.0.0.1" {
			t.Errorf("the gateway saw Host %q, X-Forwarded-For %q", hosts[i], xff[i])
		}
	}
	al.Flush()
	var statuses []float64
	for line := range strings.SplitSeq(strings.TrimSpace(logged.String()), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		statuses = append(statuses, e["status"].(float64))
	}
	if fmt.Sprint(statuses) != "[200 404 200]" {
		t.Errorf("access log statuses %v, want [200 404 200]:\n%s", statuses, logged.String())
	}
	if n := gaugeValue(t, lb.p.m.Tunnels); n != 0 {
		t.Errorf("%v tunnels open after answers without a switch", n)
	}
}

// switchingGateway is a gateway spoken by hand. To a request with
// X-Answer it answers a 101: "h2c" (Upgrade: h2c), "noconn" (no
// Connection: upgrade) or "agree" (Upgrade: WebSocket, Connection:
// upgrade, with hop-by-hop fields to drop), each followed at once by
// "RAW"; after "agree" it echoes what comes. To others it answers 200
// with the Upgrade and Connection it saw, echoing the body.
func switchingGateway(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body, _ := io.ReadAll(req.Body)
					var head string
					switch req.Header.Get("X-Answer") {
					case "":
						fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Seen-Upgrade: %s\r\nX-Seen-Connection: %s\r\nContent-Length: %d\r\n\r\n%s",
							req.Header.Get("Upgrade"), req.Header.Get("Connection"), len(body), body)
						continue
					case "h2c":
						head = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
					case "noconn":
						head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
					case "agree":
						head = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade, X-Hop\r\nUpgrade: WebSocket\r\nX-Extra: 1\r\n" +
							"X-Hop: no\r\nKeep-Alive: timeout=5\r\n\r\n"
					}
					_, _ = io.WriteString(c, head+"RAW")
					if req.Header.Get("X-Answer") == "agree" {
						_, _ = io.Copy(c, br)
					} else {
						_, _ = io.Copy(io.Discard, br)
					}
					return
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// Only a 101 that agrees to the upgrade asked for switches the client's
// connection; one naming another protocol, or without Connection:
// upgrade, is a 502 and nothing of what the gateway sent after it reaches
// the client, whose connection stays HTTP. A switch that agrees relays
// the gateway's head without its hop-by-hop fields, the bytes the gateway
// sent after it, then both ways.
func TestUpgradeSwitchMustAgree(t *testing.T) {
	gw := switchingGateway(t)
	var logged testenv.SyncBuffer
	al := NewAccessLog(&logged, nil)
	lb := startLB(t, Options{AccessLog: al}, gw)
	const ask = "GET /ws HTTP/1.1\r\nHost: gw.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
	for _, answer := range []string{"h2c", "noconn"} {
		rc := dialRaw(t, lb.addr)
		resp, body := rc.do(ask + "X-Answer: " + answer + "\r\n\r\n")
		if resp.StatusCode != 502 || strings.Contains(body, "RAW") {
			t.Errorf("%s: %d %q, want a 502 of the balancer's", answer, resp.StatusCode, body)
		}
		resp, body = rc.do("GET /after HTTP/1.1\r\nHost: evil.test\r\n\r\n")
		if resp.StatusCode != 404 {
			t.Errorf("%s: the request after: %d %q, want 404", answer, resp.StatusCode, body)
		}
		resp, body = rc.do("GET /after HTTP/1.1\r\nHost: gw.example.com\r\n\r\n")
		if resp.StatusCode != 200 || resp.Header.Get("X-Seen-Upgrade") != "" {
			t.Errorf("%s: the request after that: %d %q %v", answer, resp.StatusCode, body, resp.Header)
		}
	}

	// An upgrade request with a body goes as an ordinary request.
	rc := dialRaw(t, lb.addr)
	resp, body := rc.do("POST /ws HTTP/1.1\r\nHost: gw.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 4\r\n\r\nbody")
	if resp.StatusCode != 200 || body != "body" || resp.Header.Get("X-Seen-Upgrade") != "" ||
		strings.Contains(strings.ToLower(resp.Header.Get("X-Seen-Connection")), "upgrade") {
		t.Errorf("upgrade with a body: %d %q, the gateway saw Upgrade %q, Connection %q (want neither)",
			resp.StatusCode, body, resp.Header.Get("X-Seen-Upgrade"), resp.Header.Get("X-Seen-Connection"))
	}
	resp, _ = rc.do("GET /after HTTP/1.1\r\nHost: evil.test\r\n\r\n")
	if resp.StatusCode != 404 {
		t.Errorf("after the upgrade with a body: %d, want 404", resp.StatusCode)
	}

	rc = dialRaw(t, lb.addr)
	if _, err := io.WriteString(rc.c, ask+"X-Answer: agree\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "WebSocket" || resp.Header.Get("Connection") != "Upgrade" ||
		resp.Header.Get("X-Extra") != "1" || resp.Header.Get("X-Hop") != "" || resp.Header.Get("Keep-Alive") != "" {
		t.Errorf("switch: %d %v", resp.StatusCode, resp.Header)
	}
	raw := make([]byte, 3)
	if _, err := io.ReadFull(rc.br, raw); err != nil || string(raw) != "RAW" {
		t.Fatalf("bytes the gateway sent after its 101: %q %v", raw, err)
	}
	if _, err := io.WriteString(rc.c, "ping"); err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, 4)
	if _, err := io.ReadFull(rc.br, echo); err != nil || string(echo) != "ping" {
		t.Fatalf("relayed echo: %q %v", echo, err)
	}
	if n := lb.p.Upgraded(); n != 1 {
		t.Errorf("Upgraded() = %d during the switch, want 1", n)
	}
	rc.c.Close()
	testenv.WaitFor(t, 10*time.Second, "the tunnel to end with its client", func() error {
		if n := gaugeValue(t, lb.p.m.Tunnels); n != 0 || lb.p.Upgraded() != 0 {
			return fmt.Errorf("%v tunnels, %d relayed", n, lb.p.Upgraded())
		}
		return nil
	})
	al.Flush()
	if s := logged.String(); strings.Count(s, `"status":101`) != 1 || strings.Count(s, `"status":502`) != 2 {
		t.Errorf("access log: want one 101 (the switch) and two 502:\n%s", s)
	}
}

// wsEcho is a WebSocket gateway that echoes every message.
func wsEcho(t *testing.T) string {
	t.Helper()
	up := websocket.Upgrader{}
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	}))
	t.Cleanup(s.Close)
	return addr(s)
}

func dialWS(t *testing.T, lbAddr string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial("ws://"+lbAddr+"/ws", http.Header{"Host": {"gw.example.com"}})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, resp, err
}

// A tunnel lives while bytes go through it, and is closed on both sides
// once none went either way for the idle timeout.
func TestTunnelIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	lb := startLB(t, Options{TunnelIdleTimeout: idle}, wsEcho(t))
	c, _, err := dialWS(t, lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	for i := 0; time.Since(begin) < 3*idle; i++ { // busy: three timeouts long
		msg := fmt.Sprint("m", i)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatalf("message %d, %v into an active tunnel: %v", i, time.Since(begin), err)
		}
		if _, got, err := c.ReadMessage(); err != nil || string(got) != msg {
			t.Fatalf("echo %d, %v into an active tunnel: %q %v", i, time.Since(begin), got, err)
		}
	}
	last := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, _, err = c.ReadMessage()
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("read on an idle tunnel: %v, want it closed by the balancer", err)
	}
	if d := time.Since(last); d < idle/2 {
		t.Errorf("idle tunnel closed after %v, idle timeout %v", d, idle)
	}
	testenv.WaitFor(t, 10*time.Second, "the idle tunnel to be gone", func() error {
		if n := gaugeValue(t, lb.p.m.Tunnels); n != 0 || lb.p.Upgraded() != 0 {
			return fmt.Errorf("%v tunnels, %d relayed", n, lb.p.Upgraded())
		}
		return nil
	})
}

// Beyond MaxTunnels open, an upgrade request gets 503 (counted) without
// reaching a gateway; a place freed is taken again.
func TestTunnelLimit(t *testing.T) {
	lb := startLB(t, Options{MaxTunnels: 2}, wsEcho(t))
	var open []*websocket.Conn
	for i := range 2 {
		c, _, err := dialWS(t, lb.addr)
		if err != nil {
			t.Fatalf("tunnel %d: %v", i, err)
		}
		open = append(open, c)
	}
	_, resp, err := dialWS(t, lb.addr)
	if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil || resp.StatusCode != 503 {
		t.Fatalf("third tunnel: %v %v, want 503", resp, err)
	}
	if n := counterValue(t, lb.p.m.TunnelsRefused); n != 1 {
		t.Errorf("tunnels refused: %v, want 1", n)
	}
	if n := gaugeValue(t, lb.p.m.Tunnels); n != 2 {
		t.Errorf("tunnels: %v, want 2", n)
	}
	open[0].Close()
	testenv.WaitFor(t, 10*time.Second, "a tunnel's place to be freed", func() error {
		if n := gaugeValue(t, lb.p.m.Tunnels); n != 1 {
			return fmt.Errorf("%v tunnels", n)
		}
		return nil
	})
	c, _, err := dialWS(t, lb.addr)
	if err != nil {
		t.Fatalf("tunnel in the freed place: %v", err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, got, err := c.ReadMessage(); err != nil || string(got) != "hi" {
		t.Errorf("echo in the freed place: %q %v", got, err)
	}
}

// Over TLS, the tunnel relays TLS records on the client's side, the 101
// carries HSTS as other answers do, and both sides close with the client.
func TestWebSocketOverTLS(t *testing.T) {
	l := startTLSLB(t, Options{HSTS: "max-age=60"}, wsEcho(t))
	p := l.srv.Handler.(*Proxy)
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, TLSClientConfig: &tls.Config{RootCAs: l.pool, ServerName: "gw.example.com"}}
	c, resp, err := d.Dial("wss://"+l.addr+"/ws", http.Header{"Host": {"gw.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := resp.Header.Get("Strict-Transport-Security"); got != "max-age=60" {
		t.Errorf("HSTS on the 101: %q", got)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i := range 3 {
		msg := fmt.Sprint("over tls ", i)
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, got, err := c.ReadMessage(); err != nil || string(got) != msg {
			t.Fatalf("echo: %q %v", got, err)
		}
	}
	c.Close()
	testenv.WaitFor(t, 10*time.Second, "the tunnel to end with its client", func() error {
		if n := gaugeValue(t, p.m.Tunnels); n != 0 || p.Upgraded() != 0 {
			return fmt.Errorf("%v tunnels, %d relayed", n, p.Upgraded())
		}
		return nil
	})
}
