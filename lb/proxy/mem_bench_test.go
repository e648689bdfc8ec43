//go:build linux

package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/lb/balancer"
	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/discovery"
)

const idleClientsEnv = "GWNOMAD_IDLE_CLIENTS" // "addr count" for the helper process

// BenchmarkMemory1000Instances10kIdleConns reports the balancer's memory
// with 1,000 instances in its table (each with its keep-alive pool and
// metrics) and 10,000 idle keep-alive client connections (each after one
// request), held by a helper process so that the descriptors of both ends
// do not share one limit. Metrics: heap bytes per instance, heap+stack
// bytes per idle connection, and the process's RSS growth per connection;
// for each engine, over plain HTTP and over TLS (TLS 1.3, HTTP/1.1: on the
// loops, a TLS connection stays a crypto/tls Conn after its handshake, L8).
//
//	go test ./lb/proxy -run '^$' -bench Memory -benchtime 1x
func BenchmarkMemory1000Instances10kIdleConns(b *testing.B) {
	for _, engine := range []string{"goroutines", "event-loop"} {
		for _, tlsOn := range []bool{false, true} {
			name := engine
			if tlsOn {
				name += "-tls"
			}
			b.Run(name, func(b *testing.B) { benchmarkMemory(b, engine == "event-loop", tlsOn) })
		}
	}
}

func benchmarkMemory(b *testing.B, loop, tlsOn bool) {
	const instances, conns = 1000, 10000
	raiseNoFile(b)
	backend := fastBackend(b)
	host, port, _ := net.SplitHostPort(backend)
	pn, _ := strconv.Atoi(port)

	m0 := memNow()
	h := &balancer.Holder{}
	p := New(h, Options{AccessLog: NewAccessLog(io.Discard, nil)})
	bl := balancer.NewBuilder([]config.Route{{Hosts: []string{"*"}, Policy: "round_robin"}}, testHealth)
	bl.OnRoute, bl.OnNew, bl.OnGone = p.OnRoute, p.OnNew, p.OnGone
	s := &discovery.Snapshot{Query: discovery.Query{Service: "apim-gateway"}, Updated: time.Now()}
	for i := range instances {
		// One real gateway behind 1,000 registrations: distinct
		// upstreams (own pools, metrics), all reachable.
		s.Instances = append(s.Instances, discovery.Instance{ID: fmt.Sprintf("gw-%d", i), Node: fmt.Sprintf("node-%d", i), Address: host, Port: pn, Status: "passing"})
	}
	h.Store(bl.Build(map[discovery.Query]*discovery.Snapshot{s.Query: s}))
	m1 := memNow()

	sopt := ServerOptions{ReadTimeout: time.Minute, WriteTimeout: time.Minute, IdleTimeout: 5 * time.Minute, MaxHeaderBytes: 16 << 10, MaxBodyBytes: 1 << 20}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var ls *LoopServer // the loops, which must hold every connection
	switch {
	case tlsOn:
		// The TLS server over ln; with the loops, a loop server
		// without a listener of its own adopts its connections.
		srv := &TLSServer{Fast: p.NewFastServer(sopt), Handler: p, Config: &tls.Config{Certificates: []tls.Certificate{selfSigned(b)}, SessionTicketsDisabled: true}, IdleTimeout: sopt.IdleTimeout}
		if loop {
			ls = p.NewLoopServer(sopt)
			srv.Loop = ls
			go func() { _ = ls.Serve(nil) }()
		}
		go func() { _ = srv.Serve(ln) }()
		b.Cleanup(func() {
			ctx, cancel := contextWithTimeout(10 * time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
			if srv.Loop != nil {
				_ = srv.Loop.Shutdown(ctx)
			}
		})
		if loop {
			waitServing(b, srv.Loop)
		}
	case loop:
		srv := p.NewLoopServer(sopt)
		ls = srv
		go func() { _ = srv.Serve(ln) }()
		b.Cleanup(func() {
			ctx, cancel := contextWithTimeout(10 * time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
		})
	default:
		srv := p.NewFastServer(sopt)
		go func() { _ = srv.Serve(ln) }()
		b.Cleanup(func() { _ = srv.Shutdown() })
	}
	m2 := memNow()

	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^TestHelperIdleClients$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %t", idleClientsEnv, ln.Addr(), conns, tlsOn))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(stdout)
	ready := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "ready") {
			ready = true
			break
		}
	}
	if !ready {
		b.Fatal("helper did not open its connections")
	}
	m3 := memNow()
	if ls != nil {
		held := 0
		for _, lp := range ls.loops {
			held += int(lp.load.Load())
		}
		if held != conns {
			b.Fatalf("the loops hold %d connections, want %d", held, conns)
		}
	}
	for b.Loop() {
	}
	b.ReportMetric(float64(m1.heap-m0.heap)/instances, "heap-B/instance")
	b.ReportMetric(float64(m3.heap+m3.stack-m2.heap-m2.stack)/conns, "heap+stack-B/idle-conn")
	b.ReportMetric(float64(int64(m3.rss)-int64(m2.rss))/conns, "rss-B/idle-conn") // may be negative after another sub-benchmark freed memory: run one alone
	b.ReportMetric(float64(m3.rss)/(1<<20), "rss-MiB-total")
}

type memSample struct{ heap, stack, rss uint64 }

func memNow() memSample {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := memSample{heap: ms.HeapInuse, stack: ms.StackInuse}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				s.rss = kb << 10
			}
		}
	}
	return s
}

func raiseNoFile(tb testing.TB) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
	if lim.Cur < 12000 {
		tb.Skipf("RLIMIT_NOFILE hard limit %d: too low for 10,000 connections", lim.Max)
	}
}

// TestHelperIdleClients is the helper process of the memory benchmark: it
// opens the connections (TLS ones with ALPN http/1.1), sends one request on
// each, then keeps them idle until its stdin closes. It does nothing in a normal test run.
func TestHelperIdleClients(t *testing.T) {
	spec := os.Getenv(idleClientsEnv)
	if spec == "" {
		t.Skip("helper process of BenchmarkMemory1000Instances10kIdleConns")
	}
	var addr string
	var n int
	var tlsOn bool
	if _, err := fmt.Sscan(spec, &addr, &n, &tlsOn); err != nil {
		t.Fatal(err)
	}
	raiseNoFile(t)
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	errc := make(chan error, n)
	sem := make(chan struct{}, 64)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var c net.Conn
			var err error
			if tlsOn {
				c, err = tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			} else {
				c, err = net.Dial("tcp", addr)
			}
			if err != nil {
				errc <- err
				return
			}
			conns[i] = c
			if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: gw.example.com\r\n\r\n"); err != nil {
				errc <- err
				return
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				errc <- err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errc <- fmt.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}
