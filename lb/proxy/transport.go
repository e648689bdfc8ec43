package proxy

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"sync/atomic"
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
//
// An answer is also held only while the answer budget (answerBudget: all
// requests together, and an h2 connection's streams together) can reserve
// its bytes: one of known length whole before it is read, a chunked or
// until-close one as it is read; once the budget is short the answer is
// streamed, as if it were larger than max. The reservation is the
// request's (answerHold, among its user values): it ends when fasthttp's
// Request.Reset closes the hold, after the answer was written or the
// client went away (fasthttp's server loop, or ServeHTTP's
// ReleaseRequest), and a streamed answer's prefix gives its share back
// once written. So slow readers, which hold their answers until
// write_timeout, cannot pin more than the budget: the clients beyond it
// get their answers streamed, which holds a gateway connection instead of
// the body.
//
// budget is the Proxy's answer budget; nil: the process's (processAnswers).
type gatewayTransport struct {
	max    int
	budget *answerBudget
}

// maxInterim bounds the 1xx answers read before the final one (fasthttp's
// limit).
const maxInterim = 100

var errTooManyInterim = errors.New("more than 100 interim (1xx) answers")

func (t gatewayTransport) RoundTrip(hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response) (retry bool, err error) {
	// The HostClient reset resp before this round trip: whatever body the
	// request's hold reserved for (an earlier try's answer) is gone.
	hold, _ := req.UserValue(holdKey{}).(*answerHold)
	if hold != nil {
		hold.release()
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
		hold = t.holdFor(req, hold)
		outgrown, err := readHeld(&cb, resp, hold, t.max)
		if err != nil {
			return fail(err)
		}
		if outgrown {
			rest := cb
			stream = &gatewayStream{prefix: bytes.Clone(resp.Body()), body: &rest, held: hold.handOver()}
		}
	case size == -2: // until the gateway closes
		ub := untilCloseBody{br: br}
		hold = t.holdFor(req, hold)
		outgrown, err := readHeld(&ub, resp, hold, t.max)
		if err != nil {
			return fail(err)
		}
		if outgrown {
			rest := ub
			stream = &gatewayStream{prefix: bytes.Clone(resp.Body()), body: &rest, held: hold.handOver()}
		} else {
			resp.Header.SetContentLength(len(resp.Body()))
		}
	case size > 0:
		hold = t.holdFor(req, hold)
		if hold != nil && !hold.grow(int64(size)) {
			hold.total.refused.Add(1)
			stream = &gatewayStream{body: &fixedBody{br: br, left: int64(size)}}
			break
		}
		if err := resp.ReadBody(br, t.max); err != nil {
			return fail(err)
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
	held   reservation // prefix's bytes, given back once it was read
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
		if len(s.prefix) == 0 {
			s.prefix = nil
			s.held.release()
		}
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
	s.once.Do(func() {
		s.prefix = nil
		s.held.release()
		s.done(s.err == nil && s.body.finished())
	})
	return nil
}

// answerBudget bounds the bytes of gateways' answers held in memory at
// once (max_buffered_total_bytes): the bodies of buffered answers, and the
// prefixes of streamed ones until they were written. It counts body bytes,
// not the capacity of the buffers holding them, and none of the fixed
// buffers of connections (socket, TLS and read buffers, which max_conns
// bounds) or of streamed answers.
type answerBudget struct {
	limit   int64        // bytes; 0 or less: no limit
	used    atomic.Int64 // reserved now
	refused atomic.Int64 // answers streamed because a reservation failed
}

// processAnswers is the budget of the transports made without one (nil
// gatewayTransport.budget): the one of the Proxy made last (New), which in
// a balancer is its only one.
var processAnswers atomic.Pointer[answerBudget]

// processBudget returns a budget of limit bytes and makes it the process's.
func processBudget(limit int) *answerBudget {
	b := &answerBudget{limit: int64(limit)}
	processAnswers.Store(b)
	return b
}

// budgetLimit maps a configured byte limit (0: none) to an Options one (0:
// the default, negative: none).
func budgetLimit(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// tryAdd adds n to c if that keeps it within limit (0 or less: no limit).
func tryAdd(c *atomic.Int64, n, limit int64) bool {
	if limit <= 0 {
		c.Add(n)
		return true
	}
	for {
		u := c.Load()
		if u+n > limit {
			return false
		}
		if c.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// reservation is n bytes taken from a budget, and from an h2
// connection's share (conn, within connLimit) if it has one.
type reservation struct {
	total     *answerBudget
	conn      *atomic.Int64
	connLimit int64
	n         int64
}

// grow reserves n more bytes, or none (false) if a limit would be passed.
func (r *reservation) grow(n int64) bool {
	if n <= 0 {
		return true
	}
	if r.conn != nil && !tryAdd(r.conn, n, r.connLimit) {
		return false
	}
	if !tryAdd(&r.total.used, n, r.total.limit) {
		if r.conn != nil {
			r.conn.Add(-n)
		}
		return false
	}
	r.n += n
	return true
}

// shrink gives back what is reserved beyond to bytes.
func (r *reservation) shrink(to int64) {
	if d := r.n - max(to, 0); d > 0 {
		r.total.used.Add(-d)
		if r.conn != nil {
			r.conn.Add(-d)
		}
		r.n -= d
	}
}

func (r *reservation) release() {
	if r.n > 0 {
		r.shrink(0)
	}
}

// holdKey is the user value key of a request's answerHold.
type holdKey struct{}

// answerHold is the reservation for the answer a request's Response holds.
// It is one of the request's user values, which fasthttp's Request.Reset
// closes: the answer was written, or abandoned, by then.
type answerHold struct{ reservation }

var holdPool = sync.Pool{New: func() any { return new(answerHold) }}

// newHold returns a hold on budget b (and on an h2 connection's share if
// conn is not nil) set among req's user values.
func newHold(req *fasthttp.Request, b *answerBudget, conn *atomic.Int64, connLimit int64) *answerHold {
	h := holdPool.Get().(*answerHold)
	h.reservation = reservation{total: b, conn: conn, connLimit: connLimit}
	req.SetUserValue(holdKey{}, h)
	return h
}

// Close implements io.Closer for Request.Reset.
func (h *answerHold) Close() error {
	h.release()
	*h = answerHold{}
	holdPool.Put(h)
	return nil
}

// handOver moves what h reserved to the reservation returned, for a
// streamed answer's prefix; h keeps nothing.
func (h *answerHold) handOver() reservation {
	r := h.reservation
	h.n = 0
	return r
}

// holdFor returns req's hold, made now on t's budget if it has none; nil
// without any budget (a Proxy was never made).
func (t gatewayTransport) holdFor(req *fasthttp.Request, h *answerHold) *answerHold {
	if h != nil {
		return h
	}
	b := t.budget
	if b == nil {
		b = processAnswers.Load()
	}
	if b == nil {
		return nil
	}
	return newHold(req, b, nil, 0)
}

// holdStep is the first reservation for an answer of unknown length: the
// reader's buffer (ReadBufferSize), the largest piece readInto appends.
const holdStep = 16 << 10

// heldReader is a body of unknown length (chunked, until close) that
// readInto can take up again where it stopped.
type heldReader interface {
	readInto(resp *fasthttp.Response, max int) (outgrown bool, err error)
}

// readHeld reads body into resp as far as h lets it: its reservation
// doubles, from holdStep, each time the body outgrows it, up to max (0:
// no limit). False: the body is read whole (h then holds its length).
// True: the body outgrew max or the budget; resp and h hold what was read,
// body the rest. Without a hold (h nil) it reads up to max.
func readHeld(body heldReader, resp *fasthttp.Response, h *answerHold, max int) (outgrown bool, err error) {
	if h == nil {
		return body.readInto(resp, max)
	}
	for want := int64(holdStep); ; want *= 2 {
		if max > 0 && want > int64(max) {
			want = int64(max)
		}
		if !h.grow(want - h.n) {
			h.total.refused.Add(1)
			h.shrink(int64(len(resp.Body())))
			return true, nil
		}
		outgrown, err := body.readInto(resp, int(h.n))
		if err != nil || !outgrown || (max > 0 && h.n >= int64(max)) {
			h.shrink(int64(len(resp.Body())))
			return outgrown, err
		}
	}
}

// BufferedAnswerBytes is the size of the gateways' answers held in memory
// now, all requests together (the answer budget's use).
func (p *Proxy) BufferedAnswerBytes() int64 { return p.opt.answers.used.Load() }

// AnswersStreamedForBudget counts the answers streamed, rather than held,
// because the answer budget (total, or an h2 connection's share) was
// short.
func (p *Proxy) AnswersStreamedForBudget() int64 { return p.opt.answers.refused.Load() }
