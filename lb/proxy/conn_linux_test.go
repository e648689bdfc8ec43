package proxy

import (
	"errors"
	"io"
	"testing"
	"time"
)

// The poll descriptor is found on the Go this is built with: if a Go
// release moves the fields pollFD mirrors, this fails (and reads fall
// back to reading first, which is correct but slower).
func TestPollDescFound(t *testing.T) {
	c, _ := connPair(t)
	if c.raw.pd == 0 {
		t.Fatal("poll descriptor not found: update pollFD to this Go's internal/poll.FD")
	}
}

// In a request/answer exchange the reply is never there right after the
// request is written. Reads wait for the netpoller's readiness record
// instead of asking the kernel first, so next to no read finds nothing,
// and every byte still arrives (no readiness is lost).
func TestConnWaitFirst(t *testing.T) {
	c, peer := connPair(t)
	go func() { _, _ = io.Copy(peer, peer) }() // echo
	const rounds = 2000
	msg := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	buf := make([]byte, 4096)
	for i := range rounds {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := 0
		for got < len(msg) {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			got += n
		}
	}
	// A stale record (the echo read before its event was consumed) costs
	// one EAGAIN; reading first would cost one nearly every round.
	if c.raw.eagain > rounds/10 {
		t.Fatalf("%d of %d reads found nothing; waiting first should make that rare", c.raw.eagain, rounds)
	}
	t.Logf("%d rounds, %d reads found nothing", rounds, c.raw.eagain)
}

// A peer that sends its last bytes and closes at once: the read that gets
// those bytes is short, and the FIN behind them raised its event before
// it. The next read must see the end of the stream at once, not wait for
// an event that already came (until the deadline). Both when the bytes
// answer a write of ours and when they continue an answer.
func TestConnEOFBehindShortRead(t *testing.T) {
	for _, wrote := range []bool{false, true} {
		c, peer := connPair(t)
		go func() {
			if wrote {
				_, _ = io.ReadFull(peer, make([]byte, 3))
			}
			_, _ = peer.Write([]byte("the last bytes"))
			_ = peer.Close()
		}()
		if wrote {
			if _, err := c.Write([]byte("GET")); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		got := 0
		var err error
		for err == nil {
			var n int
			n, err = c.Read(buf)
			got += n
		}
		if !errors.Is(err, io.EOF) || got != len("the last bytes") {
			t.Errorf("after a write: %v: read %d bytes, then %v; want all 14, then EOF", wrote, got, err)
		}
	}
}
