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
//  L1. One loop per processor (GOMAXPROCS), each on an OS thread of its
//      own, waiting in epoll_wait; all accept from the one listening
//      socket. A loop owns the client connections it accepted and the
//      gateway connections it opened for them, and only it touches them:
//      no locks. Its gateway connections are pooled per instance, the one
//      used last going out first.
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

const (
	loopMaxAnswer   = 1 << 20                // the most a loop buffers of one answer (L2)
	loopSweep       = 100 * time.Millisecond // L5
	loopGatewayIdle = 15 * time.Second       // as the HostClient's MaxIdleConnDuration
	loopGatewayHead = 16 << 10               // as the HostClient's ReadBufferSize
	loopFirstBuffer = 4 << 10                // a gateway connection's first read buffer
	loopKeepBuffer  = 64 << 10               // larger buffers are dropped after their answer
)

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
	ln       net.Listener
	lnfd     int
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

// Serve accepts on ln until Shutdown. ln must be a TCP listener (its file
// descriptor is shared with the loops).
func (s *LoopServer) Serve(ln net.Listener) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return fmt.Errorf("event loop: listener %T has no file descriptor", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("event loop: %w", err)
	}
	s.mu.Lock()
	if s.stopping.Load() || s.serving {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	var dupErr error
	if err := rc.Control(func(fd uintptr) { s.lnfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || dupErr != nil {
		s.mu.Unlock()
		return fmt.Errorf("event loop: duplicating the listener: %w", errors.Join(err, dupErr))
	}
	s.ln = ln
	s.hand = newChanListener(ln.Addr())
	for range runtime.GOMAXPROCS(0) {
		lp, err := newLoop(s)
		if err != nil {
			for _, lp := range s.loops {
				lp.closeFds()
			}
			unix.Close(s.lnfd)
			s.mu.Unlock()
			return err
		}
		s.loops = append(s.loops, lp)
	}
	s.serving = true
	s.mu.Unlock()

	go func() { _ = s.fast.Serve(s.hand) }()
	var wg sync.WaitGroup
	for _, lp := range s.loops {
		wg.Go(lp.run)
	}
	wg.Wait()
	unix.Close(s.lnfd)
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
		_ = s.ln.Close()
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
	if err := unix.EpollCtl(lp.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fd)}); err != nil {
		return fmt.Errorf("event loop: adding the listener: %w", err)
	}
	lp.lnOff = false
	return nil
}

func (lp *loop) unlisten() {
	if !lp.lnOff {
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
			e := &events[i]
			fd := int(e.Fd)
			switch {
			case fd == lp.ev:
				var b [8]byte
				_, _ = unix.Read(lp.ev, b[:])
				lp.state()
			case fd == lp.s.lnfd:
				lp.accept()
			case fd < len(lp.socks):
				switch o := lp.socks[fd].(type) {
				case *client:
					if o.seq == e.Pad {
						lp.clientEvent(o, e.Events)
					}
				case *gateway:
					if o.seq == e.Pad {
						lp.gatewayEvent(o, e.Events)
					}
				}
			}
		}
		if lp.nowNano >= lp.nextSweep {
			lp.sweep()
			lp.nextSweep = lp.nowNano + int64(loopSweep)
		}
	}
	for _, o := range lp.socks {
		if g, ok := o.(*gateway); ok {
			lp.closeGateway(g)
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
		if m := lp.s.opt.MaxConns; m > 0 && lp.clients >= max(m/len(lp.s.loops), 1) {
			unix.Close(fd)
			continue
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		c := &client{fd: fd, remote: sockaddrIP(sa)}
		if c.seq, err = lp.register(fd, c); err != nil {
			unix.Close(fd)
			continue
		}
		lp.clients++
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

// sweep applies the timeouts (L5).
func (lp *loop) sweep() {
	if lp.lnOff && !lp.stopped {
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

// client is a client connection.
type client struct {
	fd         int
	seq        int32
	state      uint8
	readable   bool // an edge came that was not read to its end
	closeAfter bool
	remote     netip.Addr
	buf        []byte // read and not served yet: a partial head, or pipelined requests
	out        []byte // the part of an answer the socket did not take at once
	deadline   int64  // unix nanoseconds; 0: none
	x          *exchange
}

const (
	cIdle    = iota // between requests, or reading one
	cBusy           // its request is at a gateway
	cWriting        // its answer is being written
)

// exchange is one request and its answer, from the head's arrival to the
// answer's last byte.
type exchange struct {
	hdr       fasthttp.RequestHeader
	resp      fasthttp.ResponseHeader
	head      []byte // the request head as sent to the gateways
	route     *balancer.Route
	tried     balancer.Tried
	tries     int
	up        *balancer.Upstream
	err       error
	none      bool
	noRoute   bool
	idem      bool
	isHead    bool
	staleTry  bool // L6 was used for this try
	start     time.Time
	code      int
	bytes     int
	gw        *gateway
	bodyStart int // in the gateway's buffer
	total     int // head and body, once known
	interim   int
	headed    bool // the final answer's head is in
	// A chunked answer is decoded in place as its chunks come: the next
	// chunk's size line is at bodyStart+scan, its data goes to
	// bodyStart+dec.
	chunked bool
	trailer int // trailer lines read, +1 (0: not in the trailer)
	scan    int
	dec     int
}

var exchanges = sync.Pool{New: func() any { return new(exchange) }}

func getExchange() *exchange { return exchanges.Get().(*exchange) }

func putExchange(x *exchange) {
	x.hdr.Reset()
	x.resp.Reset()
	x.head = x.head[:0]
	x.route, x.tried, x.tries, x.up, x.err = nil, balancer.Tried{}, 0, nil, nil
	x.none, x.noRoute, x.idem, x.isHead, x.staleTry = false, false, false, false, false
	x.start, x.code, x.bytes, x.gw = time.Time{}, 0, 0, nil
	x.bodyStart, x.total, x.interim, x.headed = 0, 0, 0, false
	x.chunked, x.trailer, x.scan, x.dec = false, 0, 0, 0
	exchanges.Put(x)
}

func (lp *loop) clientEvent(c *client, ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.readable = true
	}
	if c.state == cWriting {
		if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			lp.flush(c)
		}
		return
	}
	if c.state == cIdle {
		lp.serveClient(c)
	}
}

// serveClient serves c's requests while they are buffered or readable.
func (lp *loop) serveClient(c *client) {
	for c.state == cIdle {
		if len(c.buf) > 0 && headLen(c.buf) > 0 {
			lp.request(c, c.buf)
			continue
		}
		if !c.readable {
			return
		}
		k := copy(lp.rbuf, c.buf)
		n, err := unix.Read(c.fd, lp.rbuf[k:])
		switch {
		case err == unix.EAGAIN:
			c.readable = false
			return
		case err == unix.EINTR:
			continue
		case err != nil || n == 0:
			lp.closeClient(c)
			return
		}
		if n < len(lp.rbuf)-k {
			c.readable = false // a short read emptied the socket; the next byte brings an edge
		}
		if k == 0 && len(c.buf) == 0 {
			c.deadline = lp.after(lp.s.opt.ReadTimeout) // a request begins
		}
		lp.request(c, lp.rbuf[:k+n])
	}
}

// headLen is the length of the head at the start of b, up to and with the
// empty line that ends it; -1 while incomplete.
func headLen(b []byte) int {
	if i := bytes.Index(b, crlfcrlf); i >= 0 {
		if j := bytes.Index(b[:i], lflf); j >= 0 {
			return j + 2
		}
		return i + 4
	}
	if j := bytes.Index(b, lflf); j >= 0 {
		return j + 2
	}
	if j := bytes.Index(b, lfcrlf); j >= 0 {
		return j + 3
	}
	return -1
}

var (
	crlfcrlf = []byte("\r\n\r\n")
	lflf     = []byte("\n\n")
	lfcrlf   = []byte("\n\r\n")
)

// request takes the next request from data, c's unserved bytes (which may
// be c.buf itself).
func (lp *loop) request(c *client, data []byte) {
	h := headLen(data)
	if h < 0 {
		if len(data) > lp.s.maxHead {
			lp.handOff(c, data) // fasthttp answers 431
			return
		}
		c.buf = append(c.buf[:0], data...)
		return
	}
	x := getExchange()
	var r *balancer.Route
	ok := lp.parse(func(br *bufio.Reader) error { return x.hdr.Read(br) }, data[:h]) == nil && servable(&x.hdr)
	if ok {
		if t := lp.p.table.Load(); t != nil {
			r = t.Match(x.hdr.Host())
		}
		ok = r == nil || r.Ext.(*routeExt).tls == nil
	}
	if !ok {
		putExchange(x)
		lp.handOff(c, data)
		return
	}
	c.buf = append(c.buf[:0], data[h:]...)
	c.x, c.state, c.deadline = x, cBusy, 0
	if x.hdr.ConnectionClose() {
		c.closeAfter = true
	}
	x.start, x.route = lp.now, r
	if r == nil {
		x.noRoute = true
		lp.answer.Reset()
		lp.answer.Header.SetContentType("text/plain; charset=utf-8")
		lp.answer.SetStatusCode(fasthttp.StatusNotFound)
		lp.answer.SetBodyString("gwnomad-lb: no route for this host\n")
		lp.replyOwn(c)
		return
	}
	stripHopRequest(&x.hdr, false)
	lp.p.setForwarded(&x.hdr, c.remote, false)
	x.head = x.hdr.AppendBytes(x.head[:0])
	x.idem = idempotent(x.hdr.Method())
	x.isHead = x.hdr.IsHead()
	lp.p.budget.request(lp.now.Unix())
	lp.try(c, x)
}

// servable: what a loop serves itself (L2).
func servable(h *fasthttp.RequestHeader) bool {
	uri := h.RequestURI()
	cl := h.ContentLength() // -2: neither Content-Length nor Transfer-Encoding, no body
	return h.IsHTTP11() && (cl == 0 || cl == -2) && len(uri) > 0 && uri[0] == '/' &&
		!h.ConnectionUpgrade() && len(h.Peek("Upgrade")) == 0 && len(h.Peek("Expect")) == 0 &&
		len(h.Peek("Transfer-Encoding")) == 0
}

// parse runs read (a header's Read) on b.
func (lp *loop) parse(read func(*bufio.Reader) error, b []byte) error {
	lp.rd.Reset(b)
	lp.br.Reset(&lp.rd)
	return read(lp.br)
}

// try sends the request to the next instance by rule 4 (proxy.go's
// forward, one attempt at a time).
func (lp *loop) try(c *client, x *exchange) {
	for {
		u := lp.next(x)
		if u == nil {
			lp.replyError(c, x)
			return
		}
		if lp.send(c, x, u, false) {
			return
		}
	}
}

// next picks the instance of the next attempt, nil when there is none
// (tries spent, no instance left, retry budget spent).
func (lp *loop) next(x *exchange) *balancer.Upstream {
	p, r := lp.p, x.route
	if x.tries >= p.opt.Tries {
		return nil
	}
	u := r.Pick(&x.tried, lp.nowNano)
	if u == nil {
		if x.tries == 0 {
			x.none = true
		}
		return nil
	}
	if x.tries > 0 {
		if !p.budget.retry(lp.now.Unix()) {
			p.m.BudgetExhausted.Inc()
			return nil
		}
		r.Ext.(*routeExt).retries.Inc()
	}
	x.tried.Add(u)
	x.up, x.tries, x.staleTry = u, x.tries+1, false
	return u
}

// send gives the request to a connection to u, pooled unless fresh; false:
// nothing was sent (x.err says why, u's health was told).
func (lp *loop) send(c *client, x *exchange, u *balancer.Upstream, fresh bool) bool {
	ux := u.Ext.(*upstreamExt)
	var g *gateway
	if !fresh {
		g = lp.pooled(u)
	}
	if g == nil {
		var err error
		if g, err = lp.dial(u, ux); err != nil {
			x.err = err
			lp.p.failure(x.route, u, ux)
			return false
		}
	}
	u.Acquire()
	g.c, x.gw = c, g
	g.off, x.total, x.bodyStart, x.interim, x.headed = 0, 0, 0, 0, false
	x.chunked, x.trailer, x.scan, x.dec = false, 0, 0, 0
	g.in = g.in[:0]
	if g.state == gConnecting {
		g.deadline = lp.after(lp.p.opt.DialTimeout)
		return true // written once connected
	}
	g.state = gBusy
	g.deadline = lp.after(lp.p.opt.UpstreamTimeout)
	lp.writeGateway(g) // a failure goes on from gatewayFailed
	return true
}

// gateway is a connection to a gateway instance.
type gateway struct {
	fd       int
	seq      int32
	state    uint8
	reused   bool
	u        *balancer.Upstream
	ux       *upstreamExt
	c        *client // whose request it carries
	off      int     // of the request head written
	in       []byte
	deadline int64
}

const (
	gConnecting = iota
	gIdle
	gBusy
)

var errNotIP = errors.New("the event-loop engine needs the gateway's address as an IP, not a name")

func (lp *loop) dial(u *balancer.Upstream, ux *upstreamExt) (*gateway, error) {
	opErr := func(err error) error {
		return &dialError{&net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ux.addr), Err: err}}
	}
	if !ux.addr.IsValid() {
		return nil, &dialError{errNotIP}
	}
	if int(ux.loopConns.Load()) >= lp.p.opt.MaxConnsPerUpstream {
		return nil, &dialError{fasthttp.ErrNoFreeConns}
	}
	a := ux.addr.Addr()
	var sa unix.Sockaddr
	family := unix.AF_INET
	if a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(ux.addr.Port()), Addr: a.As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ux.addr.Port()), Addr: a.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, opErr(os.NewSyscallError("socket", err))
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, opErr(os.NewSyscallError("connect", err))
	}
	g := &gateway{fd: fd, u: u, ux: ux, state: gConnecting}
	if g.seq, err = lp.register(fd, g); err != nil {
		unix.Close(fd)
		return nil, opErr(err)
	}
	ux.loopConns.Add(1)
	return g, nil
}

// pooled takes u's idle connection used last.
func (lp *loop) pooled(u *balancer.Upstream) *gateway {
	idle := lp.pools[u]
	if len(idle) == 0 {
		return nil
	}
	g := idle[len(idle)-1]
	idle[len(idle)-1] = nil
	if len(idle) == 1 {
		delete(lp.pools, u)
	} else {
		lp.pools[u] = idle[:len(idle)-1]
	}
	g.reused = true
	return g
}

func (lp *loop) unpool(g *gateway) {
	idle := lp.pools[g.u]
	for i, o := range idle {
		if o == g {
			idle = append(idle[:i], idle[i+1:]...)
			break
		}
	}
	if len(idle) == 0 {
		delete(lp.pools, g.u)
	} else {
		lp.pools[g.u] = idle
	}
}

// release ends g's part in its request: back to the pool if keep, else
// closed.
func (lp *loop) release(g *gateway, keep bool) {
	if g.c != nil {
		g.u.Release()
		g.c = nil
	}
	if !keep || lp.stopped {
		lp.closeGateway(g)
		return
	}
	g.state, g.off = gIdle, 0
	if cap(g.in) > loopKeepBuffer {
		g.in = nil
	} else {
		g.in = g.in[:0]
	}
	g.deadline = lp.after(loopGatewayIdle)
	lp.pools[g.u] = append(lp.pools[g.u], g)
}

func (lp *loop) closeGateway(g *gateway) {
	if g.fd < 0 {
		return
	}
	if g.state == gIdle {
		lp.unpool(g)
	}
	if g.c != nil {
		g.u.Release()
		g.c = nil
	}
	lp.forget(g.fd)
	unix.Close(g.fd)
	g.fd = -1
	g.ux.loopConns.Add(-1)
}

func (lp *loop) gatewayEvent(g *gateway, ev uint32) {
	switch g.state {
	case gConnecting:
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		if e, err := unix.GetsockoptInt(g.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || e != 0 {
			if err == nil {
				err = syscall.Errno(e)
			}
			lp.gatewayFailed(g, &dialError{&net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(g.ux.addr), Err: os.NewSyscallError("connect", err)}})
			return
		}
		g.state = gBusy
		g.deadline = lp.after(lp.p.opt.UpstreamTimeout)
		lp.writeGateway(g)
	case gIdle:
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) == 0 {
			return
		}
		// The gateway closed it, or sent what nobody asked for; or the
		// edge was of an answer read already.
		var b [1]byte
		if _, err := unix.Read(g.fd, b[:]); err != unix.EAGAIN {
			lp.closeGateway(g)
		}
	case gBusy:
		if g.off < len(g.c.x.head) {
			if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 || !lp.writeGateway(g) {
				return
			}
		}
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			lp.readGateway(g)
		}
	}
}

// writeGateway writes the request head; true once it is all out (the
// answer's edge comes after it).
func (lp *loop) writeGateway(g *gateway) bool {
	head := g.c.x.head
	for g.off < len(head) {
		n, err := unix.Write(g.fd, head[g.off:])
		switch {
		case err == unix.EAGAIN:
			return false
		case err == unix.EINTR:
			continue
		case err != nil:
			lp.gatewayFailed(g, &net.OpError{Op: "write", Net: "tcp", Addr: net.TCPAddrFromAddrPort(g.ux.addr), Err: os.NewSyscallError("write", err)})
			return false
		}
		g.off += n
	}
	return true
}

func (lp *loop) readGateway(g *gateway) {
	x := g.c.x
	for {
		if len(g.in) == cap(g.in) {
			size := max(2*cap(g.in), loopFirstBuffer)
			switch {
			case x.chunked:
				// Decoded in place: what is not decoded yet is the next
				// chunks' framing and data.
				size = min(size, x.bodyStart+x.dec+lp.s.maxAnswer+loopFirstBuffer)
			case x.headed:
				size = x.total
			default:
				size = min(size, loopGatewayHead+loopFirstBuffer)
			}
			if size <= cap(g.in) {
				if x.chunked {
					lp.relay(g) // longer than a loop holds
				} else {
					lp.gatewayFailed(g, errGatewayHead)
				}
				return
			}
			g.in = append(make([]byte, 0, size), g.in...)
		}
		free := cap(g.in) - len(g.in)
		n, err := unix.Read(g.fd, g.in[len(g.in):cap(g.in)])
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil:
			lp.gatewayFailed(g, &net.OpError{Op: "read", Net: "tcp", Addr: net.TCPAddrFromAddrPort(g.ux.addr), Err: os.NewSyscallError("read", err)})
			return
		case n == 0:
			lp.gatewayFailed(g, io.ErrUnexpectedEOF)
			return
		}
		g.in = g.in[:len(g.in)+n]
		more := n == free // the socket may hold more
		if !x.headed {
			switch lp.answerHead(g) {
			case headGone:
				return
			case headMore:
				if more {
					continue
				}
				return
			}
		}
		if x.chunked {
			switch lp.chunks(g) {
			case headGone:
				return
			case headDone:
				lp.answered(g)
				return
			}
		} else if len(g.in) >= x.total {
			lp.answered(g)
			return
		}
		if !more {
			return
		}
	}
}

var errGatewayHead = errors.New("gateway answer: header larger than 16 KiB")

const (
	headMore = iota // not all in yet
	headDone        // x.total is known
	headGone        // the answer went elsewhere: retried, failed, relayed
)

// answerHead parses the answer's head once it is in.
func (lp *loop) answerHead(g *gateway) int {
	c := g.c
	x := c.x
	for {
		h := headLen(g.in[x.bodyStart:])
		if h < 0 {
			if len(g.in)-x.bodyStart > loopGatewayHead {
				lp.gatewayFailed(g, errGatewayHead)
				return headGone
			}
			return headMore
		}
		x.resp.Reset()
		if err := lp.parse(func(br *bufio.Reader) error { return x.resp.Read(br) }, g.in[x.bodyStart:x.bodyStart+h]); err != nil {
			lp.gatewayFailed(g, fmt.Errorf("gateway answer: %w", err))
			return headGone
		}
		x.bodyStart += h
		code := x.resp.StatusCode()
		if code >= 100 && code < 200 && code != 101 {
			if x.interim++; x.interim > maxInterim {
				lp.gatewayFailed(g, errTooManyInterim)
				return headGone
			}
			continue // interim: the final answer follows
		}
		x.code = code
		break
	}
	x.resp.SetNoDefaultContentType(true)
	p, r := lp.p, x.route
	if x.code == 502 || x.code == 503 || x.code == 504 {
		p.failure(r, x.up, g.ux)
		// Another instance, if there is one to try; else this answer
		// is the client's.
		if x.idem && x.tries < p.opt.Tries && len(r.Upstreams) > x.tried.Len() {
			if u := lp.next(x); u != nil {
				lp.release(g, false)
				x.gw = nil
				if !lp.send(c, x, u, false) {
					lp.try(c, x)
				}
				return headGone
			}
		}
	}
	cl := x.resp.ContentLength()
	switch {
	case x.isHead || x.code == 204 || x.code == 304 || x.code == 101:
		x.total = x.bodyStart
	case cl >= 0 && cl <= lp.s.maxAnswer:
		x.total = x.bodyStart + cl
	case cl == -1:
		x.chunked = true
	default:
		lp.relay(g)
		return headGone
	}
	x.headed = true
	return headDone
}

// chunks decodes the chunks of a chunked answer that are in, in place;
// headDone once the trailer's end is (x.total is then known).
func (lp *loop) chunks(g *gateway) int {
	x := g.c.x
	b := g.in[x.bodyStart:]
	for {
		rest := b[x.scan:]
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			if len(rest) > loopGatewayHead {
				lp.gatewayFailed(g, errChunkSize)
				return headGone
			}
			return headMore
		}
		line := rest[:i+1]
		if x.trailer > 0 { // trailer fields, read and dropped (as body.go does)
			x.scan += len(line)
			if string(line) == "\r\n" || string(line) == "\n" {
				x.total = x.bodyStart + x.scan
				return headDone
			}
			if x.trailer++; x.trailer > 101 {
				lp.gatewayFailed(g, errTrailerLines)
				return headGone
			}
			continue
		}
		size, ok := parseChunkSize(line)
		switch {
		case !ok:
			lp.gatewayFailed(g, errChunkSize)
			return headGone
		case size == 0:
			x.trailer = 1
			x.scan += len(line)
			continue
		case int64(x.dec)+size > int64(lp.s.maxAnswer):
			lp.relay(g)
			return headGone
		}
		end := len(line) + int(size)
		if len(rest) < end+2 {
			return headMore
		}
		if rest[end] != '\r' || rest[end+1] != '\n' {
			lp.gatewayFailed(g, errChunkEnd)
			return headGone
		}
		x.dec += copy(b[x.dec:], rest[len(line):end])
		x.scan += end + 2
	}
}

// health tells the route how the instance answered (rule 5); 502–504 were
// told when their head came.
func (lp *loop) health(x *exchange, ux *upstreamExt) {
	switch {
	case x.code == 502 || x.code == 503 || x.code == 504:
	case x.code >= 500 && x.route.Ext.(*routeExt).failOn5x:
		lp.p.failure(x.route, x.up, ux)
	default:
		x.route.ReportSuccess(x.up, lp.nowNano)
	}
}

// answered writes the gateway's whole answer to the client.
func (lp *loop) answered(g *gateway) {
	c := g.c
	x := c.x
	lp.health(x, g.ux)
	keep := !x.resp.ConnectionClose() && len(g.in) == x.total && x.code != 101
	x.err = nil
	stripHopResponse(&x.resp)
	if c.closeAfter || lp.stopped {
		x.resp.SetConnectionClose()
	}
	body := g.in[x.bodyStart:x.total]
	if x.chunked {
		body = g.in[x.bodyStart : x.bodyStart+x.dec]
		x.resp.SetContentLength(x.dec)
	}
	lp.hbuf = x.resp.AppendBytes(lp.hbuf[:0])
	x.bytes = len(body)
	x.gw = nil
	// Back to the pool first, so that a pipelined request finds it; reply
	// writes (or copies) body before anything reuses the buffer.
	lp.release(g, keep)
	lp.reply(c, lp.hbuf, body)
}

// gatewayFailed handles a connection that failed before the whole answer
// was in: the same instance again (L6), another one (rule 4), or an error
// answer.
func (lp *loop) gatewayFailed(g *gateway, err error) {
	c := g.c
	if c == nil {
		lp.closeGateway(g)
		return
	}
	x := c.x
	stale := g.reused && len(g.in) == 0 && !x.staleTry && x.idem && !isTimeout(err)
	lp.release(g, false)
	x.gw = nil
	x.err = err
	if stale {
		x.staleTry = true
		if lp.send(c, x, x.up, true) {
			return
		}
		lp.try(c, x)
		return
	}
	lp.p.failure(x.route, x.up, x.up.Ext.(*upstreamExt))
	if nothingSent(err) || (x.idem && !isTimeout(err)) {
		lp.try(c, x)
		return
	}
	lp.replyError(c, x)
}

// replyError answers for the gateways (rule 7).
func (lp *loop) replyError(c *client, x *exchange) {
	o := outcome{up: x.up, err: x.err, none: x.none}
	lp.p.writeError(&lp.answer, &o)
	lp.replyOwn(c)
}

// replyOwn writes lp.answer, the balancer's own answer.
func (lp *loop) replyOwn(c *client) {
	x := c.x
	if c.closeAfter || lp.stopped {
		lp.answer.SetConnectionClose()
	}
	x.code = lp.answer.StatusCode()
	body := lp.answer.Body()
	x.bytes = len(body)
	lp.answer.Header.SetContentLength(len(body))
	lp.hbuf = lp.answer.Header.AppendBytes(lp.hbuf[:0])
	lp.reply(c, lp.hbuf, body)
}

// reply writes head and body to c, records the request, and goes on with
// c's next one.
func (lp *loop) reply(c *client, head, body []byte) {
	x := c.x
	lp.record(c, x)
	c.x = nil
	putExchange(x)
	c.state = cWriting
	c.deadline = lp.after(lp.s.opt.WriteTimeout)
	n, err := lp.writev(c.fd, head, body)
	switch {
	case err == unix.EAGAIN:
		n = 0
	case err != nil:
		lp.closeClient(c)
		return
	}
	if n < len(head)+len(body) {
		// The rest waits for the socket; it must outlive the buffers.
		if n < len(head) {
			c.out = append(append(c.out[:0], head[n:]...), body...)
		} else {
			c.out = append(c.out[:0], body[n-len(head):]...)
		}
		return
	}
	lp.written(c)
}

func (lp *loop) writeRaw(c *client, b []byte) {
	c.closeAfter = true
	c.state = cWriting
	c.deadline = lp.after(time.Second)
	c.out = append(c.out[:0], b...)
	lp.flush(c)
}

// writev writes head and body in one system call (x/sys's Writev
// allocates its iovecs; these are the loop's).
func (lp *loop) writev(fd int, head, body []byte) (int, error) {
	for {
		if len(body) == 0 {
			n, err := unix.Write(fd, head)
			if err == unix.EINTR {
				continue
			}
			return n, err
		}
		lp.iov[0].Base, lp.iov[1].Base = &head[0], &body[0]
		lp.iov[0].SetLen(len(head))
		lp.iov[1].SetLen(len(body))
		n, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&lp.iov[0])), 2)
		lp.iov[0].Base, lp.iov[1].Base = nil, nil
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// flush writes c's pending answer.
func (lp *loop) flush(c *client) {
	for len(c.out) > 0 {
		n, err := unix.Write(c.fd, c.out)
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil:
			lp.closeClient(c)
			return
		}
		c.out = c.out[n:]
	}
	if cap(c.out) > loopKeepBuffer {
		c.out = nil
	} else {
		c.out = c.out[:0]
	}
	lp.written(c)
}

// written: the answer is out; c's next request, or its end.
func (lp *loop) written(c *client) {
	if c.closeAfter || lp.stopped && len(c.buf) == 0 {
		lp.closeClient(c)
		return
	}
	c.state = cIdle
	if len(c.buf) > 0 {
		c.deadline = lp.after(lp.s.opt.ReadTimeout)
	} else {
		c.deadline = lp.after(lp.s.idleTimeout())
	}
	lp.serveClient(c)
}

func (lp *loop) closeClient(c *client) {
	if c.fd < 0 {
		return
	}
	if x := c.x; x != nil {
		if x.gw != nil {
			lp.release(x.gw, false)
		}
		c.x = nil
		putExchange(x)
	}
	lp.forget(c.fd)
	unix.Close(c.fd)
	c.fd = -1
	lp.clients--
}

// record counts the request and writes its access-log line.
func (lp *loop) record(c *client, x *exchange) {
	p := lp.p
	var r *balancer.Route
	if !x.noRoute {
		r = x.route
	}
	o := outcome{up: x.up, tries: x.tries, err: x.err, none: x.none, noRoute: x.noRoute}
	d := time.Since(x.start)
	p.recordDur(r, &o, x.code, d)
	if p.opt.AccessLog != nil {
		p.opt.AccessLog.Write(&Entry{
			Start: x.start, Duration: d, Remote: c.remote, Method: x.hdr.Method(), Host: x.hdr.Host(),
			URI: x.hdr.RequestURI(), Proto: x.hdr.Protocol(), Status: x.code, Bytes: x.bytes,
			Route: r, Upstream: x.up, Tries: x.tries, Err: x.err,
		})
	}
}

// connOf takes fd out of the loop and makes it a net.Conn of Go's own
// (net.FileConn duplicates it; the original is closed).
func (lp *loop) connOf(fd int) (net.Conn, error) {
	lp.forget(fd)
	f := os.NewFile(uintptr(fd), "")
	nc, err := net.FileConn(f)
	f.Close()
	return nc, err
}

// handOff gives c, with data (its bytes not served yet), to the goroutine
// engine (L3).
func (lp *loop) handOff(c *client, data []byte) {
	lp.p.m.handRequest.Inc()
	pre := bytes.Clone(data)
	fd := c.fd
	c.fd = -1
	lp.clients--
	nc, err := lp.connOf(fd)
	if err != nil {
		lp.p.log.Warn("event loop: handing a connection over failed", "err", err)
		return
	}
	lp.s.deliver(&prefixConn{Conn: nc, pre: pre})
}

// deliver gives c to the goroutine engine, or closes it if that stopped.
func (s *LoopServer) deliver(c net.Conn) {
	go func() {
		if !s.hand.deliver(c) {
			c.Close()
		}
	}()
}

// prefixConn reads pre before the connection.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(b, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// relay hands an answer the loop does not hold, with its client and
// gateway connections, to a goroutine (L4).
func (lp *loop) relay(g *gateway) {
	c := g.c
	x := c.x
	lp.p.m.handAnswer.Inc()
	lp.health(x, g.ux)
	x.gw = nil
	g.c = nil
	rest := bytes.Clone(g.in[x.bodyStart+x.scan:])
	held := bytes.Clone(g.in[x.bodyStart : x.bodyStart+x.dec]) // of a chunked answer: decoded already
	pre := bytes.Clone(c.buf)
	closeAfter := c.closeAfter || lp.stopped
	cfd, gfd := c.fd, g.fd
	c.fd, g.fd, c.x = -1, -1, nil
	lp.clients--
	cc, cerr := lp.connOf(cfd)
	gc, gerr := lp.connOf(gfd)
	ux := g.ux
	if cerr != nil || gerr != nil {
		for _, nc := range []net.Conn{cc, gc} {
			if nc != nil {
				nc.Close()
			}
		}
		ux.loopConns.Add(-1)
		x.up.Release()
		lp.p.log.Warn("event loop: relaying an answer failed", "err", errors.Join(cerr, gerr))
		putExchange(x)
		return
	}
	s := lp.s
	s.relays.Add(1)
	go func() {
		defer s.relays.Done()
		defer ux.loopConns.Add(-1)
		defer x.up.Release()
		ok := s.relayAnswer(x, cc, gc, held, rest, closeAfter)
		gc.Close()
		if ok && !closeAfter {
			s.deliver(&prefixConn{Conn: cc, pre: pre})
		} else {
			cc.Close()
		}
		putExchange(x)
	}()
}

// relayAnswer writes the answer's head and body to the client. An answer
// with a length too long for a loop is streamed as it comes; one without
// (chunked, or ended by the gateway closing) is held up to
// max_buffered_response_bytes and sent with its length, and streamed on
// chunked past that (rule 8). True: the client connection can take its
// next request.
func (s *LoopServer) relayAnswer(x *exchange, client, gw net.Conn, held, rest []byte, closeAfter bool) bool {
	p := s.p
	cl := x.resp.ContentLength()
	_ = gw.SetReadDeadline(x.start.Add(p.opt.UpstreamTimeout))
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(rest), gw), 32<<10)
	var body io.Reader
	switch cl {
	case -1:
		body = &chunkedBody{br: br}
	case -2:
		body = &untilCloseBody{br: br}
	default:
		body = &fixedBody{br: br, left: int64(cl)}
	}
	buf := make([]byte, 32<<10)
	var err error
	if cl < 0 {
		limit := p.opt.MaxBufferedResponse
		for {
			var n int
			n, err = body.Read(buf)
			held = append(held, buf[:n]...)
			if err == io.EOF {
				err = nil
				cl = len(held)
				body = eofReader{}
				break
			}
			if err != nil || (limit > 0 && len(held) > limit) {
				break
			}
		}
	}
	if err == nil {
		if s.opt.WriteTimeout > 0 {
			_ = client.SetWriteDeadline(time.Now().Add(s.opt.WriteTimeout))
		}
		err = s.writeAnswer(x, client, body, buf, held, cl, closeAfter)
	}
	x.err = err
	o := outcome{up: x.up, tries: x.tries, err: err}
	d := time.Since(x.start)
	p.recordDur(x.route, &o, x.code, d)
	if p.opt.AccessLog != nil {
		var remote netip.Addr
		if ta, ok := client.RemoteAddr().(*net.TCPAddr); ok {
			remote = ta.AddrPort().Addr().Unmap()
		}
		p.opt.AccessLog.Write(&Entry{
			Start: x.start, Duration: d, Remote: remote, Method: x.hdr.Method(), Host: x.hdr.Host(),
			URI: x.hdr.RequestURI(), Proto: x.hdr.Protocol(), Status: x.code, Bytes: x.bytes,
			Route: x.route, Upstream: x.up, Tries: x.tries, Err: err,
		})
	}
	if err != nil {
		p.log.Debug("event loop: relaying an answer", "route", x.route.Name, "instance", x.up.Addr, "err", err)
		return false
	}
	_ = client.SetWriteDeadline(time.Time{})
	return true
}

// writeAnswer writes the head, then held, then the rest of body: with
// length cl, or chunked when cl < 0.
func (s *LoopServer) writeAnswer(x *exchange, client net.Conn, body io.Reader, buf, held []byte, cl int, closeAfter bool) error {
	x.resp.SetContentLength(max(cl, -1))
	stripHopResponse(&x.resp)
	if closeAfter {
		x.resp.SetConnectionClose()
	}
	bw := bufio.NewWriterSize(client, 32<<10)
	if _, err := bw.Write(x.resp.AppendBytes(nil)); err != nil {
		return err
	}
	chunked := cl < 0
	write := func(b []byte) error {
		if len(b) == 0 {
			return nil
		}
		x.bytes += len(b)
		if chunked {
			_, _ = fmt.Fprintf(bw, "%x\r\n", len(b))
		}
		_, err := bw.Write(b)
		if chunked && err == nil {
			_, err = bw.WriteString("\r\n")
		}
		return err
	}
	if err := write(held); err != nil {
		return err
	}
	for {
		n, rerr := body.Read(buf)
		if err := write(buf[:n]); err != nil {
			return err
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if chunked {
		if _, err := bw.WriteString("0\r\n\r\n"); err != nil {
			return err
		}
	}
	return bw.Flush()
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
