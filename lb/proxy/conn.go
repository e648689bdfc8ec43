package proxy

import (
	"io"
	"net"
	"sync"
)

// Every TCP connection of the HTTP/1.1 path, client side and gateway
// side, is wrapped in a Conn. It changes nothing of what is read or
// written, only how many system calls that costs, which is most of a
// proxy's CPU (BENCHMARKS.md, "Where gwnomad's CPU goes"):
//
//   - Socket reads and writes go straight to the kernel (conn_linux.go)
//     instead of through the Go runtime's blocking-syscall bookkeeping.
//     The sockets are non-blocking, so no call blocks the thread; what
//     that saves is the runtime's monitor thread waking every 20 µs to
//     take processors away from threads that are "in a syscall" (a write
//     on loopback runs the receiver's TCP stack and is often longer than
//     that), and the thread hand-offs that follow.
//   - A read shorter than readAheadMin (fasthttp's one-byte read that
//     waits for a keep-alive connection's next request without holding a
//     buffer) reads what the socket has into a pooled buffer and serves
//     the following reads from it, so the request costs one read, not
//     two. The buffer goes back to the pool when drained: an idle
//     connection still holds none.
//   - Deadlines are lazy (deadline.go): one moved later is not passed to
//     the runtime until the earlier one passes.
//
// Close and everything else are the wrapped *net.TCPConn's.

// readAheadMin: reads asking for fewer bytes go through the read-ahead
// buffer; larger ones read into the caller's buffer directly.
const readAheadMin = 512

// readAheadSize is the read-ahead buffer's size: a request line and
// typical headers fit.
const readAheadSize = 4096

var readAheadPool = sync.Pool{New: func() any { b := make([]byte, readAheadSize); return &b }}

// Conn is a *net.TCPConn whose reads and writes cost fewer system calls
// (see above). wrap makes one.
type Conn struct {
	*net.TCPConn
	rmu  sync.Mutex // one reader at a time, as net.Conn (and the runtime's one waiter per socket)
	wmu  sync.Mutex // one writer at a time, as net.Conn
	raw  *rawConn
	ra   *[]byte // read-ahead buffer; nil when empty
	r, w int     // unread bytes are (*ra)[r:w]

	dmu    sync.Mutex // guards rd, wd, rearms
	rd, wd deadline
	rearms int // armed deadlines that passed before the one asked (tests read it)
}

// wrap returns c as a *Conn when it is a TCP connection, else c.
func wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := newRawConn(tc)
	if err != nil {
		return c
	}
	return &Conn{TCPConn: tc, raw: raw}
}

// Read reads like net.Conn's Read.
func (c *Conn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		n, err := c.read(b)
		if err == nil || c.expired(err, false) {
			return n, err
		}
	}
}

func (c *Conn) read(b []byte) (int, error) {
	if c.ra != nil {
		n := copy(b, (*c.ra)[c.r:c.w])
		c.r += n
		if c.r == c.w {
			c.release()
		}
		return n, nil
	}
	if len(b) == 0 {
		return 0, nil
	}
	if len(b) >= readAheadMin {
		return c.raw.read(b)
	}
	ra := readAheadPool.Get().(*[]byte)
	n, err := c.raw.read(*ra)
	if n <= 0 {
		readAheadPool.Put(ra)
		return n, err
	}
	k := copy(b, (*ra)[:n])
	if k == n {
		readAheadPool.Put(ra)
		return k, nil
	}
	c.ra, c.r, c.w = ra, k, n
	return k, nil
}

func (c *Conn) release() {
	readAheadPool.Put(c.ra)
	c.ra, c.r, c.w = nil, 0, 0
}

// Write writes all of b like net.Conn's Write.
func (c *Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n, err := c.raw.write(b)
	for err != nil && !c.expired(err, true) {
		var k int
		k, err = c.raw.write(b[n:])
		n += k
	}
	return n, err
}

// WriteTo copies what c reads to w until EOF (io.Copy calls it) through
// c.Read, so that the read-ahead bytes come first and lazy deadlines
// hold; *net.TCPConn's WriteTo would bypass both (and splices only to
// Unix sockets).
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}

// ReadFrom copies what r gives to c until EOF (io.Copy calls it) through
// c.Write, for the same reasons.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c}, r)
}

// Buffered reports how many bytes were read from the socket but not yet
// by the caller.
func (c *Conn) Buffered() int {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.w - c.r
}

// Listener wraps the connections an inner listener accepts (see Conn).
// TCP keep-alive stays as net.Listen set it on accept (on, 15 s).
type Listener struct{ net.Listener }

// Accept accepts and wraps.
func (l Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return wrap(c), nil
}
