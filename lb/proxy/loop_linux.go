package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/gwnomad/gwnomad/lb/balancer"
)

// The event-loop engine ([proxy] engine = "event-loop") serves plain
// HTTP/1.1 with an event loop per processor instead of a goroutine per
// connection: the Go scheduler's parking and waking of goroutines, most of
// the CPU a request costs above the kernel's (BENCHMARKS.md, "An event loop
// per core"), is gone. It keeps the request path's rules (proxy.go, 1–7)
// and its parts: the route table and selectors, passive health, the retry
// budget, the header rules, metrics and the access log. Its own rules:
//
//  L1. One loop per processor (GOMAXPROCS at start, L9), each on an OS
//      thread of its own, waiting in epoll_wait; all accept from the one
//      listening socket. A loop that accepts a connection while another
//      loop has fewer gives it to that one (the kernel wakes whichever
//      loop waits, and one wake-up drains the queue, so the first loop
//      awake would take a whole burst). A loop owns its client
//      connections and the gateway connections it opened for them, and
//      only it touches them: no locks. Its gateway connections are pooled
//      per instance, the one used last going out first.
//  L2. A loop serves HTTP/1.1 requests without a body (GET, HEAD, DELETE,
//      … with no Content-Length or 0) in origin form, to routes of scheme
//      http, one at a time per connection (pipelined requests wait their
//      turn), and the answers whose length is known and within
//      min(max_buffered_response_bytes, 1 MiB), or that have no body.
//  L3. A client connection that sends anything else (a body, Expect, an
//      upgrade, HTTP/1.0, an absolute URI, a head too large or that does
//      not parse, a route to https gateways) is handed, with the bytes read
//      from it and before anything of that request reached a gateway, to
//      the goroutine engine (NewFastServer), which serves it from then on.
//  L4. An answer a loop does not hold whole (chunked, ended by the gateway
//      closing, or too long) is relayed by a goroutine: head and body as
//      they come, chunked to the client when the gateway gave no length.
//      The client connection then goes to the goroutine engine.
//  L5. Timeouts (read, write, idle, dial, upstream, the pool's idle
//      connections) are checked every 100 ms: they are seconds long, and a
//      sweep costs no system call.
//  L6. A gateway connection that broke before any answer, when it was
//      reused from the pool, is retried once on a new connection to the
//      same instance for idempotent methods (fasthttp's rule), without
//      counting against its health.
//  L7. On Shutdown the loops stop accepting, close their idle client
//      connections, answer the requests in flight with Connection: close
//      and stop once no client connection is left; then the goroutine
//      engine drains what was handed to it.
//  L8. Over TLS, the TLS server does the handshake on a goroutine; a
//      connection that negotiated HTTP/1.1 is then adopted by a loop (the
//      one with the fewest connections), which reads and writes its
//      socket under crypto/tls (loop_tls_linux.go) by L1–L7. What it
//      hands over (L3, L4) goes to that TLS server's goroutine engine,
//      still a TLS connection. h2 connections stay with net/http.
//  L9. The process runs with one P more than it has loops: GOMAXPROCS is
//      raised once, to its value at start plus one, when the first loop
//      server starts. A loop waits in epoll_wait inside a system call;
//      while every P is held so, the runtime's monitor takes one back every
//      20 µs and starts a thread that finds nothing to run and sleeps
//      again. An idle P stops that churn of threads, sleeps and context
//      switches. The goroutines (handshakes, h2, discovery) use the spare
//      P when the loops leave it idle.
//  L10. A fault never ends the process. A loop that meets a state it
//      should not (a loopFault) or panics while serving a connection's
//      event closes that connection and the gateway connection serving it,
//      counts it (gwnomad_lb_event_loop_faults_total{scope="connection"})
//      and logs it, and goes on with its other connections. A fault
//      outside any connection's event (accepting, sweeping) closes all
//      the loop's connections and starts the loop again ({scope="loop"}).
//      The log names the fault and where it happened, never a byte a
//      client sent.
//  L11. The answers a loop holds count against the answer budget
//      (max_buffered_total_bytes, transport.go) from their head until
//      their last byte is written or the client is gone: one of known
//      length whole, a chunked one as it is decoded. An answer the budget
//      cannot take is relayed (L4) and streamed, not held, so clients
//      that do not read cannot pin more than the budget. A loop takes the
//      budget in leases of up to 1 MiB, so that an answer costs no atomic
//      operation, and gives back what it does not hold at each sweep.

const (
	loopMaxAnswer   = 1 << 20                // the most a loop buffers of one answer (L2)
	loopSweep       = 100 * time.Millisecond // L5
	loopGatewayIdle = 15 * time.Second       // as the HostClient's MaxIdleConnDuration
	loopGatewayHead = 16 << 10               // as the HostClient's ReadBufferSize
	loopFirstBuffer = 4 << 10                // a gateway connection's first read buffer
	loopKeepBuffer  = 64 << 10               // larger buffers are dropped after their answer
	loopLease       = 1 << 20                // of the answer budget, taken at once (L11)
)

// loopProcs is the number of loops of a server: GOMAXPROCS as the process
// started, before L9 raised it.
var loopProcs = runtime.GOMAXPROCS(0)

// spareP raises GOMAXPROCS by one, once (L9).
var spareP = sync.OnceFunc(func() {
	if runtime.GOMAXPROCS(0) <= loopProcs {
		runtime.GOMAXPROCS(loopProcs + 1)
	}
})

// LoopServer is the event-loop engine for one plain listener.
type LoopServer struct {
	p         *Proxy
	opt       ServerOptions
	fast      *fasthttp.Server // serves the connections handed off (L3, L4)
	hand      *chanListener
	maxAnswer int
	maxHead   int

	mu       sync.Mutex
	serving  bool
	ln       net.Listener // nil: the loops serve adopted TLS connections only
	lnfd     int          // -1 without ln
	loops    []*loop
	done     chan struct{} // closed when Serve's loops all returned
	stopping atomic.Bool
	force    atomic.Bool
	relays   sync.WaitGroup // L4's goroutines
}

// NewLoopServer returns the event-loop engine with the limits of o. Its
// connections with what it does not serve itself go to a fasthttp server
// with the same limits.
func (p *Proxy) NewLoopServer(o ServerOptions) *LoopServer {
	s := &LoopServer{p: p, opt: o, fast: p.NewFastServer(o), maxAnswer: loopMaxAnswer, done: make(chan struct{})}
	if m := p.opt.MaxBufferedResponse; m > 0 && m < s.maxAnswer {
		s.maxAnswer = m
	}
	s.maxHead = o.MaxHeaderBytes
	if s.maxHead <= 0 {
		s.maxHead = 4096 // fasthttp's default ReadBufferSize
	}
	return s
}

// Serve accepts on ln, and serves the TLS connections given to adoptTLS,
// until Shutdown. ln must be a TCP listener (its file descriptor is shared
// with the loops), or nil: TLS connections only.
func (s *LoopServer) Serve(ln net.Listener) error {
	var rc syscall.RawConn
	if ln != nil {
		sc, ok := ln.(syscall.Conn)
		if !ok {
			return fmt.Errorf("event loop: listener %T has no file descriptor", ln)
		}
		var err error
		if rc, err = sc.SyscallConn(); err != nil {
			return fmt.Errorf("event loop: %w", err)
		}
	}
	s.mu.Lock()
	if s.stopping.Load() || s.serving {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.lnfd = -1
	var addr net.Addr = &net.TCPAddr{}
	if rc != nil {
		var dupErr error
		if err := rc.Control(func(fd uintptr) { s.lnfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || dupErr != nil {
			s.mu.Unlock()
			return fmt.Errorf("event loop: duplicating the listener: %w", errors.Join(err, dupErr))
		}
		addr = ln.Addr()
	}
	s.ln = ln
	s.hand = newChanListener(addr)
	for range loopProcs {
		lp, err := newLoop(s)
		if err != nil {
			for _, lp := range s.loops {
				lp.closeFds()
			}
			if s.lnfd >= 0 {
				unix.Close(s.lnfd)
			}
			s.mu.Unlock()
			return err
		}
		s.loops = append(s.loops, lp)
	}
	s.serving = true
	s.mu.Unlock()
	spareP()

	go func() { _ = s.fast.Serve(s.hand) }()
	var wg sync.WaitGroup
	for _, lp := range s.loops {
		wg.Go(lp.run)
	}
	wg.Wait()
	if s.lnfd >= 0 {
		unix.Close(s.lnfd)
	}
	close(s.done)
	return nil
}

// Shutdown stops accepting and waits until every connection finished its
// request in flight and closed (L7), or ctx ends: then the rest are closed
// and ctx's error is returned.
func (s *LoopServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.stopping.Store(true)
	serving := s.serving
	for _, lp := range s.loops {
		lp.wake()
	}
	s.mu.Unlock()
	var err error
	if serving {
		select {
		case <-s.done:
		case <-ctx.Done():
			s.force.Store(true)
			for _, lp := range s.loops {
				lp.wake()
			}
			<-s.done
			err = ctx.Err()
		}
		if s.ln != nil {
			_ = s.ln.Close()
		}
	}
	if ferr := s.fast.ShutdownWithContext(ctx); ferr != nil && err == nil {
		err = ferr
	}
	relaysDone := make(chan struct{})
	go func() { s.relays.Wait(); close(relaysDone) }()
	select {
	case <-relaysDone:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}

// loop is one event loop (L1).
type loop struct {
	s         *LoopServer
	p         *Proxy
	ep, ev    int   // the epoll and the eventfd that wakes it
	socks     []any // by file descriptor: *client or *gateway
	seq       int32 // registrations, told apart in events (a closed fd is soon reused)
	clients   int
	load      atomic.Int32                      // clients, and connections given to it not taken yet (L1)
	pools     map[*balancer.Upstream][]*gateway // idle, used last at the end
	rbuf      []byte                            // client reads
	hbuf      []byte                            // answer heads
	iov       [2]unix.Iovec
	now       time.Time
	nowNano   int64
	nextSweep int64
	stopped   bool
	lnOff     bool              // the listener is out of the epoll (stopped, or accept failed for want of fds)
	answer    fasthttp.Response // error answers
	rd        bytes.Reader
	br        *bufio.Reader // heads are parsed from it
	plain     []byte        // an answer to seal (TLS)
	sealed    []byte        // and sealed
	lease     int64         // of the answer budget, taken and not held by a client (L11)

	amu   sync.Mutex
	given []newConn // connections given to this loop (L1, L8)
	gone  bool      // the loop ended: give closes what comes
}

// newConn is a client connection given to a loop: by the loop that
// accepted it (L1), or after its TLS handshake (L8).
type newConn struct {
	fd     int
	remote netip.Addr
	link   *tlsLink // nil: plain HTTP
}

// leastLoaded is the loop with the fewest connections.
func (s *LoopServer) leastLoaded() *loop {
	best := s.loops[0]
	n := best.load.Load()
	for _, lp := range s.loops[1:] {
		if k := lp.load.Load(); k < n {
			best, n = lp, k
		}
	}
	return best
}

// give queues n for lp and wakes it (from any goroutine).
func (lp *loop) give(n newConn) {
	lp.amu.Lock()
	if lp.gone {
		lp.amu.Unlock()
		unix.Close(n.fd)
		return
	}
	lp.load.Add(1)
	lp.given = append(lp.given, n)
	lp.amu.Unlock()
	lp.wake()
}

// takeGiven serves the connections given to lp.
func (lp *loop) takeGiven() {
	lp.amu.Lock()
	q := lp.given
	lp.given = nil
	lp.amu.Unlock()
	for _, n := range q {
		if m := lp.s.opt.MaxConns; m > 0 && lp.clients >= max(m/len(lp.s.loops), 1) {
			unix.Close(n.fd)
			lp.load.Add(-1)
			continue
		}
		c := &client{fd: n.fd, remote: n.remote, tls: n.link, readable: true}
		var err error
		if c.seq, err = lp.register(n.fd, c); err != nil {
			unix.Close(n.fd)
			lp.load.Add(-1)
			continue
		}
		if n.link != nil {
			n.link.c = c
			lp.p.m.LoopTLS.Inc()
		}
		lp.clients++
		c.deadline = lp.after(lp.s.idleTimeout())
		// Its first request may be in already; over TLS crypto/tls may
		// hold it, read with the handshake's last flight (the
		// registration's EPOLLOUT edge would also bring it).
		lp.serveGiven(c)
	}
}

// serveGiven serves a connection just given to the loop; a fault closes
// that connection only, as in its later events (L10).
func (lp *loop) serveGiven(c *client) {
	defer lp.contain(c, nil)
	lp.serveClient(c)
}

// dropGiven closes what is queued when the loop ends, and what comes.
func (lp *loop) dropGiven() {
	lp.amu.Lock()
	q := lp.given
	lp.given, lp.gone = nil, true
	lp.amu.Unlock()
	for _, n := range q {
		unix.Close(n.fd)
	}
}

func newLoop(s *LoopServer) (*loop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("event loop: epoll_create1: %w", err)
	}
	ev, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("event loop: eventfd: %w", err)
	}
	lp := &loop{
		s: s, p: s.p, ep: ep, ev: ev, pools: map[*balancer.Upstream][]*gateway{},
		rbuf: make([]byte, s.maxHead+1),
		br:   bufio.NewReaderSize(nil, max(s.maxHead, loopGatewayHead)+1),
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ev, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ev)}); err != nil {
		lp.closeFds()
		return nil, fmt.Errorf("event loop: %w", err)
	}
	if err := lp.listen(); err != nil {
		lp.closeFds()
		return nil, err
	}
	return lp, nil
}

func (lp *loop) closeFds() {
	unix.Close(lp.ep)
	unix.Close(lp.ev)
}

// listen puts the listening socket in the epoll; EPOLLEXCLUSIVE wakes one
// loop per connection, not all.
func (lp *loop) listen() error {
	fd := lp.s.lnfd
	if fd < 0 {
		lp.lnOff = true
		return nil
	}
	if err := unix.EpollCtl(lp.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fd)}); err != nil {
		return fmt.Errorf("event loop: adding the listener: %w", err)
	}
	lp.lnOff = false
	return nil
}

func (lp *loop) unlisten() {
	if !lp.lnOff && lp.s.lnfd >= 0 {
		_ = unix.EpollCtl(lp.ep, unix.EPOLL_CTL_DEL, lp.s.lnfd, nil)
		lp.lnOff = true
	}
}

// wake makes the loop look at the server's state (from any goroutine).
func (lp *loop) wake() {
	one := [8]byte{1}
	_, _ = unix.Write(lp.ev, one[:])
}

func (lp *loop) clock() {
	lp.now = time.Now()
	lp.nowNano = lp.now.UnixNano()
}

func (lp *loop) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer lp.closeFds()
	events := make([]unix.EpollEvent, 256)
	lp.clock()
	lp.nextSweep = lp.nowNano + int64(loopSweep)
	for !lp.serve(events) {
	}
	for _, o := range lp.socks {
		if g, ok := o.(*gateway); ok {
			lp.closeGateway(g)
		}
	}
	lp.giveBack()
	lp.dropGiven()
}

// serve runs the loop until it ends (true), or until a fault that no
// connection's containment caught (false): then the loop's connections
// are closed and the caller starts it again (L10).
func (lp *loop) serve(events []unix.EpollEvent) (ended bool) {
	defer func() {
		if v := recover(); v != nil {
			lp.p.m.faultLoop.Inc()
			lp.p.log.Error("event loop: fault; closing the loop's connections and starting it again", "fault", faultText(v), "at", faultSite())
			lp.reset()
			ended = false
		}
	}()
	lp.state()
	for !(lp.stopped && lp.clients == 0) {
		n, err := unix.EpollWait(lp.ep, events, int(loopSweep/time.Millisecond))
		if err != nil && err != unix.EINTR {
			lp.p.log.Error("event loop: epoll_wait failed; closing its connections", "err", err)
			lp.s.force.Store(true)
			lp.state()
			break
		}
		lp.clock()
		for i := range max(n, 0) {
			lp.event(&events[i])
		}
		if lp.nowNano >= lp.nextSweep {
			lp.sweep()
			lp.nextSweep = lp.nowNano + int64(loopSweep)
		}
	}
	return true
}

// event dispatches one epoll event. A fault while serving a connection
// closes that connection (and the gateway connection serving it), not
// the loop (L10).
func (lp *loop) event(e *unix.EpollEvent) {
	fd := int(e.Fd)
	switch {
	case fd == lp.ev:
		var b [8]byte
		_, _ = unix.Read(lp.ev, b[:])
		lp.takeGiven()
		lp.state()
	case fd == lp.s.lnfd:
		lp.accept()
	case fd < len(lp.socks):
		switch o := lp.socks[fd].(type) {
		case *client:
			if o.seq == e.Pad {
				defer lp.contain(o, nil)
				lp.clientEvent(o, e.Events)
			}
		case *gateway:
			if o.seq == e.Pad {
				defer lp.contain(o.c, o)
				lp.gatewayEvent(o, e.Events)
			}
		}
	}
}

// contain, deferred around a connection's event, turns a fault into the
// end of that connection (L10): c, and g, the gateway connection of the
// event (nil for a client's), if c no longer holds it. c is nil for an
// idle gateway connection.
func (lp *loop) contain(c *client, g *gateway) {
	v := recover()
	if v == nil {
		return
	}
	lp.p.m.faultConn.Inc()
	lp.p.log.Error("event loop: fault; closing the connection", "fault", faultText(v), "at", faultSite())
	if c != nil {
		lp.abandon(c)
	}
	if g != nil {
		func() {
			defer func() { _ = recover() }()
			lp.closeGateway(g)
		}()
	}
	lp.tidy()
}

// abandon closes c and its gateway connection whatever state they are
// in, as far as it can: c's state may be what the fault left.
func (lp *loop) abandon(c *client) {
	defer func() { _ = recover() }()
	lp.unhold(c)
	if x := c.x; x != nil {
		c.x = nil
		if g := x.gw; g != nil {
			x.gw = nil
			lp.closeGateway(g)
		}
	}
	if c.fd >= 0 {
		fd := c.fd
		c.fd = -1
		if fd < len(lp.socks) && lp.socks[fd] == c {
			lp.forget(fd)
		}
		unix.Close(fd)
		lp.clients--
		lp.load.Add(-1)
	}
	c.state = cGone
}

// tidy drops from the loop's table the connections that a fault left
// closed but registered, so that a reused descriptor is not taken for
// them.
func (lp *loop) tidy() {
	for fd, o := range lp.socks {
		switch o := o.(type) {
		case *client:
			if o.fd != fd {
				lp.socks[fd] = nil
			}
		case *gateway:
			if o.fd != fd {
				lp.socks[fd] = nil
			}
		}
	}
}

// reset closes every connection of the loop after a fault that left its
// state unknown (L10); the listener and what is given to the loop stay.
func (lp *loop) reset() {
	for fd, o := range lp.socks {
		if o == nil {
			continue
		}
		lp.socks[fd] = nil
		_ = unix.EpollCtl(lp.ep, unix.EPOLL_CTL_DEL, fd, nil)
		switch o := o.(type) {
		case *client:
			if o.fd == fd {
				unix.Close(fd)
			}
			lp.unhold(o)
			o.fd, o.state = -1, cGone
		case *gateway:
			if o.fd == fd {
				unix.Close(fd)
				o.ux.loopConns.Add(-1)
			}
			if o.c != nil {
				o.u.Release()
				o.c = nil
			}
			o.fd = -1
		}
	}
	lp.load.Add(-int32(lp.clients))
	lp.clients = 0
	lp.giveBack()
	lp.pools = map[*balancer.Upstream][]*gateway{}
}

// loopFault is an unexpected state a loop met (L10).
type loopFault string

func (f loopFault) Error() string { return "event loop: " + string(f) }

// faultText is a fault's description for the log: the runtime's error or
// the loop's own text, never a value a client sent.
func faultText(v any) string {
	switch v := v.(type) {
	case loopFault:
		return string(v)
	case runtime.Error:
		return v.Error()
	case error:
		return fmt.Sprintf("%T", v)
	}
	return fmt.Sprintf("%T", v)
}

// faultSite is the function and line where the fault was raised: the
// first frame below the runtime's panic machinery.
func faultSite() string {
	pcs := make([]uintptr, 16)
	n := runtime.Callers(3, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	for {
		f, more := frames.Next()
		if !strings.HasPrefix(f.Function, "runtime.") {
			return fmt.Sprintf("%s:%d", f.Function, f.Line)
		}
		if !more {
			return ""
		}
	}
}

// state applies Shutdown (L7).
func (lp *loop) state() {
	if !lp.s.stopping.Load() {
		return
	}
	if !lp.stopped {
		lp.stopped = true
		lp.unlisten()
	}
	force := lp.s.force.Load()
	for _, o := range lp.socks {
		if c, ok := o.(*client); ok && (force || (c.state == cIdle && len(c.buf) == 0)) {
			lp.closeClient(c)
		}
	}
}

// register adds fd to the epoll, edge-triggered for reading and writing,
// and returns the registration's number.
func (lp *loop) register(fd int, o any) (int32, error) {
	lp.seq++
	if lp.seq < 0 {
		lp.seq = 1
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd), Pad: lp.seq}
	if err := unix.EpollCtl(lp.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return 0, err
	}
	for fd >= len(lp.socks) {
		lp.socks = append(lp.socks, nil)
	}
	lp.socks[fd] = o
	return lp.seq, nil
}

// forget takes fd out of the epoll and the loop (not closing it).
func (lp *loop) forget(fd int) {
	if fd < 0 || fd >= len(lp.socks) || lp.socks[fd] == nil {
		panic(loopFault("forgetting a descriptor the loop does not hold"))
	}
	_ = unix.EpollCtl(lp.ep, unix.EPOLL_CTL_DEL, fd, nil)
	lp.socks[fd] = nil
}

func (lp *loop) accept() {
	for {
		fd, sa, err := unix.Accept4(lp.s.lnfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch err {
		case nil:
		case unix.EINTR, unix.ECONNABORTED:
			continue
		case unix.EAGAIN:
			return
		default:
			// Out of file descriptors, say: stop listening until the
			// next sweep rather than spin on the same error.
			lp.p.log.Warn("event loop: accept failed; pausing accepts", "err", err)
			lp.unlisten()
			return
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		if to := lp.s.leastLoaded(); to.load.Load() < lp.load.Load() {
			to.give(newConn{fd: fd, remote: sockaddrIP(sa)})
			continue
		}
		if m := lp.s.opt.MaxConns; m > 0 && lp.clients >= max(m/len(lp.s.loops), 1) {
			unix.Close(fd)
			continue
		}
		c := &client{fd: fd, remote: sockaddrIP(sa)}
		if c.seq, err = lp.register(fd, c); err != nil {
			unix.Close(fd)
			continue
		}
		lp.clients++
		lp.load.Add(1)
		c.deadline = lp.after(lp.s.idleTimeout())
	}
}

func (s *LoopServer) idleTimeout() time.Duration {
	if s.opt.IdleTimeout > 0 {
		return s.opt.IdleTimeout
	}
	return s.opt.ReadTimeout // fasthttp's rule
}

// after is the deadline d from now; 0 (none) for d <= 0.
func (lp *loop) after(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return lp.nowNano + int64(d)
}

func sockaddrIP(sa unix.Sockaddr) netip.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr)
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr).Unmap()
	}
	return netip.Addr{}
}

// testFault, set by tests only, raises faults where a loop serves a
// request head ("request") and where it sweeps ("sweep"), to prove L10.
var testFault atomic.Pointer[func(site string, s *LoopServer, head []byte)]

// sweep applies the timeouts (L5) and gives the unused lease of the
// answer budget back (L11).
func (lp *loop) sweep() {
	lp.giveBack()
	if f := testFault.Load(); f != nil {
		(*f)("sweep", lp.s, nil)
	}
	if lp.lnOff && !lp.stopped && lp.s.lnfd >= 0 {
		if err := lp.listen(); err != nil {
			lp.p.log.Warn("event loop: listening again failed", "err", err)
		}
	}
	now := lp.nowNano
	for _, o := range lp.socks {
		switch o := o.(type) {
		case *client:
			if o.deadline == 0 || now < o.deadline {
				continue
			}
			if o.state == cIdle && len(o.buf) > 0 {
				lp.writeRaw(o, timeoutAnswer) // a request begun and not finished: 408, as fasthttp answers
				continue
			}
			lp.closeClient(o)
		case *gateway:
			if o.deadline == 0 || now < o.deadline {
				continue
			}
			switch o.state {
			case gIdle:
				lp.closeGateway(o)
			case gConnecting:
				lp.gatewayFailed(o, &dialError{&net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(o.ux.addr), Err: os.ErrDeadlineExceeded}})
			default:
				lp.gatewayFailed(o, &net.OpError{Op: "read", Net: "tcp", Addr: net.TCPAddrFromAddrPort(o.ux.addr), Err: os.ErrDeadlineExceeded})
			}
		}
	}
}

var timeoutAnswer = []byte("HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 28\r\nConnection: close\r\n\r\ngwnomad-lb: request timeout\n")

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(b, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// rawRead and rawWrite are read(2) and write(2) without the runtime's
// bookkeeping of a system call that may block (entersyscall, exitsyscall):
// a loop's sockets are non-blocking, so these never wait.
func rawRead(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func rawWrite(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
