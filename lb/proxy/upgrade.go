package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/gwnomad/gwnomad/lb/balancer"
)

// serveUpgrade serves a request that asks for an upgrade (Connection:
// upgrade and Upgrade: WebSocket, h2c, ...). The client's connection
// becomes a raw tunnel to a gateway only when the gateway really switched
// to what was asked; until then, and whenever it did not, everything on
// that connection is HTTP and meets every rule of the request path.
// Rules:
//   - An upgrade request with a body (a Content-Length above 0, or
//     chunked) is served as an ordinary request: its Upgrade and
//     Connection are dropped (a server may ignore Upgrade, RFC 9110 7.8),
//     so the gateway cannot switch and its answer is read as HTTP. Bytes
//     after a body are where the two protocols would meet, and where a
//     smuggled request would hide; a WebSocket handshake is a GET without
//     one.
//   - At most MaxTunnels upgrades at once, those waiting for their
//     gateway's answer included. Beyond, 503 with Retry-After (counted in
//     gwnomad_lb_tunnels_refused_total), before any gateway is dialed.
//   - The connection to a gateway is made before the request is sent, so
//     a gateway that cannot be reached is retried on another instance
//     (and the client gets a normal 502/503 if none can).
//   - The gateway's answer head is read here, within upstream_timeout,
//     past any interim (1xx) answers but 101. A 101 switches only if it
//     agrees to the upgrade asked for: its Connection lists "upgrade" and
//     each protocol of its Upgrade is one the client asked for (case
//     ignored), as net/http's ReverseProxy requires. Then that head goes
//     to the client (without hop-by-hop fields but Connection: Upgrade
//     and Upgrade), followed by the bytes the gateway sent after it, and
//     bytes are relayed both ways.
//   - A 101 that does not agree: 502, the gateway connection closed. It
//     does not count against the instance: the client chose the request.
//   - Any other answer is an ordinary answer: hop-by-hop fields dropped,
//     the body held up to max_buffered_response_bytes (4 MiB if that is
//     0) and streamed beyond (rule 8). The gateway connection is closed
//     after it; the client's connection stays HTTP, its next request
//     parsed and routed as any.
//   - Passive health as for any request: connection failures, timeouts
//     and 502/503/504 (any 5xx with fail_on_5xx) count against the
//     instance, other answers and switches reset it.
//   - The access log and the metrics get the status the client got: 101
//     only for a switch.
//   - A tunnel is closed on both sides once no byte went either way for
//     TunnelIdleTimeout, and at the end of a graceful shutdown (Drain).
func (p *Proxy) serveUpgrade(ctx *fasthttp.RequestCtx, r *balancer.Route, start time.Time) {
	req := &ctx.Request
	if cl := req.Header.ContentLength(); cl > 0 || cl == -1 || len(req.Body()) > 0 {
		// Without Upgrade, ServeFast takes the ordinary path (and does not
		// come back here).
		req.Header.Del("Upgrade")
		stripHopRequest(&req.Header, false)
		p.ServeFast(ctx)
		return
	}
	var o outcome
	if p.m.tunnels.Add(1) > int64(p.opt.MaxTunnels) {
		p.m.tunnels.Add(-1)
		p.m.TunnelsRefused.Inc()
		ctx.Response.Reset()
		ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
		ctx.Response.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.Response.Header.Set("Retry-After", p.opt.RetryAfter)
		ctx.Response.SetBodyString("gwnomad-lb: too many upgraded connections\n")
		p.upgradeDone(ctx, r, &o, start)
		return
	}
	switched := false
	defer func() {
		if !switched { // else the tunnel gives its place back when it ends
			p.m.tunnels.Add(-1)
		}
	}()

	req.UseHostHeader = true
	stripHopRequest(&req.Header, true)
	p.setForwarded(&req.Header, remoteAddr(ctx.RemoteAddr()), ctx.IsTLS())
	var tried balancer.Tried
	var up net.Conn
	for attempt := 0; attempt < p.opt.Tries; attempt++ {
		u := r.Pick(&tried, time.Now().UnixNano())
		if u == nil {
			o.none = attempt == 0
			break
		}
		tried.Add(u)
		o.up, o.tries = u, attempt+1
		ux := u.Ext.(*upstreamExt)
		c, err := ux.dial()
		o.err = err
		if err != nil {
			p.failure(r, u, ux)
			continue
		}
		up = c
		break
	}
	if up == nil {
		p.writeError(&ctx.Response, &o)
		p.upgradeDone(ctx, r, &o, start)
		return
	}
	o.err = nil
	ux := o.up.Ext.(*upstreamExt)
	_ = up.SetDeadline(time.Now().Add(p.opt.UpstreamTimeout))
	bw := bufio.NewWriter(up)
	o.err = req.Write(bw)
	if o.err == nil {
		o.err = bw.Flush()
	}
	var br *bufio.Reader
	if o.err == nil {
		br = bufio.NewReaderSize(up, 16<<10) // as the HostClients' ReadBufferSize
		if err := readAnswerHead(br, &ctx.Response); err != nil {
			o.err = scrubbedError{err}
		}
	}
	if o.err != nil {
		up.Close()
		p.failure(r, o.up, ux)
		p.writeError(&ctx.Response, &o)
		p.upgradeDone(ctx, r, &o, start)
		return
	}

	resp := &ctx.Response
	if resp.StatusCode() != fasthttp.StatusSwitchingProtocols {
		p.upgradeRefused(ctx, r, &o, up, br, start)
		return
	}
	proto, ok := agreedUpgrade(&req.Header, &resp.Header)
	if !ok {
		up.Close()
		o.err = errUnaskedSwitch
		resp.Reset()
		resp.Header.SetContentType("text/plain; charset=utf-8")
		resp.SetStatusCode(fasthttp.StatusBadGateway)
		resp.SetBodyString("gwnomad-lb: the gateway switched to a protocol not asked for\n")
		p.upgradeDone(ctx, r, &o, start)
		return
	}
	r.ReportSuccess(o.up, time.Now().UnixNano())
	// What goes to the client before the relay: the gateway's head, then
	// what the gateway sent after it (already in br).
	first := appendSwitchHead(nil, &resp.Header, proto, p.hsts(ctx))
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		first = append(first, b...)
	}
	_ = up.SetDeadline(time.Time{})
	resp.SkipBody = true
	p.upgradeDone(ctx, r, &o, start)

	switched = true
	t := p.newTunnel(o.up, up)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) { t.run(c, first) })
}

var errUnaskedSwitch = errors.New("the gateway switched to a protocol the client did not ask for")

// scrubbedError is an error of fasthttp's about a gateway's answer, whose
// message quotes that answer (which may carry a session cookie or a
// token): the access log gets it without them (scrubClientBytes).
type scrubbedError struct{ err error }

func (e scrubbedError) Error() string { return scrubClientBytes(e.err.Error()) }
func (e scrubbedError) Unwrap() error { return e.err }

// upgradeBuffered holds a refused upgrade's answer when
// MaxBufferedResponse is 0 (no limit): beyond, it is streamed.
const upgradeBuffered = 4 << 20

// upgradeRefused gives the client a gateway's answer other than 101 as
// an ordinary answer (the head is in ctx.Response, the rest on br), then
// closes the gateway connection.
func (p *Proxy) upgradeRefused(ctx *fasthttp.RequestCtx, r *balancer.Route, o *outcome, up net.Conn, br *bufio.Reader, start time.Time) {
	resp := &ctx.Response
	limit := p.opt.MaxBufferedResponse
	if limit <= 0 {
		limit = upgradeBuffered
	}
	code, size := resp.StatusCode(), resp.Header.ContentLength()
	var stream *gatewayStream
	var err error
	switch {
	case ctx.Request.Header.IsHead() || code < 200 || code == fasthttp.StatusNoContent || code == fasthttp.StatusNotModified:
		resp.SkipBody = true
	case size > limit:
		stream = &gatewayStream{body: &fixedBody{br: br, left: int64(size)}}
	case size == -1: // chunked
		cb := chunkedBody{br: br}
		var outgrown bool
		if outgrown, err = cb.readInto(resp, limit); err == nil && outgrown {
			stream = &gatewayStream{prefix: bytes.Clone(resp.Body()), body: &cb}
		}
	case size == -2: // until the gateway closes
		ub := untilCloseBody{br: br}
		var outgrown bool
		if outgrown, err = ub.readInto(resp, limit); err == nil {
			if outgrown {
				stream = &gatewayStream{prefix: bytes.Clone(resp.Body()), body: &ub}
			} else {
				resp.Header.SetContentLength(len(resp.Body()))
			}
		}
	default:
		err = resp.ReadBody(br, limit)
	}
	if err != nil {
		up.Close()
		o.err = err
		p.failure(r, o.up, o.up.Ext.(*upstreamExt))
		p.writeError(resp, o)
		p.upgradeDone(ctx, r, o, start)
		return
	}
	switch rx := r.Ext.(*routeExt); {
	case code == 502 || code == 503 || code == 504 || (code >= 500 && rx.failOn5x):
		p.failure(r, o.up, o.up.Ext.(*upstreamExt))
	default:
		r.ReportSuccess(o.up, time.Now().UnixNano())
	}
	stripHopResponse(&resp.Header)
	if stream != nil {
		stream.done = func(bool) { up.Close() }
		resp.SetBodyStream(stream, max(size, -1)) // -1: chunked to the client
	} else {
		up.Close()
	}
	p.upgradeDone(ctx, r, o, start)
}

// upgradeDone adds HSTS and records the request, as ServeFast does.
func (p *Proxy) upgradeDone(ctx *fasthttp.RequestCtx, r *balancer.Route, o *outcome, start time.Time) {
	if v := p.hsts(ctx); v != "" {
		ctx.Response.Header.Set("Strict-Transport-Security", v)
	}
	p.done(ctx, r, o, start)
}

func (p *Proxy) hsts(ctx *fasthttp.RequestCtx) string {
	if ctx.IsTLS() {
		return p.opt.HSTS
	}
	return ""
}

// readAnswerHead reads the gateway's answer head into resp, past interim
// (1xx) answers but 101.
func readAnswerHead(br *bufio.Reader, resp *fasthttp.Response) error {
	for n := 0; ; n++ {
		if n > maxInterim {
			return errTooManyInterim
		}
		if err := resp.Header.Read(br); err != nil {
			return err
		}
		if c := resp.StatusCode(); c < 100 || c >= 200 || c == fasthttp.StatusSwitchingProtocols {
			return nil
		}
	}
}

// agreedUpgrade tells whether a 101 agrees to the upgrade asked for: its
// Connection lists "upgrade", and its Upgrade names protocols, each of
// which the request's Upgrade names too (case ignored). It returns the
// 101's Upgrade protocols.
func agreedUpgrade(req *fasthttp.RequestHeader, resp *fasthttp.ResponseHeader) ([]byte, bool) {
	upgrade := false
	for _, v := range resp.PeekAll("Connection") {
		eachToken(v, func(tok []byte) {
			upgrade = upgrade || bytes.EqualFold(tok, []byte("upgrade"))
		})
	}
	if !upgrade {
		return nil, false
	}
	var protos []byte
	all := true
	for _, v := range resp.PeekAll("Upgrade") {
		eachToken(v, func(tok []byte) {
			asked := false
			for _, rv := range req.PeekAll("Upgrade") {
				eachToken(rv, func(rt []byte) { asked = asked || bytes.EqualFold(rt, tok) })
			}
			all = all && asked
			if len(protos) > 0 {
				protos = append(protos, ", "...)
			}
			protos = append(protos, tok...)
		})
	}
	return protos, all && len(protos) > 0
}

// eachToken calls f for each non-empty comma-separated token of v,
// trimmed.
func eachToken(v []byte, f func([]byte)) {
	for tok := range bytes.SplitSeq(v, []byte{','}) {
		if tok = bytes.TrimSpace(tok); len(tok) > 0 {
			f(tok)
		}
	}
}

// appendSwitchHead appends the 101 head for the client: the gateway's
// fields but the hop-by-hop ones (and a length: a 101 has no body), then
// Connection: Upgrade, the Upgrade agreed, and HSTS if set (in place of
// the gateway's, as on other answers).
func appendSwitchHead(b []byte, h *fasthttp.ResponseHeader, proto []byte, hsts string) []byte {
	b = append(b, "HTTP/1.1 101 Switching Protocols\r\n"...)
	var listed [][]byte // named in Connection: hop-by-hop too
	for _, v := range h.PeekAll("Connection") {
		eachToken(v, func(tok []byte) { listed = append(listed, tok) })
	}
	for k, v := range h.All() {
		if switchHop(k, listed) || (hsts != "" && bytes.EqualFold(k, []byte("Strict-Transport-Security"))) {
			continue
		}
		b = append(append(append(append(b, k...), ": "...), v...), "\r\n"...)
	}
	b = append(append(append(b, "Connection: Upgrade\r\nUpgrade: "...), proto...), "\r\n"...)
	if hsts != "" {
		b = append(append(append(b, "Strict-Transport-Security: "...), hsts...), "\r\n"...)
	}
	return append(b, "\r\n"...)
}

func switchHop(k []byte, listed [][]byte) bool {
	for _, n := range []string{"Connection", "Upgrade", "Content-Length", "Transfer-Encoding"} {
		if bytes.EqualFold(k, []byte(n)) {
			return true
		}
	}
	for _, n := range hopHeaders {
		if bytes.EqualFold(k, []byte(n)) {
			return true
		}
	}
	for _, n := range listed {
		if bytes.EqualFold(k, n) {
			return true
		}
	}
	return false
}

// tunnelBufSize is the size of each direction's relay buffer.
const tunnelBufSize = 16 << 10

var tunnelBufs = sync.Pool{New: func() any { b := make([]byte, tunnelBufSize); return &b }}

// tunnel is an upgraded connection: from the gateway's 101 to the close
// of both sides. It holds a place of MaxTunnels and its instance's
// connection count (Acquire) until then.
type tunnel struct {
	p    *Proxy
	u    *balancer.Upstream
	gw   net.Conn
	idle time.Duration
	t0   time.Time    // monotonic base of last
	last atomic.Int64 // since t0, when a byte last went either way
	dog  *time.Timer

	mu     sync.Mutex
	client net.Conn // the client's connection itself, once the relay runs
	ended  bool
}

// newTunnel starts the idle timer at once: if the relay does not start
// (fasthttp may fail to flush before it hijacks), the timer ends the
// tunnel and gives its place back.
func (p *Proxy) newTunnel(u *balancer.Upstream, gw net.Conn) *tunnel {
	u.Acquire()
	t := &tunnel{p: p, u: u, gw: gw, idle: p.opt.TunnelIdleTimeout, t0: time.Now()}
	t.mu.Lock() // watch reads dog under mu
	t.dog = time.AfterFunc(t.idle, t.watch)
	t.mu.Unlock()
	return t
}

func (t *tunnel) touch() { t.last.Store(int64(time.Since(t.t0))) }

// watch (the timer's function) ends the tunnel once it has been idle for
// t.idle, and else looks again when it would be.
func (t *tunnel) watch() {
	idle := time.Since(t.t0) - time.Duration(t.last.Load())
	if idle >= t.idle {
		t.end()
		return
	}
	t.mu.Lock()
	if !t.ended {
		t.dog.Reset(t.idle - idle)
	}
	t.mu.Unlock()
}

// end closes both sides (the relay's copies then return) and gives the
// tunnel's place back, once.
func (t *tunnel) end() {
	t.mu.Lock()
	if t.ended {
		t.mu.Unlock()
		return
	}
	t.ended = true
	t.dog.Stop()
	client := t.client
	t.mu.Unlock()
	// Closed outside mu: a TLS close may wait (up to 5 s) to send its alert.
	t.gw.Close()
	p := t.p
	if client != nil {
		client.Close()
		p.hijackMu.Lock()
		delete(p.hijacked, client)
		delete(p.hijacked, t.gw)
		p.hijackMu.Unlock()
	}
	t.u.Release()
	p.m.tunnels.Add(-1)
}

// run relays between the hijacked client connection hc (whose reads
// start with what fasthttp had read past the request) and the gateway,
// after writing first (the 101 head and what followed it) to the client.
func (t *tunnel) run(hc net.Conn, first []byte) {
	defer t.end()
	// fasthttp's hijacked connection does not close the socket (Close is a
	// no-op until the handler returns): the tunnel closes the one under it.
	client := hc
	if uc, ok := hc.(interface{ UnsafeConn() net.Conn }); ok {
		client = uc.UnsafeConn()
	}
	t.mu.Lock()
	if t.ended {
		t.mu.Unlock()
		return
	}
	t.client = client
	p := t.p
	p.hijackMu.Lock()
	p.hijacked[client], p.hijacked[t.gw] = struct{}{}, struct{}{}
	p.hijackMu.Unlock()
	t.mu.Unlock()

	t.touch()
	_ = client.SetDeadline(time.Time{})
	if _, err := client.Write(first); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		t.pipe(t.gw, hc)
		close(done)
	}()
	t.pipe(client, t.gw)
	<-done
}

// pipe copies src to dst until src ends, then half-closes dst if it can
// (the other direction may still go on); on an error, or without
// half-close, it ends the tunnel.
func (t *tunnel) pipe(dst net.Conn, src io.Reader) {
	bp := tunnelBufs.Get().(*[]byte)
	defer tunnelBufs.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			t.touch()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				t.end()
				return
			}
			t.touch()
		}
		if err == io.EOF {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				return
			}
		}
		if err != nil {
			t.end()
			return
		}
	}
}
