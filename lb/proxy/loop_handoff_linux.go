package proxy

// What a loop gives to goroutines: connections with requests it does not
// serve (L3), answers it does not hold (L4).

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"
)

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
	nc, hand, err := lp.detach(c)
	if err != nil {
		lp.p.log.Warn("event loop: handing a connection over failed", "err", err)
		return
	}
	lp.s.deliver(nc, pre, hand)
}

// detach takes c out of the loop: its connection for goroutines (a
// *tls.Conn over TLS), and the goroutine engine that serves it next.
func (lp *loop) detach(c *client) (net.Conn, *chanListener, error) {
	fd := c.fd
	if fd < 0 {
		panic(loopFault("detaching a client connection the loop no longer owns"))
	}
	c.fd, c.state = -1, cGone
	lp.clients--
	lp.load.Add(-1)
	nc, err := lp.connOf(fd)
	if err != nil {
		return nil, nil, err
	}
	if c.tls != nil {
		return detachTLS(c, nc), c.tls.hand, nil
	}
	return nc, lp.s.hand, nil
}

// deliver gives c, to be read after pre, to the goroutine engine hand, or
// closes it if that stopped.
func (s *LoopServer) deliver(c net.Conn, pre []byte, hand *chanListener) {
	if tc, ok := c.(*tls.Conn); ok {
		c = &tlsPrefixConn{Conn: tc, pre: pre}
	} else {
		c = &prefixConn{Conn: c, pre: pre}
	}
	go func() {
		if !hand.deliver(c) {
			c.Close()
		}
	}()
}

// prefixConn reads pre before the connection.
type prefixConn struct {
	net.Conn
	pre []byte
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
	rest := bytes.Clone(g.in[x.bodyStart+x.chunk.scan:])
	held := bytes.Clone(g.in[x.bodyStart : x.bodyStart+x.chunk.dec]) // of a chunked answer: decoded already
	pre := bytes.Clone(c.buf)
	closeAfter := c.closeAfter || lp.s.stopping.Load()
	remote := c.remote
	lp.unhold(c) // the relay reserves what it holds itself
	gfd := g.fd
	g.fd, c.x = -1, nil
	cc, hand, cerr := lp.detach(c)
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
		ok := s.relayAnswer(x, remote, cc, gc, held, rest, closeAfter)
		gc.Close()
		if ok && !closeAfter {
			s.deliver(cc, pre, hand)
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
func (s *LoopServer) relayAnswer(x *exchange, remote netip.Addr, client, gw net.Conn, held, rest []byte, closeAfter bool) bool {
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
	// What it holds counts against the answer budget (L11); once the
	// budget is short, or the loop found it so (x.stream), the rest
	// streams.
	res := reservation{total: p.opt.answers}
	defer res.release()
	_ = res.grow(int64(len(held))) // in memory already, whatever the budget says
	if cl < 0 && !x.stream {
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
			if !res.grow(int64(n)) {
				res.total.refused.Add(1)
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
	p.recordExchange(remote, x)
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
