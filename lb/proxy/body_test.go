package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http/httputil"
	"testing"

	"github.com/valyala/fasthttp"
)

// chunk encodes data in chunks of size step (at least 1), with an
// extension on every other size line, and a trailer.
func chunk(data []byte, step int) []byte {
	var b bytes.Buffer
	for i, rest := 0, data; len(rest) > 0; i++ {
		k := min(step, len(rest))
		ext := ""
		if i%2 == 1 {
			ext = " ;name=value"
		}
		fmt.Fprintf(&b, "%x%s\r\n%s\r\n", k, ext, rest[:k])
		rest = rest[k:]
	}
	b.WriteString("0\r\nX-Checksum: abc\r\n\r\n")
	return b.Bytes()
}

// decode reads a chunked body the way the round trip does: into resp up
// to max, then the rest as a stream. It returns the body, whether it
// outgrew max, and what is left on the reader after it.
func decode(t testing.TB, enc []byte, max int) (body []byte, outgrown bool, after []byte, err error) {
	br := bufio.NewReaderSize(bytes.NewReader(enc), 64) // small: chunks span many fills
	var resp fasthttp.Response
	cb := chunkedBody{br: br}
	outgrown, err = cb.readInto(&resp, max)
	if err != nil {
		return nil, false, nil, err
	}
	body = append(body, resp.Body()...)
	if outgrown {
		rest, err := io.ReadAll(&cb)
		if err != nil {
			return nil, true, nil, err
		}
		body = append(body, rest...)
	}
	if !cb.finished() {
		t.Fatal("decoded without reading to the end")
	}
	after, _ = io.ReadAll(br)
	return body, outgrown, after, nil
}

func TestChunkedBody(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100)
	for _, step := range []int{1, 7, 16, 999, 1000, 5000} {
		for _, max := range []int{0, 10, 999, 1000} {
			body, outgrown, after, err := decode(t, append(chunk(data, step), "NEXT"...), max)
			if err != nil || !bytes.Equal(body, data) || outgrown != (max > 0 && max < len(data)) || string(after) != "NEXT" {
				t.Errorf("step %d, max %d: %d bytes, outgrown %v, then %q, %v", step, max, len(body), outgrown, after, err)
			}
		}
	}
	// The standard library's encoder agrees.
	var enc bytes.Buffer
	w := httputil.NewChunkedWriter(&enc)
	_, _ = w.Write(data[:300])
	_, _ = w.Write(data[300:])
	_ = w.Close()
	enc.WriteString("\r\n")
	if body, _, _, err := decode(t, enc.Bytes(), 0); err != nil || !bytes.Equal(body, data) {
		t.Errorf("httputil's encoding: %d bytes, %v", len(body), err)
	}
	for _, bad := range []string{
		"", "zz\r\nab\r\n0\r\n\r\n", "\r\n", "2\r\nabc\r\n0\r\n\r\n", "2\r\nab", "2\r\nab\r\n0\r\n",
		"ffffffffffffffffff\r\n", "2;\rx\r\nab\r\n0\r\n\r\n", "2 x\r\nab\r\n0\r\n\r\n",
	} {
		if _, _, _, err := decode(t, []byte(bad), 0); err == nil {
			t.Errorf("%q: decoded without error", bad)
		}
	}
}

// FuzzChunked: any input decodes or fails without panicking, never yields
// more bytes than it holds, and any data encoded in any chunk size comes
// back the same, buffered or streamed.
func FuzzChunked(f *testing.F) {
	f.Add([]byte("hello world"), uint8(3), uint16(5), []byte("5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte(""), uint8(0), uint16(0), []byte("1;a=b\r\nx\r\n0\r\nT: v\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte, step uint8, max uint16, raw []byte) {
		body, _, _, err := decode(t, chunk(data, int(step)+1), int(max))
		if err != nil || !bytes.Equal(body, data) {
			t.Fatalf("%d bytes in chunks of %d, max %d: got %d bytes, %v", len(data), int(step)+1, max, len(body), err)
		}
		if body, _, _, err := decode(t, raw, int(max)); err == nil && len(body) > len(raw) {
			t.Fatalf("%q decoded to %d bytes", raw, len(body))
		}
	})
}
