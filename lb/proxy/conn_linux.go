package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// rawConn reads and writes a non-blocking socket with raw system calls
// (no runtime syscall bookkeeping), waiting for readiness through the Go
// netpoller (syscall.RawConn), so deadlines and Close behave as usual.
//
// Reads wait first when they can: the netpoller registers sockets
// edge-triggered, so once a read has returned less than it asked for
// (the socket's queue was empty), any later data raises an event that
// the netpoller records as "ready". The next read then waits for that
// record (free when it is already there) instead of asking the kernel
// and getting EAGAIN, which is what a proxy's reads mostly get: the
// gateway's answer is never there right after the request is written,
// nor the client's next request right after the answer. A stale record
// (data that arrived and was read before the record was consumed) costs
// one EAGAIN read, as every read did before; no record is ever lost, so
// no read waits for data that is already there.
//
// One thing can be there without a new event: the peer's FIN. A short
// read returns the last bytes but not the end of the stream, and a FIN
// that came with those bytes raised its event before that read. So a read
// waits first only if the connection wrote since the read before: then
// the peer owes an answer, and a peer that had closed answers the write
// with a reset, which raises an event. Reads that continue an answer
// (more of a body, the end of a stream) read first.
type rawConn struct {
	tc      *net.TCPConn
	rc      syscall.RawConn
	pd      uintptr     // the runtime's poll descriptor; 0: always read first
	drained bool        // the last read returned less than asked
	wrote   atomic.Bool // a write since the last read (reads and writes may run concurrently)
	eagain  int         // reads that found nothing (tests read it)

	// The functions handed to rc and their arguments and results live as
	// long as the connection: closures made per call would escape to the
	// heap (rc is an interface).
	readFn, writeFn func(fd uintptr) bool
	waitFn          func(fd uintptr)
	rb, wb          []byte
	rn, wn          int
	rerr, werr      syscall.Errno
	code            int
}

func newRawConn(tc *net.TCPConn) (*rawConn, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	c := &rawConn{tc: tc, rc: rc, pd: pollDescOf(tc, rc)}
	c.readFn, c.writeFn, c.waitFn = c.readSys, c.writeSys, c.waitSys
	return c, nil
}

func (c *rawConn) read(b []byte) (int, error) {
	if c.wrote.Load() {
		if c.pd != 0 && c.drained {
			if err := c.waitRead(); err != nil {
				return 0, err
			}
		}
		c.wrote.Store(false)
	}
	c.rb, c.rn, c.rerr = b, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rb = nil
	c.drained = err == nil && errno == 0 && n > 0 && n < len(b)
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readSys is one read system call into c.rb; false: wait for readiness,
// then call again.
func (c *rawConn) readSys(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rb[0])), uintptr(len(c.rb)))
		switch e {
		case 0:
			c.rn = int(r)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			c.eagain++
			return false
		default:
			c.rerr = e
			return true
		}
	}
}

// waitRead waits for the netpoller's read readiness record (see rawConn).
func (c *rawConn) waitRead() error {
	c.code = pollNoError
	err := c.rc.Control(c.waitFn)
	code := c.code
	switch {
	case err != nil:
		return c.opError("read", err)
	case code == pollErrClosing:
		return c.opError("read", net.ErrClosed)
	case code == pollErrTimeout:
		return c.opError("read", os.ErrDeadlineExceeded)
	}
	return nil // ready, or not pollable: the read finds out
}

func (c *rawConn) waitSys(uintptr) { c.code = runtime_pollWait(c.pd, 'r') }

func (c *rawConn) write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.wb, c.wn, c.werr = b, 0, 0
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werr
	c.wb = nil
	if n > 0 && !c.wrote.Load() {
		c.wrote.Store(true)
	}
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// writeSys writes the rest of c.wb; false: wait until writable, then call
// again.
func (c *rawConn) writeSys(fd uintptr) bool {
	for c.wn < len(c.wb) {
		p := c.wb[c.wn:]
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			c.wn += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// opError shapes errors like *net.TCPConn's: a *net.OpError around the
// cause, whose Timeout() tells a deadline.
func (c *rawConn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err // RawConn says "raw-read"; name the operation as net does
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.tc.LocalAddr(), Addr: c.tc.RemoteAddr(), Err: err}
}

// The runtime's answers to runtime_pollWait (runtime/netpoll.go).
const (
	pollNoError    = 0
	pollErrClosing = 1
	pollErrTimeout = 2
)

// runtime_pollWait parks until the poll descriptor is ready for mode
// ('r' or 'w'), its deadline passes or it is closed. It is the function
// internal/poll waits with; the runtime exports it under that name.
//
//go:linkname runtime_pollWait internal/poll.runtime_pollWait
func runtime_pollWait(pd uintptr, mode int) int

// pollFD mirrors the head of internal/poll.FD, which is the head of
// net.netFD, which a *net.TCPConn points to first (go1.26).
type pollFD struct {
	_     struct{ state, sema uint64 }    // fdmu
	sysfd int                             // Sysfd
	_     struct{ iovecs unsafe.Pointer } // SysFile
	pd    *runtimePollDesc                // pd.runtimeCtx
}

// runtimePollDesc mirrors the head of the runtime's pollDesc.
type runtimePollDesc struct {
	_  unsafe.Pointer // link
	fd uintptr
}

// pollDescOf returns tc's poll descriptor, or 0 when the layout above is
// not the one of the Go this was built with: both the descriptor number
// in poll.FD and the one the runtime's pollDesc records must be tc's.
func pollDescOf(tc *net.TCPConn, rc syscall.RawConn) uintptr {
	fd := -1
	if rc.Control(func(f uintptr) { fd = int(f) }) != nil || fd < 0 {
		return 0
	}
	p := *(**pollFD)(unsafe.Pointer(tc))
	if p == nil || p.sysfd != fd || p.pd == nil || p.pd.fd != uintptr(fd) {
		return 0
	}
	return uintptr(unsafe.Pointer(p.pd))
}
