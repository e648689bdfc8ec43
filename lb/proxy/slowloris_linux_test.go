package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// slowlorisBound is the documented bound (README, Security) on what 500
// trickling and 500 idle client connections may add to the balancer's
// resident memory.
const slowlorisBound = 64 << 20

// Slowloris and idle floods: 500 connections trickling a head a byte at
// a time and 500 that send nothing do not stop a normal client from being
// served, cost less than slowlorisBound, and are closed by read_timeout
// and idle_timeout, on both engines.
func TestSlowlorisAndIdleFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 1000 connections")
	}
	for _, loop := range []bool{true, false} {
		t.Run(map[bool]string{false: "goroutines", true: "event-loop"}[loop], func(t *testing.T) {
			a := backend(t, "a", 200)
			sopt := ServerOptions{ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, IdleTimeout: 2 * time.Second, MaxHeaderBytes: 4096, MaxBodyBytes: 1 << 20}
			var lb *testLB
			if loop {
				lb = startLoop(t, Options{}, sopt, addr(a))
			} else {
				lb = startLBWith(t, Options{}, sopt, addr(a))
			}
			cl := &http.Client{Timeout: 10 * time.Second}
			get := func() {
				t.Helper()
				req, _ := http.NewRequest("GET", lb.url+"/normal", nil)
				req.Host = "gw.example.com"
				resp, err := cl.Do(req)
				if err != nil {
					t.Fatalf("a normal request beside the flood: %v", err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("a normal request beside the flood: %d", resp.StatusCode)
				}
			}
			get() // the balancer warm, its RSS the baseline
			before := rss(t)

			const n = 500
			var trickle, idle []net.Conn
			for range n {
				for _, set := range []*[]net.Conn{&trickle, &idle} {
					c, err := net.Dial("tcp", lb.addr)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { c.Close() })
					*set = append(*set, c)
				}
			}
			for _, c := range trickle {
				io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: gw.example.com\r\nX-Slow: ")
			}
			// One writer trickles a byte to every connection each 100 ms
			// until the balancer has closed them all.
			closedTrickle := make([]bool, n)
			var mu sync.Mutex
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					for i, c := range trickle {
						_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
						if _, err := c.Write([]byte("a")); err != nil {
							mu.Lock()
							closedTrickle[i] = true
							mu.Unlock()
						}
					}
				}
			})
			defer func() { close(stop); wg.Wait() }()

			var peak int64
			for range 20 {
				get()
				peak = max(peak, rss(t))
			}
			if grown := peak - before; grown > slowlorisBound {
				t.Errorf("RSS grew by %d MiB with %d trickling and %d idle connections, bound %d MiB", grown>>20, n, n, slowlorisBound>>20)
			} else {
				t.Logf("RSS grew by %.1f MiB with %d trickling and %d idle connections", float64(grown)/(1<<20), n, n)
			}

			// read_timeout ends the trickling heads (with a 408 or a bare
			// close), idle_timeout the idle connections.
			for _, set := range [][]net.Conn{idle, trickle} {
				for _, c := range set {
					_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
					b, err := io.ReadAll(bufio.NewReader(c))
					if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
						t.Fatalf("a flooding connection was not closed by the balancer: %v", err)
					}
					if len(b) > 0 && !bytes.HasPrefix(b, []byte("HTTP/1.1 408 ")) {
						t.Fatalf("a flooding connection got %q", b)
					}
				}
			}
			get()
		})
	}
}

// rss is the process's resident memory in bytes.
func rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			kb, err := strconv.ParseInt(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}
