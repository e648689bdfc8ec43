package proxy

import (
	"bytes"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/gwnomad/gwnomad/lb/balancer"
)

var h2BodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// h2ConnKey is the context key of an h2 connection's h2Conn.
type h2ConnKey struct{}

// h2Conn is what the streams of one h2 connection share, set by
// TLSServer (ConnContext).
type h2Conn struct {
	// writeTimeout bounds the writing of each answer: a stream whose
	// answer did not go out within it is reset (RST_STREAM), which ends
	// its handler and lets go of its answer. 0: none.
	writeTimeout time.Duration
	// buffered is the size of the answers the connection's streams hold
	// now, within Options.MaxBufferedPerConn.
	buffered atomic.Int64
}

// ServeHTTP is the net/http handler for HTTP/2 clients. It converts the
// request to the fasthttp path's form and follows the same rules (the
// gateways are reached over HTTP/1.1 from the same keep-alive pools).
//
// A client that does not read (a flow-control window left at zero, or a
// socket that takes nothing) would keep a stream's handler, and the answer
// it holds, for as long as the connection lives: each answer, the error
// ones too, gets the connection's write timeout (h2Conn.writeTimeout) as
// a deadline before it is written. The answers a connection's streams hold
// are bounded together (Options.MaxBufferedPerConn, up to 100 streams at
// once), and with all other requests' (MaxBufferedTotal); past either, an
// answer is streamed (transport.go).
func (p *Proxy) ServeHTTP(w http.ResponseWriter, hr *http.Request) {
	start := time.Now()
	hc, _ := hr.Context().Value(h2ConnKey{}).(*h2Conn)
	deadline := func() {
		if hc != nil && hc.writeTimeout > 0 {
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(hc.writeTimeout))
		}
	}
	t := p.table.Load()
	var r *balancer.Route
	if t != nil {
		r = t.Match([]byte(hr.Host))
	}
	var o outcome
	client := remoteFromString(hr.RemoteAddr)
	if !sameAuthority(hr) {
		if r != nil {
			p.record(r, &o, http.StatusBadRequest, start)
		}
		deadline()
		http.Error(w, "gwnomad-lb: Host differs from :authority", http.StatusBadRequest)
		return
	}
	if r == nil {
		o.noRoute = true
		p.record(nil, &o, http.StatusNotFound, start)
		deadline()
		http.Error(w, "gwnomad-lb: no route for this host", http.StatusNotFound)
		return
	}
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req) // after the answer was written: it holds the answer's reservation
	defer fasthttp.ReleaseResponse(resp)
	var hold *answerHold
	if hc != nil {
		hold = newHold(req, p.opt.answers, &hc.buffered, int64(p.opt.MaxBufferedPerConn))
	} else {
		hold = newHold(req, p.opt.answers, nil, 0)
	}
	req.Header.SetMethod(hr.Method)
	req.Header.SetRequestURI(hr.URL.RequestURI())
	req.Header.SetHost(hr.Host)
	req.UseHostHeader = true
	for k, vs := range hr.Header {
		if k == "Host" { // the same as :authority (sameAuthority), set above
			continue
		}
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	var body *bytes.Buffer
	if hr.Body != nil && hr.Body != http.NoBody {
		body = h2BodyPool.Get().(*bytes.Buffer)
		body.Reset()
		if err := readLimited(body, hr.Body, p.maxBody); err != nil {
			h2BodyPool.Put(body)
			code := http.StatusBadRequest
			if err == errNoBody {
				code = http.StatusRequestEntityTooLarge
			}
			p.record(r, &o, code, start)
			deadline()
			http.Error(w, "gwnomad-lb: "+err.Error(), code)
			return
		}
		req.SetBodyRaw(body.Bytes())
	}
	stripHopRequest(&req.Header, false)
	p.setForwarded(&req.Header, client, hr.TLS != nil)
	p.forward(r, req, resp, start, &o)
	if body != nil {
		// No try is left: the request body need not wait for a slow
		// reader to take the answer.
		req.SetBodyRaw(nil)
		h2BodyPool.Put(body)
	}
	if o.none || o.err != nil || o.up == nil {
		p.writeError(resp, &o)
		hold.release() // the gateway's answer, if any, is gone
	} else {
		stripHopResponse(&resp.Header)
	}
	h := w.Header()
	for k, v := range resp.Header.All() {
		switch string(k) {
		case "Connection", "Content-Length", "Transfer-Encoding":
			continue
		}
		h.Add(string(k), string(v))
	}
	if p.opt.HSTS != "" && hr.TLS != nil {
		h.Set("Strict-Transport-Security", p.opt.HSTS)
	}
	size := bodyBytes(resp)
	if !resp.SkipBody && hr.Method != http.MethodHead && (!resp.IsBodyStream() || resp.Header.ContentLength() >= 0) {
		h.Set("Content-Length", strconv.Itoa(size))
	}
	code := resp.StatusCode()
	deadline()
	w.WriteHeader(code)
	if hr.Method != http.MethodHead {
		_ = resp.BodyWriteTo(w) // a streamed answer is copied, not held
	}
	p.record(r, &o, code, start)
	if p.opt.AccessLog != nil {
		p.opt.AccessLog.Write(&Entry{
			Start: start, Remote: client, Method: []byte(hr.Method), Host: []byte(hr.Host),
			URI: []byte(hr.URL.RequestURI()), Proto: []byte(hr.Proto), Status: code, Bytes: size,
			Route: r, Upstream: o.up, Tries: o.tries, Err: o.err,
		})
	}
}

// sameAuthority tells whether hr's Host header, if it has one, names what
// its :authority does (RFC 9113 section 8.3.1: a request whose two differ is
// malformed). They are compared as RFC 3986 section 6.2.3 normalizes them:
// host names without case, the scheme's default port the same as none.
// net/http's server takes :authority as hr.Host (the Host header only when
// :authority is absent) and leaves the Host header among the others, so a
// request with both would be routed by one and reach the gateway with the
// other. More than one Host header is malformed too (RFC 9110 section 7.2).
func sameAuthority(hr *http.Request) bool {
	vs, ok := hr.Header["Host"]
	if !ok {
		return true
	}
	if len(vs) != 1 {
		return false
	}
	port := ":80"
	if hr.TLS != nil {
		port = ":443"
	}
	return strings.EqualFold(strings.TrimSuffix(vs[0], port), strings.TrimSuffix(hr.Host, port))
}

func remoteFromString(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		return netip.Addr{}
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}
