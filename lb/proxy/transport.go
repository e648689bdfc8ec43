package proxy

import (
	"bufio"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// gatewayTransport is the round trip of every gateway's HostClient. It is
// fasthttp's DefaultTransport (write the request, read the answer, give
// the connection back) but for one decision, which it takes once the
// answer's header is read rather than before the request is sent:
//
//   - an answer whose Content-Length is above max is streamed to the
//     client from this connection (the connection goes back to the pool
//     when the body was read to its end, and is closed if the client left
//     before). So a large answer is fetched once, whatever the method.
//   - any other answer is read whole, up to max; an answer without a
//     Content-Length (chunked, or until the gateway closes) that goes
//     beyond max fails with fasthttp.ErrBodyTooLarge, and the proxy asks
//     again for a stream (rule 8), which resp.StreamBody requests here and
//     fasthttp's own transport serves.
//
// max is 0 when every answer is buffered (no limit).
type gatewayTransport struct{ max int }

// maxInterim bounds the 1xx answers read before the final one (fasthttp's
// limit).
const maxInterim = 100

var errTooManyInterim = errors.New("more than 100 interim (1xx) answers")

func (t gatewayTransport) RoundTrip(hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response) (retry bool, err error) {
	if resp.StreamBody {
		return fasthttp.DefaultTransport.RoundTrip(hc, req, resp)
	}
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
		return !errors.Is(err, fasthttp.ErrBodyTooLarge), err
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
	closeConn := req.ConnectionClose() || resp.ConnectionClose()

	// The body: none, streamed, or read whole.
	code, size := resp.StatusCode(), resp.Header.ContentLength()
	switch {
	case resp.SkipBody || code < 200 || code == fasthttp.StatusNoContent || code == fasthttp.StatusNotModified:
	case t.max > 0 && size > t.max:
		resp.SetBodyStream(&gatewayStream{br: br, left: int64(size), done: func(reuse bool) {
			hc.ReleaseReader(br)
			if reuse && !closeConn {
				hc.ReleaseConn(cc)
			} else {
				hc.CloseConn(cc)
			}
		}}, size)
		return false, nil
	default:
		if err := resp.ReadBody(br, t.max); err != nil {
			return fail(err)
		}
		if size == -1 { // chunked: the trailer ends the answer
			if err := resp.Header.ReadTrailer(br); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return fail(err)
			}
		}
	}
	hc.ReleaseReader(br)
	if closeConn {
		hc.CloseConn(cc)
	} else {
		hc.ReleaseConn(cc)
	}
	return false, nil
}

// gatewayStream is an answer's body of known size, read from its gateway
// connection as the client takes it. Close gives the connection back to
// the pool if the body was read to its end, and closes it otherwise (the
// rest of the body would still be on it).
type gatewayStream struct {
	br   *bufio.Reader
	left int64 // bytes of the body not read yet
	err  error
	once sync.Once
	done func(reuse bool)
}

func (s *gatewayStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.br.Read(p)
	s.left -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF // the gateway closed before the end
	}
	s.err = err
	return n, err
}

// Close implements io.Closer; fasthttp calls it once the answer was
// written (or the client went away).
func (s *gatewayStream) Close() error {
	s.once.Do(func() { s.done(s.left == 0 && s.err == nil) })
	return nil
}
