package proxy

// The client side of a loop: reading requests, writing answers (rules L2,
// L5 of loop_linux.go).

import (
	"bufio"
	"bytes"
	"io"
	"net/netip"
	"sync"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/gwnomad/gwnomad/lb/balancer"
)

// client is a client connection.
type client struct {
	fd         int
	seq        int32
	state      uint8
	readable   bool // an edge came that was not read to its end
	hup        bool // the client closed its side (or the socket failed): reads never wait again
	closeAfter bool
	remote     netip.Addr
	buf        []byte   // read and not served yet: a partial head, or pipelined requests
	out        []byte   // the part of an answer the socket did not take at once
	tls        *tlsLink // over TLS (L8); nil: plain
	deadline   int64    // unix nanoseconds; 0: none
	x          *exchange
	held       int64 // bytes of the answer budget for the answer being read or written (L11)
}

const (
	cIdle    = iota // between requests, or reading one
	cBusy           // its request is at a gateway
	cWriting        // its answer is being written
	cGone           // closed, or handed to goroutines: the loop no longer owns it
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
	refused   *headFault
	unread    bool // its head did not parse: no method, host or URI to log
	stream    bool // the answer budget refused the answer: relayed as it comes (L11)
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
	headed    bool       // the final answer's head is in
	chunked   bool       // decoded in place as its chunks come
	chunk     chunkState // in the gateway's buffer from bodyStart
}

var exchanges = sync.Pool{New: func() any { return new(exchange) }}

func getExchange() *exchange { return exchanges.Get().(*exchange) }

func putExchange(x *exchange) {
	x.hdr.Reset()
	x.resp.Reset()
	x.head = x.head[:0]
	x.route, x.tried, x.tries, x.up, x.err = nil, balancer.Tried{}, 0, nil, nil
	x.none, x.noRoute, x.idem, x.isHead, x.staleTry, x.refused, x.unread, x.stream = false, false, false, false, false, nil, false, false
	x.start, x.code, x.bytes, x.gw = time.Time{}, 0, 0, nil
	x.bodyStart, x.total, x.interim, x.headed = 0, 0, 0, false
	x.chunked, x.chunk = false, chunkState{}
	exchanges.Put(x)
}

func (lp *loop) clientEvent(c *client, ev uint32) {
	if c.state == cGone {
		return
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.readable = true
		// The end comes as one edge, often with the last bytes: a short
		// read must not hide it until idle_timeout.
		c.hup = c.hup || ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
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
		if !c.readable && c.tls == nil { // over TLS, readTLS knows
			return
		}
		k := copy(lp.rbuf, c.buf)
		n, err := lp.readClient(c, lp.rbuf[k:])
		switch {
		case err == unix.EAGAIN:
			return
		case err != nil:
			lp.closeClient(c)
			return
		}
		if k == 0 && len(c.buf) == 0 {
			c.deadline = lp.after(lp.s.opt.ReadTimeout) // a request begins
		}
		lp.request(c, lp.rbuf[:k+n])
	}
}

// readClient reads c's next bytes into p: n > 0, or an error; EAGAIN
// when there are none now (c.readable is false then: the next byte brings
// an edge).
func (lp *loop) readClient(c *client, p []byte) (int, error) {
	if c.tls != nil {
		return lp.readTLS(c, p)
	}
	for {
		n, err := rawRead(c.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			c.readable = false
			return 0, err
		case err != nil:
			return 0, err
		case n == 0:
			return 0, io.EOF
		}
		if n < len(p) && !c.hup {
			c.readable = false // a short read emptied the socket
		}
		return n, nil
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
	if f := testFault.Load(); f != nil {
		(*f)("request", lp.s, data[:h])
	}
	if f := checkHead(data[:h]); f != nil {
		lp.refuse(c, data[:h], f)
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
	lp.p.setForwarded(&x.hdr, c.remote, c.tls != nil)
	x.head = x.hdr.AppendBytes(x.head[:0])
	x.idem = idempotent(x.hdr.Method())
	x.isHead = x.hdr.IsHead()
	lp.p.budget.request(lp.now.Unix())
	lp.try(c, x)
}

// refuse answers a request whose head checkHead refused, and closes c
// after: what follows the head cannot be told apart from a next request.
func (lp *loop) refuse(c *client, head []byte, f *headFault) {
	x := getExchange()
	if lp.parse(func(br *bufio.Reader) error { return x.hdr.Read(br) }, head) != nil {
		x.hdr.Reset() // the access log says nothing of a head it could not read, not fasthttp's "GET /"
		x.unread = true
	}
	c.buf = c.buf[:0]
	c.x, c.state, c.deadline, c.closeAfter = x, cBusy, 0, true
	x.start, x.refused = lp.now, f
	lp.answer.Reset()
	lp.answer.Header.SetContentType("text/plain; charset=utf-8")
	lp.answer.SetStatusCode(f.code)
	lp.answer.SetBodyString("gwnomad-lb: " + f.why + "\n")
	lp.replyOwn(c)
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

// replyError answers for the gateways (rule 7).
func (lp *loop) replyError(c *client, x *exchange) {
	o := outcome{up: x.up, err: x.err, none: x.none}
	lp.p.writeError(&lp.answer, &o)
	if c.tls != nil && lp.p.opt.HSTS != "" {
		lp.answer.Header.Set("Strict-Transport-Security", lp.p.opt.HSTS)
	}
	lp.replyOwn(c)
}

// replyOwn writes lp.answer, the balancer's own answer.
func (lp *loop) replyOwn(c *client) {
	x := c.x
	if c.closeAfter || lp.s.stopping.Load() {
		c.closeAfter = true // Shutdown may be in this loop's next events (L7)
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
	if c.tls != nil {
		if head, body = lp.seal(c, head, body), nil; head == nil {
			lp.closeClient(c)
			return
		}
	}
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
	if c.tls != nil {
		if _, err := c.tls.tc.Write(b); err != nil { // appended to c.out
			lp.closeClient(c)
			return
		}
	} else {
		c.out = append(c.out[:0], b...)
	}
	lp.flush(c)
}

// writev writes head and body in one system call (x/sys's Writev
// allocates its iovecs; these are the loop's).
func (lp *loop) writev(fd int, head, body []byte) (int, error) {
	for {
		if len(body) == 0 {
			n, err := rawWrite(fd, head)
			if err == unix.EINTR {
				continue
			}
			return n, err
		}
		lp.iov[0].Base, lp.iov[1].Base = &head[0], &body[0]
		lp.iov[0].SetLen(len(head))
		lp.iov[1].SetLen(len(body))
		n, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&lp.iov[0])), 2)
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
		n, err := rawWrite(c.fd, c.out)
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
	lp.unhold(c)
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
	lp.unhold(c)
	if c.tls != nil {
		lp.goodbye(c)
	}
	lp.forget(c.fd)
	unix.Close(c.fd)
	c.fd, c.state = -1, cGone
	lp.clients--
	lp.load.Add(-1)
}

// record counts the request and writes its access-log line.
func (lp *loop) record(c *client, x *exchange) { lp.p.recordExchange(c.remote, x) }

// recordExchange counts x and writes its access-log line; the loops and
// the relays (loop_handoff_linux.go) both record through it.
func (p *Proxy) recordExchange(remote netip.Addr, x *exchange) {
	var r *balancer.Route
	if !x.noRoute {
		r = x.route
	}
	o := outcome{up: x.up, tries: x.tries, err: x.err, none: x.none, noRoute: x.noRoute, refused: x.refused}
	d := time.Since(x.start)
	p.recordDur(r, &o, x.code, d)
	if p.opt.AccessLog != nil {
		e := &Entry{
			Start: x.start, Duration: d, Remote: remote, Status: x.code, Bytes: x.bytes,
			Route: r, Upstream: x.up, Tries: x.tries, Err: x.err,
		}
		if !x.unread {
			e.Method, e.Host, e.URI, e.Proto = x.hdr.Method(), x.hdr.Host(), x.hdr.RequestURI(), x.hdr.Protocol()
		}
		p.opt.AccessLog.Write(e)
	}
}
