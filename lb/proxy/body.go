package proxy

import (
	"bufio"
	"errors"
	"io"

	"github.com/valyala/fasthttp"
)

// The bodies of gateways' answers, read off the connection: of a known
// length (fixedBody), chunked (chunkedBody), or until the gateway closes
// the connection (untilCloseBody). Each is an io.Reader for a streamed
// answer and tells when it was read to its end (bodyReader); the last two
// can also be read into a Response up to a size (readInto), then streamed
// on if they are larger.

// fixedBody is a body of known length.
type fixedBody struct {
	br   *bufio.Reader
	left int64 // bytes not read yet
}

func (b *fixedBody) finished() bool { return b.left == 0 }

func (b *fixedBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF // the gateway closed before the end
	}
	return n, err
}

// untilCloseBody is a body that ends when the gateway closes the
// connection (no length, no chunks: HTTP/1.0 style).
type untilCloseBody struct {
	br   *bufio.Reader
	done bool
}

func (b *untilCloseBody) finished() bool { return b.done }

func (b *untilCloseBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.br.Read(p)
	if err == io.EOF {
		b.done = true
	}
	return n, err
}

// readInto appends the body to resp's until the gateway closes (false)
// or until the body would pass max bytes (true: resp holds what was read,
// b the rest); max 0: no limit.
func (b *untilCloseBody) readInto(resp *fasthttp.Response, max int) (outgrown bool, err error) {
	for {
		if b.br.Buffered() == 0 {
			if _, err := b.br.Peek(1); err == io.EOF {
				b.done = true
				return false, nil
			} else if err != nil {
				return false, err
			}
		}
		k := b.br.Buffered()
		if max > 0 && len(resp.Body())+k > max {
			return true, nil
		}
		p, _ := b.br.Peek(k)
		resp.AppendBody(p)
		_, _ = b.br.Discard(k)
	}
}

// chunkedBody decodes a chunked answer from a gateway (RFC 9112 section
// 7.1): chunks, each a size in hex (extensions after ';' ignored), CRLF,
// that many bytes, CRLF; then a chunk of size 0 and trailer fields up to
// an empty line. The trailer is read and dropped: clients get the body
// with a length or chunked afresh, without it, as fasthttp's own reading
// does.
type chunkedBody struct {
	br     *bufio.Reader
	left   int64 // bytes of the current chunk not read yet
	inData bool  // a chunk's data was begun: its CRLF comes before the next size
	done   bool  // the last chunk and the trailer were read
}

var (
	errChunkSize    = errors.New("chunked answer: malformed chunk size")
	errChunkEnd     = errors.New("chunked answer: no CRLF after a chunk")
	errTrailerLines = errors.New("chunked answer: more than 100 trailer lines")
)

// maxChunkSize bounds one chunk's size (16 hex digits could overflow).
const maxChunkSize = 1 << 62

func (c *chunkedBody) finished() bool { return c.done }

// Read implements io.Reader on the decoded body. io.EOF comes once the
// trailer was read, so the connection then holds nothing of this answer.
func (c *chunkedBody) Read(p []byte) (int, error) {
	for c.left == 0 {
		if c.done {
			return 0, io.EOF
		}
		if err := c.next(); err != nil {
			return 0, err
		}
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.br.Read(p)
	c.left -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// readInto appends the body to resp's until its end (false) or until the
// body would pass max bytes (true: resp holds what was read, c the rest);
// max 0: no limit. It copies from the reader's buffer, without a buffer of
// its own.
func (c *chunkedBody) readInto(resp *fasthttp.Response, max int) (outgrown bool, err error) {
	for !c.done {
		if c.left == 0 {
			if err := c.next(); err != nil {
				return false, err
			}
			continue
		}
		k := int(min(c.left, int64(c.br.Size())))
		if max > 0 && len(resp.Body())+k > max {
			return true, nil
		}
		p, err := c.br.Peek(k)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return false, err
		}
		resp.AppendBody(p)
		_, _ = c.br.Discard(k)
		c.left -= int64(k)
	}
	return false, nil
}

// next reads up to the next chunk's data: the CRLF that ends the chunk
// before, the size line, and after the last chunk the trailer.
func (c *chunkedBody) next() error {
	if c.inData {
		for _, want := range []byte("\r\n") {
			b, err := c.br.ReadByte()
			if err != nil {
				return unexpected(err)
			}
			if b != want {
				return errChunkEnd
			}
		}
		c.inData = false
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return unexpected(err)
	}
	size, ok := parseChunkSize(line)
	if !ok {
		return errChunkSize
	}
	if size == 0 {
		if err := c.trailer(); err != nil {
			return err
		}
		c.done = true
		return nil
	}
	c.left, c.inData = size, true
	return nil
}

// trailer reads the trailer fields and the empty line that ends them.
func (c *chunkedBody) trailer() error {
	for range 100 {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return unexpected(err)
		}
		if string(line) == "\r\n" || string(line) == "\n" {
			return nil
		}
	}
	return errTrailerLines
}

// parseChunkSize reads a chunk-size line: hex digits, optional
// whitespace and ";extensions", then CRLF (or a bare LF).
func parseChunkSize(line []byte) (int64, bool) {
	line = line[:len(line)-1] // '\n'
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	var size int64
	digits := 0
	for i, b := range line {
		var d byte
		switch {
		case '0' <= b && b <= '9':
			d = b - '0'
		case 'a' <= b && b <= 'f':
			d = b - 'a' + 10
		case 'A' <= b && b <= 'F':
			d = b - 'A' + 10
		case b == ';' || b == ' ' || b == '\t':
			return size, digits > 0 && validChunkExt(line[i:])
		default:
			return 0, false
		}
		if size > (maxChunkSize-1)>>4 {
			return 0, false
		}
		size = size<<4 | int64(d)
		digits++
	}
	return size, digits > 0
}

// validChunkExt accepts what follows the size: whitespace, then nothing
// or ';' and extensions (not read further; no CR or LF inside).
func validChunkExt(rest []byte) bool {
	for i, b := range rest {
		switch b {
		case ' ', '\t':
		case ';':
			for _, e := range rest[i:] {
				if e == '\r' || e == '\n' {
					return false
				}
			}
			return true
		default:
			return false
		}
	}
	return true
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
