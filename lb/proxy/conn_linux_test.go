package proxy

import (
	"io"
	"testing"
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
