package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// handOffVariants are requests a loop does not serve itself (L3), each
// after one it serves, so that the hand-off happens in the middle of a
// connection. want is the status the second answer has.
var handOffVariants = []struct {
	name, req string
	want      int
}{
	{"body", "POST /b HTTP/1.1\r\nHost: gw.example.com\r\nContent-Length: 1\r\n\r\nx", 200},
	{"http10", "GET /b HTTP/1.0\r\nHost: gw.example.com\r\n\r\n", 200},
	{"expect", "POST /b HTTP/1.1\r\nHost: gw.example.com\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx", 200},
	{"bare-lf", "GET /b HTTP/1.1\nHost: gw.example.com\n\n", 400}, // refused (strict.go)
	{"garbage", "\x00\x01 garbage\r\n\r\n", 400},
	{"no-route-body", "POST /b HTTP/1.1\r\nHost: adv.test\r\nContent-Length: 1\r\n\r\nx", 404},
	{"chunked", "POST /b HTTP/1.1\r\nHost: gw.example.com\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", 200},
}

// readAnswers reads n final answers from br (bodies drained, interim
// answers skipped).
func readAnswers(t *testing.T, br *bufio.Reader, n int) []int {
	t.Helper()
	var codes []int
	for i := 0; i < n; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v (got %v before)", i, err, codes)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 200 {
			i--
			continue
		}
		codes = append(codes, resp.StatusCode)
	}
	return codes
}

// A request the loop serves, then one it hands over, on one connection:
// pipelined in one segment or split in two, with the connection kept or
// closed after. The process lives, both are answered, and the loop goes
// on serving other connections (the hand-off once crashed the process:
// the loop went on serving a connection it had given away).
func TestLoopHandOffMidConnection(t *testing.T) {
	a := backend(t, "a", 200)
	lb := startLoop(t, Options{}, loopSopt, addr(a))
	first := "GET /a HTTP/1.1\r\nHost: gw.example.com\r\n\r\n"
	for _, v := range handOffVariants {
		for _, split := range []bool{false, true} {
			for _, keep := range []bool{true, false} {
				t.Run(fmt.Sprintf("%s/split=%v/keep=%v", v.name, split, keep), func(t *testing.T) {
					c, err := net.Dial("tcp", lb.addr)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(20 * time.Second))
					br := bufio.NewReader(c)
					if split {
						io.WriteString(c, first)
						if got := readAnswers(t, br, 1); got[0] != 200 {
							t.Fatalf("first answer %d", got[0])
						}
						io.WriteString(c, v.req)
					} else {
						io.WriteString(c, first+v.req)
					}
					if !keep {
						c.(*net.TCPConn).CloseWrite()
					}
					got := readAnswers(t, br, map[bool]int{false: 2, true: 1}[split])
					if got[len(got)-1] != v.want {
						t.Fatalf("answers %v, want the last %d", got, v.want)
					}
					// The loops still serve.
					if resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(lb.url + "/after"); err != nil || resp.StatusCode != 200 {
						t.Fatalf("a new connection after: %v %v", resp, err)
					} else {
						resp.Body.Close()
					}
				})
			}
		}
	}
	if n := counterValue(t, lb.p.m.faultConn) + counterValue(t, lb.p.m.faultLoop); n != 0 {
		t.Errorf("%v faults contained, want none", n)
	}
}

// Over TLS: stock `curl --next` with two POSTs on one keep-alive
// connection, and pipelined variants; then two clients that each sent
// one POST and went idle must not stop a loop from serving others (the
// loop once blocked reading the connection it had given away).
func TestLoopTLSHandOffMidConnection(t *testing.T) {
	a := backend(t, "a", 200)
	l := startLoopTLS(t, Options{}, loopSopt, addr(a))
	cl := l.client(false)
	for i := range 3 {
		req, _ := http.NewRequest("POST", "https://"+l.addr+"/p", strings.NewReader("body"))
		req.Host = "gw.example.com"
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("POST %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "a:body" {
			t.Fatalf("POST %d: %d %q", i, resp.StatusCode, b)
		}
	}
	for _, v := range handOffVariants {
		t.Run(v.name, func(t *testing.T) {
			c := l.dial(t, nil)
			io.WriteString(c, "GET /a HTTP/1.1\r\nHost: gw.example.com\r\n\r\n"+v.req)
			if got := readAnswers(t, bufio.NewReader(c), 2); got[1] != v.want {
				t.Fatalf("answers %v, want the second %d", got, v.want)
			}
		})
	}
	// Idle clients after a hand-over, as many as there are loops and more.
	for range 2 * loopProcs {
		c := l.dial(t, nil)
		io.WriteString(c, "GET /a HTTP/1.1\r\nHost: gw.example.com\r\n\r\nPOST /b HTTP/1.1\r\nHost: gw.example.com\r\nContent-Length: 1\r\n\r\nx")
		readAnswers(t, bufio.NewReader(c), 2)
	}
	// New connections, each on some loop, are served at once.
	for i := range 2 * loopProcs {
		if resp, body := l.get(t, l.client(false), "GET", "/x", "gw.example.com"); resp.StatusCode != 200 || body != "a:" {
			t.Fatalf("GET %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if n := counterValue(t, l.p.m.LoopTLS); n < 1 {
		t.Errorf("the loops took %v TLS connections", n)
	}
}

// L10: a fault while serving one connection closes that connection only;
// a fault outside any connection restarts the loop; the process lives
// and serves on either way, and each is counted.
func TestLoopContainsFaults(t *testing.T) {
	a := backend(t, "a", 200)
	lb := startLoop(t, Options{}, loopSopt, addr(a))
	var sweepFault sync.Once
	armSweep := make(chan struct{})
	fault := func(site string, s *LoopServer, head []byte) {
		if s != lb.loop {
			return
		}
		switch site {
		case "request":
			if bytes.Contains(head, []byte("X-Fault: 1")) {
				panic("injected")
			}
		case "sweep":
			select {
			case <-armSweep:
				sweepFault.Do(func() { panic(loopFault("injected")) })
			default:
			}
		}
	}
	testFault.Store(&fault)
	defer testFault.Store(nil)

	// A connection kept open across the faults, served by a loop.
	keep, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	_ = keep.SetDeadline(time.Now().Add(30 * time.Second))
	kbr := bufio.NewReader(keep)
	get := "GET /k HTTP/1.1\r\nHost: gw.example.com\r\n\r\n"
	io.WriteString(keep, get)
	readAnswers(t, kbr, 1)

	bad, err := net.Dial("tcp", lb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	_ = bad.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(bad, "GET /f HTTP/1.1\r\nHost: gw.example.com\r\nX-Fault: 1\r\n\r\n")
	if n, err := bad.Read(make([]byte, 1)); err == nil {
		t.Fatalf("the faulty connection answered (%d bytes), want it closed", n)
	}
	waitFor(t, "the connection fault counted", func() bool { return counterValue(t, lb.p.m.faultConn) == 1 })
	// The other connections of the loops are served.
	io.WriteString(keep, get)
	readAnswers(t, kbr, 1)

	close(armSweep)
	waitFor(t, "the loop fault counted", func() bool { return counterValue(t, lb.p.m.faultLoop) == 1 })
	for i := range 5 {
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(lb.url + "/after")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d after the loop restarted: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
}
