package proxy

import (
	"errors"
	"os"
	"time"
)

// Lazy deadlines. fasthttp sets four to five socket deadlines per request
// (idle, read and write on the client's connection, write and read on
// the gateway's), each a clock read, a runtime timer update and two locks
// of the descriptor: 3 % of the balancer's CPU under load. Nearly all of
// them move a deadline later, which can wait. The rules:
//
//   - The runtime's deadline ("armed") is never later than the one asked
//     ("want"); no timeout ever comes late.
//   - A deadline earlier than the armed one is armed at once (that is
//     how a past deadline interrupts a blocked read). A later one, or
//     none, is only recorded: with fasthttp's steadily moving deadlines
//     the runtime is told once per timeout period, not per request.
//   - When the armed deadline passes, the operation waiting on it gets a
//     timeout. If a later deadline was asked meanwhile, the runtime is
//     re-armed with it and the operation goes on; only a timeout at the
//     deadline asked reaches the caller.
type deadline struct {
	want, armed time.Time // zero: none
}

// SetDeadline sets the read and write deadlines (see above).
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline (see above).
func (c *Conn) SetReadDeadline(t time.Time) error { return c.setDeadline(&c.rd, t, false) }

// SetWriteDeadline sets the write deadline (see above).
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.setDeadline(&c.wd, t, true) }

func (c *Conn) setDeadline(d *deadline, t time.Time, write bool) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	d.want = t
	if t.IsZero() || (!d.armed.IsZero() && !t.Before(d.armed)) {
		return nil // none or later: recorded only
	}
	d.armed = t
	return c.arm(t, write)
}

func (c *Conn) arm(t time.Time, write bool) error {
	if write {
		return c.TCPConn.SetWriteDeadline(t)
	}
	return c.TCPConn.SetReadDeadline(t)
}

// expired reports whether err, from a read (write false) or a write,
// stands: true unless it is a timeout at an armed deadline earlier than
// the one asked, in which case the runtime is re-armed with the one asked
// and the caller tries again.
func (c *Conn) expired(err error, write bool) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	d := &c.rd
	if write {
		d = &c.wd
	}
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if d.want.Equal(d.armed) || (!d.want.IsZero() && !d.want.After(time.Now())) {
		return true
	}
	d.armed = d.want
	c.rearms++
	return c.arm(d.want, write) != nil
}
