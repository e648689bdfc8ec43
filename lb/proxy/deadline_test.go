package proxy

import (
	"errors"
	"os"
	"testing"
	"time"
)

func (c *Conn) rearmCount() int {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	return c.rearms
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A deadline moved later (or removed) is not armed at once, but a read
// never times out before the deadline asked: when the earlier armed one
// passes, the read re-arms and goes on waiting.
func TestLazyDeadlineLater(t *testing.T) {
	for _, later := range []struct {
		name string
		at   func() time.Time
	}{
		{"later", func() time.Time { return time.Now().Add(time.Hour) }},
		{"none", func() time.Time { return time.Time{} }},
	} {
		t.Run(later.name, func(t *testing.T) {
			c, client := connPair(t)
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			_ = c.SetReadDeadline(later.at())
			type res struct {
				n   int
				err error
			}
			done := make(chan res, 1)
			go func() { n, err := c.Read(make([]byte, 16)); done <- res{n, err} }()
			// The armed 20 ms deadline passes under the blocked read.
			waitFor(t, "the armed deadline to pass and be re-armed", func() bool { return c.rearmCount() > 0 })
			select {
			case r := <-done:
				t.Fatalf("Read returned before any data: %d, %v", r.n, r.err)
			default:
			}
			if _, err := client.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-done:
				if r.err != nil || r.n != 5 {
					t.Fatalf("Read = %d, %v; want the 5 bytes sent", r.n, r.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Read did not return the data")
			}
		})
	}
}

// A deadline moved earlier is armed at once; one in the past interrupts a
// blocked read, the way callers stop a reader.
func TestLazyDeadlineEarlier(t *testing.T) {
	t.Run("earlier", func(t *testing.T) {
		c, _ := connPair(t)
		_ = c.SetReadDeadline(time.Now().Add(time.Hour))
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		errc := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 1)); errc <- err }()
		select {
		case err := <-errc:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read: %v, want a timeout", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the earlier deadline did not end the read")
		}
	})
	t.Run("past interrupts", func(t *testing.T) {
		c, _ := connPair(t)
		_ = c.SetDeadline(time.Now().Add(time.Hour))
		errc := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 1)); errc <- err }()
		_ = c.SetReadDeadline(time.Now().Add(-time.Second))
		select {
		case err := <-errc:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read: %v, want a timeout", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a past deadline did not interrupt the read")
		}
		// A later deadline makes the connection usable again.
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read after a new deadline: %v, want its timeout", err)
		}
	})
}

// Writes follow the same rules: a write blocked on a full socket times
// out at the deadline asked, not at an earlier armed one.
func TestLazyDeadlineWrite(t *testing.T) {
	c, _ := connPair(t) // the peer never reads
	_ = c.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	_ = c.SetWriteDeadline(time.Now().Add(time.Hour))
	errc := make(chan error, 1)
	buf := make([]byte, 1<<20)
	go func() {
		for {
			if _, err := c.Write(buf); err != nil {
				errc <- err
				return
			}
		}
	}()
	waitFor(t, "the write's armed deadline to pass and be re-armed", func() bool { return c.rearmCount() > 0 })
	select {
	case err := <-errc:
		t.Fatalf("Write failed before the deadline asked: %v", err)
	default:
	}
	_ = c.SetWriteDeadline(time.Now().Add(-time.Second))
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write: %v, want a timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a past write deadline did not end the write")
	}
}

// Per request, fasthttp moves the deadlines later: none of those calls
// reaches the runtime.
func TestLazyDeadlineSteady(t *testing.T) {
	c, _ := connPair(t)
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	armed := c.rd.armed
	for range 100 {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	}
	if !c.rd.armed.Equal(armed) {
		t.Fatal("a later deadline was armed")
	}
}
