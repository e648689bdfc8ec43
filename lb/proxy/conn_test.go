package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// connPair returns a wrapped server side and a plain client side of one
// loopback TCP connection.
func connPair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	wl := Listener{Listener: ln}
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := wl.Accept(); ch <- res{c, err} }()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	c, ok := r.c.(*Conn)
	if !ok {
		t.Fatalf("Listener.Accept returned %T, want *Conn", r.c)
	}
	t.Cleanup(func() { c.Close(); client.Close() })
	return c, client
}

// A one-byte read (fasthttp's wait for the next request) takes what the
// socket has; the rest comes out of the read-ahead buffer, in order, and
// the buffer is given back once drained.
func TestConnReadAhead(t *testing.T) {
	c, client := connPair(t)
	msg := []byte("GET /pizzashack/1.0.0/menu HTTP/1.1\r\nHost: a\r\n\r\n")
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	var got []byte
	one := make([]byte, 1)
	n, err := c.Read(one)
	if err != nil || n != 1 {
		t.Fatalf("Read(1) = %d, %v", n, err)
	}
	got = append(got, one[:n]...)
	// The whole message arrived in one segment (loopback delivers it
	// before Write returns): one read took all of it.
	if c.Buffered() != len(msg)-1 {
		t.Fatalf("after Read(1): %d bytes read ahead, want %d", c.Buffered(), len(msg)-1)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < len(msg) {
		if time.Now().After(deadline) {
			t.Fatalf("read %q, want %q", got, msg)
		}
		buf := make([]byte, 7) // small reads keep going through the read-ahead
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("read %q, want %q", got, msg)
	}
	if c.ra != nil || c.Buffered() != 0 {
		t.Fatalf("read-ahead buffer kept after draining (%d bytes buffered)", c.Buffered())
	}
}

// io.Copy from a Conn (the upgrade relay) carries the read-ahead bytes
// too, not only what is left in the socket.
func TestConnCopyKeepsReadAhead(t *testing.T) {
	c, client := connPair(t)
	msg := []byte("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nframe")
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if c.Buffered() == 0 {
		t.Fatal("nothing read ahead")
	}
	client.(*net.TCPConn).CloseWrite()
	var out bytes.Buffer
	if _, err := io.Copy(&out, c); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), msg[1:]) {
		t.Fatalf("copied %q, want %q", out.Bytes(), msg[1:])
	}
}

// Large reads and writes (beyond the socket buffers, so the writer meets
// EAGAIN and waits for readiness) carry every byte.
func TestConnLargeTransfer(t *testing.T) {
	c, client := connPair(t)
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	errc := make(chan error, 1)
	go func() {
		n, err := c.Write(data)
		if err == nil && n != len(data) {
			err = io.ErrShortWrite
		}
		errc <- err
	}()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("client read other bytes than written")
	}
	go func() { _, err := client.Write(data); errc <- err }()
	got2 := make([]byte, 0, len(data))
	buf := make([]byte, 64<<10)
	for len(got2) < len(data) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got2 = append(got2, buf[:n]...)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got2, data) {
		t.Fatal("Conn read other bytes than written")
	}
}

// Deadlines, the peer's close and a local Close end reads with the errors
// net.TCPConn gives, which fasthttp tells apart.
func TestConnErrors(t *testing.T) {
	t.Run("deadline", func(t *testing.T) {
		c, _ := connPair(t)
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read past the deadline: %v, want a timeout", err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" {
			t.Fatalf("error %#v, want a *net.OpError for read", err)
		}
	})
	t.Run("eof", func(t *testing.T) {
		c, client := connPair(t)
		client.Close()
		for _, size := range []int{1, 4096} {
			if n, err := c.Read(make([]byte, size)); n != 0 || err != io.EOF {
				t.Fatalf("Read(%d) after the peer closed = %d, %v; want 0, EOF", size, n, err)
			}
		}
	})
	t.Run("close", func(t *testing.T) {
		c, _ := connPair(t)
		errc := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 1)); errc <- err }()
		// The read is parked in the netpoller (or not yet started); Close
		// must end it either way.
		c.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Read on a closed Conn: %v, want net.ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Read did not return after Close")
		}
	})
	t.Run("reset", func(t *testing.T) {
		c, client := connPair(t)
		_ = client.(*net.TCPConn).SetLinger(0)
		client.Close() // RST
		var err error
		deadline := time.Now().Add(10 * time.Second)
		for err == nil && time.Now().Before(deadline) {
			_, err = c.Write([]byte("x"))
		}
		if err == nil {
			t.Fatal("writes to a reset connection kept succeeding")
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "write" {
			t.Fatalf("error %v, want a *net.OpError for write", err)
		}
	})
}

// wrap leaves connections that are not TCP alone.
func TestWrapNonTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if wrap(a) != a {
		t.Fatal("wrap changed a non-TCP connection")
	}
}

func BenchmarkConnReadAhead(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(c, c)
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	c := wrap(raw)
	defer c.Close()
	msg := bytes.Repeat([]byte("x"), 100)
	one, rest := make([]byte, 1), make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		n, err := c.Read(one)
		for n < len(msg) && err == nil {
			var k int
			k, err = c.Read(rest)
			n += k
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// Reads from two goroutines at once are serialized, as net.Conn's are
// (the runtime allows one waiter per poll descriptor), and lose nothing.
func TestConnConcurrentReads(t *testing.T) {
	c, client := connPair(t)
	const total = 1 << 16
	got := make(chan int, 2)
	for range 2 {
		go func() {
			n := 0
			buf := make([]byte, 1000)
			for {
				k, err := c.Read(buf)
				n += k
				if err != nil {
					got <- n
					return
				}
			}
		}()
	}
	chunk := make([]byte, 64)
	for sent := 0; sent < total; sent += len(chunk) {
		if _, err := client.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	client.Close()
	if n := <-got + <-got; n != total {
		t.Fatalf("the readers got %d bytes, want %d", n, total)
	}
}
