package proxy

// The gateway side of a loop: the tries (rule 4), the connections and
// their pool (L1, L6), reading answers, chunked ones decoded in place (L2).

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/gwnomad/gwnomad/lb/balancer"
)

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
	lp.unhold(c) // an earlier try's answer, if any, is gone
	g.c, x.gw = c, g
	g.off, x.total, x.bodyStart, x.interim, x.headed = 0, 0, 0, 0, false
	x.chunked, x.chunk = false, chunkState{}
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

var errNotIP = errors.New("the gateway's name did not resolve when the instance appeared (the event loops do not resolve names)")

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
		if _, err := rawRead(g.fd, b[:]); err != unix.EAGAIN {
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
		n, err := rawWrite(g.fd, head[g.off:])
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
				size = min(size, x.bodyStart+x.chunk.dec+lp.s.maxAnswer+loopFirstBuffer)
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
		n, err := rawRead(g.fd, g.in[len(g.in):cap(g.in)])
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
		// Told now, not once the body is in (health): another instance,
		// if there is one to try; else this answer is the client's.
		h, nx := judge(result{idem: x.idem, code: x.code})
		if h == healthFailure {
			p.failure(r, x.up, g.ux)
		}
		if nx == nextOrAnswer && x.tries < p.opt.Tries && len(r.Upstreams) > x.tried.Len() {
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
		if !lp.hold(c, cl) {
			x.stream = true
			lp.relay(g)
			return headGone
		}
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
	done, err := decodeChunks(g.in[x.bodyStart:], &x.chunk, lp.s.maxAnswer)
	if err == nil && !lp.hold(g.c, x.chunk.dec) {
		x.stream = true
		err = errChunksTooLong
	}
	switch {
	case err == errChunksTooLong:
		lp.relay(g)
		return headGone
	case err != nil:
		lp.gatewayFailed(g, err)
		return headGone
	case !done:
		return headMore
	}
	x.total = x.bodyStart + x.chunk.scan
	return headDone
}

// chunkState is where decodeChunks is in a chunked body: the next size
// (or trailer) line is at scan, the data decoded so far is at [0, dec),
// trailer counts the trailer's lines (+1; 0: not in the trailer yet).
type chunkState struct{ scan, dec, trailer int }

var errChunksTooLong = errors.New("chunked answer: longer than a loop holds")

// decodeChunks decodes the complete chunks of b, a chunked body from its
// first byte, moving their data to the front of b; called again as more
// of the body is appended, it goes on from st. True once the trailer's
// empty line is in (the body's framing ends at st.scan). The rules are
// body.go's chunkedBody's (FuzzLoopChunked holds them to it):
// extensions ignored, the trailer read and dropped; errChunksTooLong
// when the data would pass max.
func decodeChunks(b []byte, st *chunkState, max int) (bool, error) {
	for {
		rest := b[st.scan:]
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			if len(rest) >= loopGatewayHead {
				return false, errChunkSize
			}
			return false, nil
		}
		line := rest[:i+1]
		if st.trailer > 0 { // trailer fields, read and dropped
			st.scan += len(line)
			if string(line) == "\r\n" || string(line) == "\n" {
				return true, nil
			}
			if st.trailer++; st.trailer > 100 {
				return false, errTrailerLines
			}
			continue
		}
		size, ok := parseChunkSize(line)
		switch {
		case !ok:
			return false, errChunkSize
		case size == 0:
			st.trailer = 1
			st.scan += len(line)
			continue
		case int64(st.dec)+size > int64(max):
			return false, errChunksTooLong
		}
		end := len(line) + int(size)
		if len(rest) < end+2 {
			return false, nil
		}
		if rest[end] != '\r' || rest[end+1] != '\n' {
			return false, errChunkEnd
		}
		st.dec += copy(b[st.dec:], rest[len(line):end])
		st.scan += end + 2
	}
}

// hold grows c's reservation of the answer budget to n bytes (L11); false,
// counted, when the budget cannot take them.
//
// The loop takes the budget in leases (loopLease, or a 256th of the
// budget if less) and serves its answers from them without an atomic
// operation; what it does not use goes back at the next sweep.
func (lp *loop) hold(c *client, n int) bool {
	d := int64(n) - c.held
	if d <= 0 {
		return true
	}
	if lp.lease < d {
		b := lp.p.opt.answers
		step := int64(loopLease)
		if b.limit > 0 {
			step = min(step, b.limit/256)
		}
		want := max(d-lp.lease, step)
		if !tryAdd(&b.used, want, b.limit) {
			want = d - lp.lease
			if !tryAdd(&b.used, want, b.limit) {
				b.refused.Add(1)
				return false
			}
		}
		lp.lease += want
	}
	lp.lease -= d
	c.held += d
	return true
}

// unhold gives c's part of the budget back to the loop's lease.
func (lp *loop) unhold(c *client) {
	lp.lease += c.held
	c.held = 0
}

// giveBack returns the loop's unused lease to the budget (every sweep,
// and when the loop stops).
func (lp *loop) giveBack() {
	if lp.lease > 0 {
		lp.p.opt.answers.used.Add(-lp.lease)
		lp.lease = 0
	}
}

// health tells the route how the instance answered (rule 5); 502–504 were
// told when their head came.
func (lp *loop) health(x *exchange, ux *upstreamExt) {
	if x.code == 502 || x.code == 503 || x.code == 504 {
		return
	}
	if h, _ := judge(result{code: x.code, failOn5xx: x.route.Ext.(*routeExt).failOn5x}); h == healthFailure {
		lp.p.failure(x.route, x.up, ux)
	} else {
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
	if c.closeAfter || lp.s.stopping.Load() {
		c.closeAfter = true // Shutdown may be in this loop's next events (L7)
		x.resp.SetConnectionClose()
	}
	if c.tls != nil && lp.p.opt.HSTS != "" {
		x.resp.Set("Strict-Transport-Security", lp.p.opt.HSTS)
	}
	body := g.in[x.bodyStart:x.total]
	if x.chunked {
		body = g.in[x.bodyStart : x.bodyStart+x.chunk.dec]
		x.resp.SetContentLength(x.chunk.dec)
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
	if h, nx := judge(result{idem: x.idem, err: err}); h == healthFailure {
		lp.p.failure(x.route, x.up, x.up.Ext.(*upstreamExt))
		if nx == nextOrError {
			lp.try(c, x)
			return
		}
	}
	lp.replyError(c, x)
}
