// Package proxy is the load balancer's request path: from a client's
// request to a gateway's answer.
//
// By default an event loop per processor serves the HTTP/1.1 requests
// without a body and the answers it can hold, on the plain listener and on
// TLS connections once their handshake is done (loop_linux.go and its
// siblings: client, gateway, hand-off and TLS sides); it hands every other
// connection to the path below, which serves TLS handshakes, HTTP/2 and
// everything else.
//
// HTTP/1.1 runs on fasthttp (server and keep-alive pools to the gateways),
// which keeps a request's CPU cost and allocations near zero; connections
// that negotiate h2 over TLS are served by net/http's HTTP/2 server and join
// the same path (ServeHTTP); WebSocket and other upgrades are relayed as raw
// TCP after the handshake is forwarded. Every TCP connection of the
// HTTP/1.1 path, both sides, is a Conn (conn.go), which makes the same
// reads and writes with fewer system calls: most of a proxy's CPU.
//
// The rules, in the order a request meets them:
//
//  1. The route is found from the Host header (balancer.Table.Match); no
//     route: 404. A route without any instance: 503 with Retry-After.
//  2. Hop-by-hop headers (Connection and what it lists, Keep-Alive,
//     Proxy-*, TE, Trailer, Upgrade, Expect) are dropped.
//  3. X-Forwarded-For gets the client address appended; -Proto and -Host are
//     set. Values the client sent are kept only when the client is a
//     trusted proxy; from anyone else they are replaced.
//  4. The route's selector picks an instance not tried yet. A request whose
//     connection to the gateway failed before anything was sent is retried
//     on another instance, whatever its method. Idempotent requests (GET,
//     HEAD, OPTIONS, TRACE, PUT, DELETE) are also retried on 502, 503, 504
//     and on a connection that broke before the answer. Tries bound the
//     attempts of one request, and a retry budget bounds the retries of all
//     requests together so that retries cannot multiply an overload.
//     Request bodies are buffered whole (up to max_body_bytes), so any
//     request can be resent.
//  5. Connection failures and 5xx answers count against the instance's
//     passive health (balancer.Route.ReportFailure); other answers reset it.
//  6. Hop-by-hop headers are dropped from the answer too; the client
//     connection's keep-alive is the balancer's business, not the gateway's.
//  7. If every try failed: 504 after a timeout, 502 otherwise.
//  8. An answer larger than max_buffered_response_bytes is not held in
//     memory: it is streamed to the client as it comes from the gateway,
//     from the first fetch, whatever the method (transport.go). So is an
//     answer that the answer budget cannot take: the answers held at once
//     stay within max_buffered_total_bytes, and those of one h2
//     connection within max_buffered_per_connection_bytes, whatever the
//     number of clients that do not read.
package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/gwnomad/gwnomad/lb/balancer"
	"github.com/gwnomad/gwnomad/lb/config"
)

// Options configure a Proxy.
type Options struct {
	Tries               int // attempts per request, the first included (default 3)
	RetryBudgetPercent  int // retries allowed as a share of requests per second (0: no budget)
	RetryBudgetMin      int // retries allowed per second whatever the traffic
	DialTimeout         time.Duration
	UpstreamTimeout     time.Duration // to write the request and read the whole answer
	MaxConnsPerUpstream int
	// MaxBufferedResponse: larger answers are streamed (rule 8); 0: no
	// limit, every answer is buffered.
	MaxBufferedResponse int
	FailOn5xx           bool // every 5xx is a passive-health failure (502/503/504 always are)
	Trusted             []netip.Prefix
	// RetryAfter is the Retry-After value of a 503 without instances.
	RetryAfter string // default "1"
	// HSTS is the Strict-Transport-Security value set on answers over TLS;
	// "" sets none (default).
	HSTS string
	// MaxBufferedTotal bounds the gateways' answers held in memory at once,
	// all requests together (the answer budget, transport.go); an answer it
	// cannot take is streamed (rule 8). Default 256 MiB; negative: no limit.
	MaxBufferedTotal int
	// MaxBufferedPerConn bounds, within MaxBufferedTotal, the answers the
	// streams of one HTTP/2 connection hold at once (an HTTP/1.1 connection
	// holds one at a time). Default 16 MiB; negative: no limit.
	MaxBufferedPerConn int
	answers            *answerBudget // of MaxBufferedTotal, made by New
	// TunnelIdleTimeout closes both sides of an upgraded connection
	// (WebSocket) once no byte went either way for this long (default 5m).
	TunnelIdleTimeout time.Duration
	// MaxTunnels bounds the upgraded connections relayed at once, with the
	// upgrade requests waiting for their gateway's answer; beyond, an
	// upgrade request gets 503 (default 4096).
	MaxTunnels int
	// AccessLog receives one JSON line per request; nil: off.
	AccessLog *AccessLog
	Logger    *slog.Logger
	// Metrics; nil: a new, unregistered set.
	Metrics *Metrics
}

// OptionsFrom maps the [proxy] and [health] configuration to Options.
func OptionsFrom(c *config.Config) (Options, error) {
	trusted, err := c.Proxy.TrustedPrefixes()
	if err != nil {
		return Options{}, err
	}
	return Options{
		Tries: c.Proxy.Tries, RetryBudgetPercent: c.Proxy.RetryBudgetPercent, RetryBudgetMin: c.Proxy.RetryBudgetMin,
		DialTimeout: c.Proxy.DialTimeout.D(), UpstreamTimeout: c.Proxy.UpstreamTimeout.D(),
		MaxConnsPerUpstream: c.Proxy.MaxConnsPerUpstream, MaxBufferedResponse: c.Proxy.MaxBufferedResponseBytes,
		MaxBufferedTotal: budgetLimit(c.Proxy.MaxBufferedTotalBytes), MaxBufferedPerConn: budgetLimit(c.Proxy.MaxBufferedPerConnBytes),
		FailOn5xx: c.Health.FailOn5xx, Trusted: trusted,
		TunnelIdleTimeout: c.Proxy.TunnelIdleTimeout.D(), MaxTunnels: c.Proxy.MaxTunnels,
	}, nil
}

// Proxy is the request path. Its handlers are ServeFast (fasthttp) and
// ServeHTTP (net/http, for HTTP/2).
type Proxy struct {
	table  *balancer.Holder
	opt    Options
	m      *Metrics
	log    *slog.Logger
	budget retryBudget
	// maxBody limits HTTP/2 request bodies (NewFastServer sets it from
	// the fasthttp server's limit).
	maxBody int

	hijackMu sync.Mutex
	hijacked map[net.Conn]struct{}
}

// New returns a proxy that routes with the tables published in table. Wire
// its OnRoute, OnNew and OnGone into the balancer.Builder that fills table.
func New(table *balancer.Holder, opt Options) *Proxy {
	if opt.Tries < 1 {
		opt.Tries = 3
	}
	opt.Tries = min(opt.Tries, balancer.MaxTries)
	if opt.DialTimeout <= 0 {
		opt.DialTimeout = 2 * time.Second
	}
	if opt.UpstreamTimeout <= 0 {
		opt.UpstreamTimeout = 60 * time.Second
	}
	if opt.MaxConnsPerUpstream <= 0 {
		opt.MaxConnsPerUpstream = 1024
	}
	if opt.RetryAfter == "" {
		opt.RetryAfter = "1"
	}
	if opt.MaxBufferedTotal == 0 {
		opt.MaxBufferedTotal = 256 << 20
	}
	if opt.MaxBufferedPerConn == 0 {
		opt.MaxBufferedPerConn = 16 << 20
	}
	opt.answers = processBudget(opt.MaxBufferedTotal)
	if opt.TunnelIdleTimeout <= 0 {
		opt.TunnelIdleTimeout = 5 * time.Minute
	}
	if opt.MaxTunnels <= 0 {
		opt.MaxTunnels = 4096
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Metrics == nil {
		opt.Metrics = NewMetrics(nil)
	}
	p := &Proxy{table: table, opt: opt, m: opt.Metrics, log: opt.Logger, hijacked: map[net.Conn]struct{}{}}
	p.budget.percent, p.budget.min = int64(opt.RetryBudgetPercent), int64(opt.RetryBudgetMin)
	return p
}

// Metrics returns the proxy's metrics.
func (p *Proxy) Metrics() *Metrics { return p.m }

// routeExt is the request path's per-route data (balancer.Route.Ext).
type routeExt struct {
	name     string
	dur      prometheus.Observer
	retries  prometheus.Counter
	none     [numCodes]prometheus.Counter // answers given without an instance
	tls      *tls.Config                  // to the gateways (scheme https), nil for http
	failOn5x bool
}

// upstreamExt is the request path's per-upstream data (balancer.Upstream.Ext).
type upstreamExt struct {
	route     string // its route's name (metric label)
	hc        *fasthttp.HostClient
	codes     [numCodes]prometheus.Counter
	ejections prometheus.Counter
	dial      func() (net.Conn, error) // for upgrades
	// The event-loop engine's view (loop_linux.go): the gateway's address
	// if it is an IP (invalid: a name, which the loops do not resolve),
	// and the connections the loops hold to it.
	addr      netip.AddrPort
	loopConns atomic.Int32
}

// OnRoute makes a route's Ext (balancer.Builder.OnRoute).
func (p *Proxy) OnRoute(i int, rc *config.Route) any {
	name := rc.Hosts[0]
	x := &routeExt{
		name:     name,
		dur:      p.m.Duration.WithLabelValues(name),
		retries:  p.m.Retries.WithLabelValues(name),
		failOn5x: p.opt.FailOn5xx,
	}
	for c := range x.none {
		x.none[c] = p.m.Requests.WithLabelValues(name, "", codeLabels[c])
	}
	if rc.Scheme == "https" {
		tc, err := upstreamTLS(rc)
		if err != nil {
			// Validated configurations do not get here; fail closed.
			p.log.Error("route TLS to the gateways", "route", name, "err", err)
			tc = &tls.Config{ServerName: "invalid.invalid"}
		}
		x.tls = tc
	}
	return x
}

func upstreamTLS(rc *config.Route) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: rc.SkipVerify, ServerName: rc.ServerName} //nolint:gosec // per-route choice
	if rc.CAFile != "" {
		pool, err := loadCertPool(rc.CAFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// OnNew prepares a new upstream (balancer.Builder.OnNew).
func (p *Proxy) OnNew(rc *config.Route, u *balancer.Upstream) {
	name := rc.Hosts[0]
	var tc *tls.Config
	if rc.Scheme == "https" {
		var err error
		if tc, err = upstreamTLS(rc); err != nil {
			tc = &tls.Config{ServerName: "invalid.invalid"}
		}
		if tc.ServerName == "" {
			host, _, _ := net.SplitHostPort(u.Addr)
			tc.ServerName = host
		}
	}
	addr, dialTimeout := u.Addr, p.opt.DialTimeout
	dial := func() (net.Conn, error) {
		c, err := net.DialTimeout("tcp", addr, dialTimeout)
		if err != nil {
			return nil, &dialError{err}
		}
		c = wrap(c)
		if tc != nil {
			tlsc := tls.Client(c, tc)
			_ = tlsc.SetDeadline(time.Now().Add(dialTimeout))
			if err := tlsc.Handshake(); err != nil {
				c.Close()
				return nil, &dialError{fmt.Errorf("tls handshake: %w", err)}
			}
			_ = tlsc.SetDeadline(time.Time{})
			return tlsc, nil
		}
		return c, nil
	}
	x := &upstreamExt{
		route:     name,
		ejections: p.m.Ejections.WithLabelValues(name, u.Addr),
		dial:      dial,
		hc: &fasthttp.HostClient{
			Addr:                          u.Addr,
			Name:                          "",
			NoDefaultUserAgentHeader:      true,
			Dial:                          func(string) (net.Conn, error) { return dial() },
			MaxConns:                      p.opt.MaxConnsPerUpstream,
			MaxConnWaitTimeout:            dialTimeout,
			MaxIdleConnDuration:           15 * time.Second,
			MaxIdemponentCallAttempts:     2,
			RetryIfErr:                    retrySameConnErr,
			ReadTimeout:                   p.opt.UpstreamTimeout,
			WriteTimeout:                  p.opt.UpstreamTimeout,
			DisablePathNormalizing:        true,
			DisableHeaderNamesNormalizing: false,
			ReadBufferSize:                16 << 10,
			Transport:                     gatewayTransport{max: p.opt.MaxBufferedResponse, budget: p.opt.answers},

			// The connection used last goes out first: it is warm on both
			// ends, the ones beyond what the load needs idle out, and
			// taking one costs no shift of the idle list (FIFO's does).
			ConnPoolStrategy: fasthttp.LIFO,
		},
	}
	x.addr = gatewayAddr(u.Addr, dialTimeout)
	for c := range x.codes {
		x.codes[c] = p.m.Requests.WithLabelValues(name, u.Addr, codeLabels[c])
	}
	u.Ext = x
}

// gatewayAddr is addr as an IP and port for the event-loop engine, which
// does not resolve names: a name is resolved now, to its first IPv4
// address (else its first address); invalid if that fails.
func gatewayAddr(addr string, timeout time.Duration) netip.AddrPort {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.AddrPort{}
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return netip.AddrPort{}
	}
	ip := ips[0]
	for _, a := range ips {
		if a.Unmap().Is4() {
			ip = a
			break
		}
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(pn))
}

// OnGone forgets an upstream's metrics and closes its idle connections
// (balancer.Builder.OnGone).
func (p *Proxy) OnGone(u *balancer.Upstream) {
	x, ok := u.Ext.(*upstreamExt)
	if !ok {
		return
	}
	for _, l := range codeLabels {
		p.m.Requests.DeleteLabelValues(x.route, u.Addr, l)
	}
	p.m.Ejections.DeleteLabelValues(x.route, u.Addr)
	x.hc.CloseIdleConnections()
}

// ForgetRoute deletes the metric series of a route that a reload removed.
func (p *Proxy) ForgetRoute(name string) {
	p.m.Requests.DeletePartialMatch(prometheus.Labels{"route": name})
	p.m.Ejections.DeletePartialMatch(prometheus.Labels{"route": name})
	p.m.Duration.DeleteLabelValues(name)
	p.m.Retries.DeleteLabelValues(name)
}

// retrySameConnErr: fasthttp's own retry on the same gateway, for a pooled
// keep-alive connection that the gateway had closed: idempotent requests
// only.
func retrySameConnErr(req *fasthttp.Request, _ int, _ error) (bool, bool) {
	return false, idempotent(req.Header.Method())
}

// dialError marks errors where nothing was sent to the gateway.
type dialError struct{ err error }

func (e *dialError) Error() string { return "connecting to gateway: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func nothingSent(err error) bool {
	var de *dialError
	return errors.As(err, &de) || errors.Is(err, fasthttp.ErrNoFreeConns)
}

func isTimeout(err error) bool {
	if errors.Is(err, fasthttp.ErrTimeout) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

var schemeHTTP = []byte("http")

func idempotent(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// outcome is what happened to one request, for metrics and the access log.
type outcome struct {
	up      *balancer.Upstream
	tries   int
	err     error
	noRoute bool
	none    bool       // no instance to try
	refused *headFault // the head was refused (strict.go)
}

// forward sends req to the route's instances by the retry rules and leaves
// the gateway's answer in resp. It does not write error answers.
func (p *Proxy) forward(r *balancer.Route, req *fasthttp.Request, resp *fasthttp.Response, now time.Time, o *outcome) {
	rx := r.Ext.(*routeExt)
	idem := idempotent(req.Header.Method())
	nowSec := now.Unix()
	p.budget.request(nowSec)
	// The HostClient speaks plain HTTP on a connection its Dial made (TLS
	// to the gateway, if any, is done there): the scheme must say http
	// whatever the client used.
	req.URI().SetSchemeBytes(schemeHTTP)
	var tried balancer.Tried
	for attempt := 0; attempt < p.opt.Tries; attempt++ {
		nowNano := now.UnixNano()
		if attempt > 0 {
			nowNano = time.Now().UnixNano()
		}
		u := r.Pick(&tried, nowNano)
		if u == nil {
			if attempt == 0 {
				o.none = true
			}
			return
		}
		if attempt > 0 {
			if !p.budget.retry(nowSec) {
				p.m.BudgetExhausted.Inc()
				return
			}
			rx.retries.Inc()
			resp.Reset()
		}
		tried.Add(u)
		o.up, o.tries = u, attempt+1
		ux := u.Ext.(*upstreamExt)
		u.Acquire()
		err := ux.hc.Do(req, resp)
		u.Release()
		o.err = err
		h, nx := judge(result{idem: idem, err: err, code: resp.StatusCode(), failOn5xx: rx.failOn5x})
		if h == healthFailure {
			p.failure(r, u, ux)
		} else {
			r.ReportSuccess(u, nowNano)
		}
		switch nx {
		case nextOrError:
			continue
		case nextOrAnswer:
			if attempt+1 < p.opt.Tries && len(r.Upstreams) > tried.Len() {
				continue
			}
		}
		return
	}
}

func (p *Proxy) failure(r *balancer.Route, u *balancer.Upstream, ux *upstreamExt) {
	if d := r.ReportFailure(u, time.Now().UnixNano()); d > 0 {
		ux.ejections.Inc()
		p.log.Warn("instance ejected", "route", r.Name, "instance", u.Addr, "service_id", u.ServiceID, "for", d)
	}
}

// ServeFast is the fasthttp handler.
func (p *Proxy) ServeFast(ctx *fasthttp.RequestCtx) {
	start := ctx.Time()
	if f := checkRequest(ctx.Method(), ctx.Request.Header.RequestURI(), ctx.Request.Header.Protocol(), ctx.Request.Header.RawHeaders()); f != nil {
		p.refuse(ctx, f, start)
		return
	}
	if t := ctx.Request.Header.TrailerHeader(); len(t) > 2 && !dropTrailers(&ctx.Request.Header, t) {
		p.refuse(ctx, faultTrailer, start)
		return
	}
	t := p.table.Load()
	var r *balancer.Route
	if t != nil {
		r = t.Match(ctx.Request.Header.Host())
	}
	var o outcome
	if r == nil {
		o.noRoute = true
		ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
		ctx.Response.SetStatusCode(fasthttp.StatusNotFound)
		ctx.Response.SetBodyString("gwnomad-lb: no route for this host\n")
		p.done(ctx, nil, &o, start)
		return
	}
	if ctx.Request.Header.ConnectionUpgrade() && len(ctx.Request.Header.Peek("Upgrade")) > 0 {
		p.serveUpgrade(ctx, r, start)
		return
	}
	req := &ctx.Request
	req.UseHostHeader = true
	stripHopRequest(&req.Header, false)
	p.setForwarded(&req.Header, remoteAddr(ctx.RemoteAddr()), ctx.IsTLS())
	p.forward(r, req, &ctx.Response, start, &o)
	if o.none || o.err != nil || o.up == nil {
		p.writeError(&ctx.Response, &o)
	} else {
		stripHopResponse(&ctx.Response.Header)
	}
	if p.opt.HSTS != "" && ctx.IsTLS() {
		ctx.Response.Header.Set("Strict-Transport-Security", p.opt.HSTS)
	}
	p.done(ctx, r, &o, start)
}

// refuse answers a request whose head checkRequest refused, and closes
// the connection: what follows the head cannot be told apart from a next
// request.
func (p *Proxy) refuse(ctx *fasthttp.RequestCtx, f *headFault, start time.Time) {
	ctx.Response.Reset()
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.Response.SetStatusCode(f.code)
	ctx.Response.SetBodyString("gwnomad-lb: " + f.why + "\n")
	ctx.SetConnectionClose()
	p.done(ctx, nil, &outcome{refused: f}, start)
}

// writeError answers for the gateways when none did.
func (p *Proxy) writeError(resp *fasthttp.Response, o *outcome) {
	resp.Reset()
	resp.Header.SetContentType("text/plain; charset=utf-8")
	switch {
	case o.none || o.up == nil:
		resp.SetStatusCode(fasthttp.StatusServiceUnavailable)
		resp.Header.Set("Retry-After", p.opt.RetryAfter)
		resp.SetBodyString("gwnomad-lb: no healthy gateway instance\n")
	case isTimeout(o.err):
		resp.SetStatusCode(fasthttp.StatusGatewayTimeout)
		resp.SetBodyString("gwnomad-lb: gateway timed out\n")
	default:
		resp.SetStatusCode(fasthttp.StatusBadGateway)
		resp.SetBodyString("gwnomad-lb: gateway unreachable\n")
	}
}

// done records metrics and the access log line.
func (p *Proxy) done(ctx *fasthttp.RequestCtx, r *balancer.Route, o *outcome, start time.Time) {
	code := ctx.Response.StatusCode()
	d := time.Since(start) // one clock read for the metrics and the log
	p.recordDur(r, o, code, d)
	if p.opt.AccessLog != nil {
		p.opt.AccessLog.Write(&Entry{
			Start: start, Duration: d, Remote: remoteAddr(ctx.RemoteAddr()), Method: ctx.Request.Header.Method(),
			Host: ctx.Request.Header.Host(), URI: ctx.Request.Header.RequestURI(), Proto: ctx.Request.Header.Protocol(),
			Status: code, Bytes: bodyBytes(&ctx.Response), Route: r, Upstream: o.up, Tries: o.tries, Err: o.err,
		})
	}
}

func (p *Proxy) record(r *balancer.Route, o *outcome, code int, start time.Time) {
	p.recordDur(r, o, code, time.Since(start))
}

func (p *Proxy) recordDur(r *balancer.Route, o *outcome, code int, d time.Duration) {
	if o.refused != nil {
		p.m.Refused.WithLabelValues(strconv.Itoa(code)).Inc()
		return
	}
	if r == nil {
		p.m.NoRoute.Inc()
		return
	}
	rx := r.Ext.(*routeExt)
	c := codeIndex(code)
	if o.err != nil {
		c = 0
	}
	if o.up != nil {
		o.up.Ext.(*upstreamExt).codes[c].Inc()
	} else {
		rx.none[c].Inc()
	}
	rx.dur.Observe(d.Seconds())
}

// bodyBytes is the answer's body size for the access log: for a streamed
// answer, its Content-Length (0 when chunked), since Body() would read the
// whole stream into memory.
func bodyBytes(resp *fasthttp.Response) int {
	if resp.IsBodyStream() {
		return max(resp.Header.ContentLength(), 0)
	}
	return len(resp.Body())
}

func remoteAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// Drain closes the hijacked (upgraded) connections: the end of a graceful
// shutdown.
func (p *Proxy) Drain() {
	p.hijackMu.Lock()
	defer p.hijackMu.Unlock()
	for c := range p.hijacked {
		c.Close()
	}
}

// Upgraded is the number of relayed (upgraded) connections open now.
func (p *Proxy) Upgraded() int {
	p.hijackMu.Lock()
	defer p.hijackMu.Unlock()
	return len(p.hijacked) / 2
}

var errNoBody = errors.New("request body too large")

// readLimited reads r up to limit bytes (errNoBody beyond).
func readLimited(dst *bytes.Buffer, r io.Reader, limit int) error {
	n, err := io.Copy(dst, io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return err
	}
	if limit > 0 && n > int64(limit) {
		return errNoBody
	}
	return nil
}
