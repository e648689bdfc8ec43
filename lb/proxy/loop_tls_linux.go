package proxy

// HTTP/1.1 over TLS on the loops (rule L8 of loop_linux.go): the
// handshake is the TLS server's, on a goroutine; the connection's
// requests are then a loop's.

import (
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tlsLink is the transport under a client's *tls.Conn. During the
// handshake, and after a hand-over to goroutines, it is the TCP
// connection nc; in between, nc is nil and it reads and writes the loop's
// socket: a read that would wait returns errWouldBlock, which crypto/tls
// takes as temporary (its state is kept, the next Read goes on where this
// one stopped); what the *tls.Conn writes is appended to the loop's
// output (sink, or the client's pending output) and written by the loop.
type tlsLink struct {
	nc           net.Conn // the connection while goroutines own it
	tc           *tls.Conn
	c            *client // while a loop owns it
	sink         *[]byte // where writes go while a loop seals an answer
	pending      []byte  // written before anything else once goroutines own it again
	fd           int     // the duplicate a loop adopts
	laddr, raddr net.Addr
	hand         *chanListener // the goroutine engine of this TLS listener (L3, L4)
}

// errWouldBlock: no byte on the socket now. crypto/tls keeps its state
// for errors that are net.Errors and Temporary.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "event loop: the socket has no data now" }
func (wouldBlock) Timeout() bool   { return false }
func (wouldBlock) Temporary() bool { return true }

func (l *tlsLink) Read(p []byte) (int, error) {
	c := l.c
	if c == nil {
		return l.nc.Read(p)
	}
	if !c.readable {
		return 0, errWouldBlock // emptied, and no edge since: no system call
	}
	for {
		n, err := rawRead(c.fd, p)
		switch {
		case err == nil && n == 0 && len(p) > 0:
			return 0, io.EOF
		case err == nil:
			if n < len(p) && !c.hup {
				c.readable = false // a short read emptied the socket; the next byte brings an edge
			}
			return n, nil
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			c.readable = false
			return 0, errWouldBlock
		}
		return 0, err
	}
}

func (l *tlsLink) Write(p []byte) (int, error) {
	if l.c == nil {
		if len(l.pending) > 0 {
			if _, err := l.nc.Write(l.pending); err != nil {
				return 0, err
			}
			l.pending = nil
		}
		return l.nc.Write(p)
	}
	if l.sink != nil {
		*l.sink = append(*l.sink, p...)
	} else {
		l.c.out = append(l.c.out, p...)
	}
	return len(p), nil
}

// Close closes nc; on a loop the loop closes the socket.
func (l *tlsLink) Close() error {
	if l.c != nil || l.nc == nil {
		return nil
	}
	return l.nc.Close()
}

func (l *tlsLink) LocalAddr() net.Addr {
	if l.nc != nil {
		return l.nc.LocalAddr()
	}
	return l.laddr
}

func (l *tlsLink) RemoteAddr() net.Addr {
	if l.nc != nil {
		return l.nc.RemoteAddr()
	}
	return l.raddr
}

// Deadlines are the loop's own while it owns the connection (L5).
func (l *tlsLink) SetDeadline(t time.Time) error {
	if l.nc == nil {
		return nil
	}
	return l.nc.SetDeadline(t)
}

func (l *tlsLink) SetReadDeadline(t time.Time) error {
	if l.nc == nil {
		return nil
	}
	return l.nc.SetReadDeadline(t)
}

func (l *tlsLink) SetWriteDeadline(t time.Time) error {
	if l.nc == nil {
		return nil
	}
	return l.nc.SetWriteDeadline(t)
}

// tlsPrefixConn is prefixConn for a *tls.Conn: fasthttp still sees a TLS
// connection (ctx.IsTLS, X-Forwarded-Proto, HSTS).
type tlsPrefixConn struct {
	*tls.Conn
	pre []byte
}

func (c *tlsPrefixConn) Read(b []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(b, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// adoptTLS gives a handshaken HTTP/1.1 connection to a loop (L8). tc must
// have been made over newTLSLink's link; hand is the goroutine engine its
// requests go to when the loop hands them over. False: the loops do not
// serve (not yet, or no more); tc is untouched.
func (s *LoopServer) adoptTLS(tc *tls.Conn, hand *chanListener) bool {
	l, ok := tc.NetConn().(*tlsLink)
	if !ok || l.nc == nil {
		return false
	}
	if w, ok := l.nc.(*Conn); ok && w.Buffered() > 0 {
		return false // read ahead of crypto/tls (it reads 512 bytes or more, so never)
	}
	sc, ok := l.nc.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.serving || s.stopping.Load() {
		return false
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || dupErr != nil {
		return false
	}
	// Closing Go's descriptor takes it out of the runtime's poller; the
	// socket lives on in the duplicate, which shares its O_NONBLOCK.
	l.laddr, l.raddr = l.nc.LocalAddr(), l.nc.RemoteAddr()
	_ = l.nc.Close()
	l.nc, l.tc, l.fd, l.hand = nil, tc, fd, hand
	s.leastLoaded().give(newConn{fd: fd, remote: remoteAddr(l.raddr), link: l})
	return true
}

// newTLSLink wraps c, a TCP connection just accepted (or its Conn), for
// tls.Server, so that adoptTLS can later move it to a loop.
func newTLSLink(c net.Conn) net.Conn { return &tlsLink{nc: c, fd: -1} }

// readTLS reads c's next plaintext into p (as readClient). crypto/tls may
// hold whole records while the socket is empty (c.readable false), so it
// is asked whatever c.readable says; it reads the socket only when
// c.readable.
func (lp *loop) readTLS(c *client, p []byte) (int, error) {
	for {
		n, err := c.tls.tc.Read(p)
		switch {
		case n > 0:
			return n, nil
		case err == errWouldBlock:
			return 0, unix.EAGAIN // c.readable is false: the socket is empty
		case err != nil:
			return 0, err
		}
	}
}

// seal encrypts head and body as one record (up to 16 KiB a record) into
// the loop's output, after c's pending output; nil if crypto/tls failed.
func (lp *loop) seal(c *client, head, body []byte) []byte {
	if cap(lp.sealed) > loopKeepBuffer {
		lp.sealed = nil // the last large answer's, written or copied since
	}
	lp.plain = append(append(lp.plain[:0], head...), body...)
	lp.sealed = append(lp.sealed[:0], c.out...)
	c.out = c.out[:0]
	l := c.tls
	l.sink = &lp.sealed
	_, err := l.tc.Write(lp.plain)
	l.sink = nil
	if cap(lp.plain) > loopKeepBuffer {
		lp.plain = nil
	}
	if err != nil {
		return nil
	}
	return lp.sealed
}

// detachTLS gives c's *tls.Conn to goroutines over nc, its socket made a
// Go connection; what the loop had not written yet goes first.
func detachTLS(c *client, nc net.Conn) net.Conn {
	l := c.tls
	l.c, l.nc = nil, nc
	if len(c.out) > 0 {
		l.pending = append(l.pending, c.out...)
	}
	return l.tc
}

// goodbye sends TLS's close_notify, best effort, before the loop closes
// c's socket (as tls.Conn's Close does).
func (lp *loop) goodbye(c *client) {
	if err := c.tls.tc.CloseWrite(); err != nil {
		return
	}
	if len(c.out) > 0 {
		_, _ = rawWrite(c.fd, c.out)
	}
}
