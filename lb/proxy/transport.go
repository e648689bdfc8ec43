package proxy

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// gatewayTransport is the round trip of every gateway's HostClient. It is
// fasthttp's DefaultTransport (write the request, read the answer, give
// the connection back) but for one decision, which it takes while the
// answer comes rather than before the request is sent: whether to hold
// the body in memory or stream it to the client.
//
//   - An answer whose Content-Length is above max is streamed from the
//     start.
//   - A chunked answer, or one that ends when the gateway closes the
//     connection, is read into memory until it passes max; then what was
//     read and the rest are streamed (chunked to the client).
//   - Either way the answer is fetched once, whatever the method. A
//     streamed answer's connection goes back to the pool when the body was
//     read to its end, and is closed if the client left before.
//
// max is 0 when every answer is buffered (no limit). The bodies are read
// in body.go.
type gatewayTransport struct{ max int }

// maxInterim bounds the 1xx answers read before the final one (fasthttp's
// limit).
const maxInterim = 100

var errTooManyInterim = errors.New("more than 100 interim (1xx) answers")

func (t gatewayTransport) RoundTrip(hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response) (retry bool, err error) {
	cc, err := hc.AcquireConn(0, req.ConnectionClose())
	if err != nil {
		return false, err
	}
	conn := cc.Conn()

	// The request. A failure here leaves the request unanswered: the
	// HostClient may retry it on another connection (RetryIfErr).
	if hc.WriteTimeout > 0 {
		if err := conn.SetWriteDeadline(time.Now().Add(hc.WriteTimeout)); err != nil {
			hc.CloseConn(cc)
			return true, err
		}
	}
	bw := hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	if err != nil {
		hc.CloseConn(cc)
		var te interface{ Timeout() bool }
		if errors.As(err, &te) && te.Timeout() {
			err = fasthttp.ErrTimeout
		}
		return true, err
	}

	// The answer's header, after any interim (1xx) answers.
	if hc.ReadTimeout > 0 {
		if err := conn.SetReadDeadline(time.Now().Add(hc.ReadTimeout)); err != nil {
			hc.CloseConn(cc)
			return true, err
		}
	}
	br := hc.AcquireReader(conn)
	fail := func(err error) (bool, error) {
		hc.ReleaseReader(br)
		hc.CloseConn(cc)
		return true, err // the HostClient may retry on another connection (RetryIfErr)
	}
	if req.Header.IsHead() {
		resp.SkipBody = true
	}
	if err := resp.Header.Read(br); err != nil {
		return fail(err)
	}
	for n := 0; resp.StatusCode() >= 100 && resp.StatusCode() < 200 && resp.StatusCode() != fasthttp.StatusSwitchingProtocols; n++ {
		if n >= maxInterim {
			return fail(errTooManyInterim)
		}
		if err := resp.Header.Read(br); err != nil {
			return fail(err)
		}
	}
	// 101 to a request that did not ask for an upgrade (upgrades are relayed
	// apart, upgrade.go): the connection speaks something else now.
	closeConn := req.ConnectionClose() || resp.ConnectionClose() || resp.StatusCode() == fasthttp.StatusSwitchingProtocols

	// The body: none, read whole, or streamed.
	code, size := resp.StatusCode(), resp.Header.ContentLength()
	var stream *gatewayStream
	switch {
	case resp.SkipBody || code < 200 || code == fasthttp.StatusNoContent || code == fasthttp.StatusNotModified:
	case t.max > 0 && size > t.max:
		stream = &gatewayStream{body: &fixedBody{br: br, left: int64(size)}}
	case size == -1: // chunked
		cb := chunkedBody{br: br}
		outgrown, err := cb.readInto(resp, t.max)
		if err != nil {
			return fail(err)
		}
		if outgrown {
			rest := cb
			stream = &gatewayStream{prefix: bytes.Clone(resp.Body()), body: &rest}
		}
	case size == -2: // until the gateway closes
		ub := untilCloseBody{br: br}
		outgrown, err := ub.readInto(resp, t.max)
		if err != nil {
			return fail(err)
		}
		if outgrown {
			rest := ub
			stream = &gatewayStream{prefix: bytes.Clone(resp.Body()), body: &rest}
		} else {
			resp.Header.SetContentLength(len(resp.Body()))
		}
	default:
		if err := resp.ReadBody(br, t.max); err != nil {
			return fail(err)
		}
	}
	if stream != nil {
		stream.done = func(reuse bool) {
			hc.ReleaseReader(br)
			if reuse && !closeConn {
				hc.ReleaseConn(cc)
			} else {
				hc.CloseConn(cc)
			}
		}
		resp.SetBodyStream(stream, max(size, -1)) // -1: chunked to the client
		return false, nil
	}
	hc.ReleaseReader(br)
	if closeConn {
		hc.CloseConn(cc)
	} else {
		hc.ReleaseConn(cc)
	}
	return false, nil
}

// gatewayStream is an answer's body streamed from its gateway connection
// as the client takes it: prefix (what was read before the answer was
// found too large to hold), then the rest of body. Close gives the
// connection back to the pool if the body was read to its end, and closes
// it otherwise (the rest of the body would still be on it).
type gatewayStream struct {
	prefix []byte
	body   bodyReader
	err    error
	once   sync.Once
	done   func(reuse bool)
}

// bodyReader reads a body off a connection and tells whether it was read
// to its end (then the connection holds nothing more of this answer).
type bodyReader interface {
	io.Reader
	finished() bool
}

func (s *gatewayStream) Read(p []byte) (int, error) {
	if len(s.prefix) > 0 {
		n := copy(p, s.prefix)
		s.prefix = s.prefix[n:]
		return n, nil
	}
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.body.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// Close implements io.Closer; fasthttp calls it once the answer was
// written (or the client went away).
func (s *gatewayStream) Close() error {
	s.once.Do(func() { s.done(s.err == nil && s.body.finished()) })
	return nil
}
