// Command gnetmin is an experiment of issue 8, not gwnomad: the minimal
// round-robin HTTP/1.1 proxy of bench/minproxy, but on an event loop per core
// (github.com/panjf2000/gnet/v2) instead of a goroutine per connection. It
// answers one question: does an event loop in Go remove the idle CPU that
// keeps gwnomad's plain requests/s below HAProxy's on this machine (see
// BENCHMARKS.md, "Where the requests/s gap is")?
//
// Each client connection owns up to one connection per gateway, registered
// in the client's own event loop, so a request and its answer never leave
// the thread that read the request. It handles what the benchmark sends and
// nothing else: requests without a body, one at a time per connection
// (wrk does not pipeline), answers with a Content-Length. No health,
// retries, headers, logs or metrics. By default it parses the request's
// and the answer's header with fasthttp's parsers and writes them out
// again, as bench/minproxy does, so that the two differ in the engine only
// (-parse=false relays the bytes as they came). Plain HTTP only: an event
// loop cannot drive crypto/tls as it is (lbbench runs bench/minproxy for
// the TLS rows of this target).
//
//	gnetmin -plain 127.0.0.1:8080 -backends 127.0.0.1:9001,127.0.0.1:9002
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"
	"github.com/valyala/fasthttp"
)

func main() {
	plain := flag.String("plain", "", "plain HTTP listen address (gnet)")
	backends := flag.String("backends", "", "comma-separated backend addresses")
	loops := flag.Int("loops", 0, "event loops (default: GOMAXPROCS)")
	lock := flag.Bool("lock-os-thread", true, "pin each event loop to an OS thread")
	parse := flag.Bool("parse", true, "parse and rewrite the headers with fasthttp's parsers")
	flag.Parse()
	if *backends == "" || *plain == "" {
		fmt.Fprintln(os.Stderr, "gnetmin: -plain and -backends are required")
		os.Exit(2)
	}
	p := &proxy{parse: *parse}
	for _, b := range strings.Split(*backends, ",") {
		a, err := net.ResolveTCPAddr("tcp", b)
		if err != nil {
			log.Fatal(err)
		}
		p.backends = append(p.backends, a)
	}
	opts := []gnet.Option{gnet.WithMulticore(true), gnet.WithLockOSThread(*lock), gnet.WithTCPNoDelay(gnet.TCPNoDelay)}
	if *loops > 0 {
		opts = append(opts, gnet.WithNumEventLoop(*loops))
	}
	log.Fatal(gnet.Run(p, "tcp://"+*plain, opts...))
}

type proxy struct {
	gnet.BuiltinEventEngine
	backends []*net.TCPAddr
	next     atomic.Uint64
	parse    bool
}

// client is a client connection's state; it lives on its event loop.
type client struct {
	c       gnet.Conn
	up      []*upstream // one per backend, nil until first used
	waiting bool        // a request is at a gateway
	closed  bool
}

// upstream is a gateway connection of one client.
type upstream struct {
	c      gnet.Conn // nil until registered
	owner  *client
	queued []byte // the request, while the connection is being made
}

func (p *proxy) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	switch u := c.Context().(type) {
	case *upstream:
		u.c = c
		if u.queued != nil {
			_, _ = c.Write(u.queued)
			u.queued = nil
		}
	default:
		c.SetContext(&client{c: c, up: make([]*upstream, len(p.backends))})
	}
	return nil, gnet.None
}

func (p *proxy) OnClose(c gnet.Conn, _ error) gnet.Action {
	switch s := c.Context().(type) {
	case *upstream:
		if s.owner != nil && !s.owner.closed {
			for i, u := range s.owner.up {
				if u == s {
					s.owner.up[i] = nil
				}
			}
			if s.owner.waiting {
				_ = s.owner.c.Close()
			}
		}
	case *client:
		s.closed = true
		for _, u := range s.up {
			if u != nil && u.c != nil {
				u.owner = nil
				_ = u.c.Close()
			}
		}
	}
	return gnet.None
}

var headEnd = []byte("\r\n\r\n")

func (p *proxy) OnTraffic(c gnet.Conn) gnet.Action {
	switch s := c.Context().(type) {
	case *client:
		if s.waiting {
			return gnet.None // the next request waits in the buffer
		}
		buf, _ := c.Peek(-1)
		end := bytes.Index(buf, headEnd)
		if end < 0 {
			if len(buf) > 16<<10 {
				return gnet.Close
			}
			return gnet.None
		}
		req := buf[:end+4]
		n := len(req)
		if p.parse {
			out := outBufs.Get().(*[]byte)
			defer outBufs.Put(out)
			if req = rewriteRequest(*out, req); req == nil {
				return gnet.Close
			}
			*out = req
		}
		i := int(p.next.Add(1) % uint64(len(p.backends)))
		u := s.up[i]
		s.waiting = true
		switch {
		case u == nil:
			u = &upstream{owner: s, queued: append([]byte(nil), req...)}
			s.up[i] = u
			if _, err := c.EventLoop().Register(gnet.NewContext(context.Background(), u), p.backends[i]); err != nil {
				return gnet.Close
			}
		case u.c == nil:
			u.queued = append(u.queued[:0], req...)
		default:
			if _, err := u.c.Write(req); err != nil {
				return gnet.Close
			}
		}
		_, _ = c.Discard(n)
	case *upstream:
		buf, _ := c.Peek(-1)
		n, ok := responseLen(buf)
		if !ok {
			return gnet.None
		}
		if n < 0 {
			return gnet.Close
		}
		if s.owner != nil {
			out := buf[:n]
			if p.parse {
				b := outBufs.Get().(*[]byte)
				defer outBufs.Put(b)
				if out = rewriteResponse(*b, out); out == nil {
					return gnet.Close
				}
				*b = out
			}
			_, _ = s.owner.c.Write(out)
			s.owner.waiting = false
		}
		_, _ = c.Discard(n)
		if s.owner != nil && s.owner.c.InboundBuffered() > 0 {
			return p.OnTraffic(s.owner.c) // a request that came while this one was out
		}
	}
	return gnet.None
}

// Parsers and buffers; the event loops share them through pools (as a
// fasthttp server's connections share its).
var (
	reqHeaders  = sync.Pool{New: func() any { return new(fasthttp.RequestHeader) }}
	respHeaders = sync.Pool{New: func() any { return new(fasthttp.ResponseHeader) }}
	readers     = sync.Pool{New: func() any { return &reader{br: bufio.NewReaderSize(nil, 4096)} }}
	outBufs     = sync.Pool{New: func() any { return new([]byte) }}
)

type reader struct {
	r  bytes.Reader
	br *bufio.Reader
}

func (rd *reader) reset(b []byte) *bufio.Reader {
	rd.r.Reset(b)
	rd.br.Reset(&rd.r)
	return rd.br
}

// rewriteRequest parses a request head and appends it to dst[:0] again
// (nil: bad).
func rewriteRequest(dst, head []byte) []byte {
	h := reqHeaders.Get().(*fasthttp.RequestHeader)
	rd := readers.Get().(*reader)
	defer func() { h.Reset(); reqHeaders.Put(h); readers.Put(rd) }()
	if err := h.Read(rd.reset(head)); err != nil {
		return nil
	}
	return h.AppendBytes(dst[:0])
}

// rewriteResponse parses an answer's head and appends it to dst[:0] again
// with its body (nil: bad).
func rewriteResponse(dst, resp []byte) []byte {
	h := respHeaders.Get().(*fasthttp.ResponseHeader)
	rd := readers.Get().(*reader)
	defer func() { h.Reset(); respHeaders.Put(h); readers.Put(rd) }()
	end := bytes.Index(resp, headEnd) + 4
	if err := h.Read(rd.reset(resp[:end])); err != nil {
		return nil
	}
	return append(h.AppendBytes(dst[:0]), resp[end:]...)
}

// responseLen is the length of the answer at the head of buf, ok=false while
// it is incomplete, n<0 when it has no Content-Length.
func responseLen(buf []byte) (n int, ok bool) {
	end := bytes.Index(buf, headEnd)
	if end < 0 {
		return 0, false
	}
	head := buf[:end]
	i := bytes.Index(bytes.ToLower(head), []byte("\r\ncontent-length:"))
	if i < 0 {
		return -1, true
	}
	v := head[i+len("\r\ncontent-length:"):]
	if j := bytes.IndexByte(v, '\r'); j >= 0 {
		v = v[:j]
	}
	cl, err := strconv.Atoi(string(bytes.TrimSpace(v)))
	if err != nil {
		return -1, true
	}
	n = end + 4 + cl
	return n, len(buf) >= n
}
