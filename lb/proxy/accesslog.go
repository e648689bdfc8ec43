package proxy

import (
	"bufio"
	"context"
	"io"
	"net/netip"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gwnomad/gwnomad/lb/balancer"
)

// AccessLog writes one JSON object a line, e.g.
//
//	{"time":"2025-01-02T03:04:05.678Z","remote":"10.1.2.3","method":"GET","host":"gw.am.wso2.com","uri":"/pizzashack/1.0.0/menu","proto":"HTTP/1.1","status":200,"bytes":1024,"duration_ms":0.512,"route":"gw.am.wso2.com","upstream":"10.0.0.7:8280","tries":1}
//
// Lines are built without allocation into pooled buffers and written
// through a buffer that Run flushes every second (and at its end), so the
// log costs little on the request path.
type AccessLog struct {
	mu  sync.Mutex
	w   *bufio.Writer
	out io.Writer
}

// NewAccessLog writes to w.
func NewAccessLog(w io.Writer) *AccessLog {
	return &AccessLog{w: bufio.NewWriterSize(w, 64<<10), out: w}
}

// Run flushes every second until ctx ends, then once more.
func (l *AccessLog) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.Flush()
			return
		case <-t.C:
			l.Flush()
		}
	}
}

// Flush writes what is buffered.
func (l *AccessLog) Flush() {
	l.mu.Lock()
	_ = l.w.Flush()
	l.mu.Unlock()
}

// Entry is one request. Byte slices are only read during Write.
type Entry struct {
	Start                    time.Time
	Remote                   netip.Addr
	Method, Host, URI, Proto []byte
	Status, Bytes            int
	Route                    *balancer.Route
	Upstream                 *balancer.Upstream // nil: none tried
	Tries                    int
	Err                      error
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Write logs e.
func (l *AccessLog) Write(e *Entry) {
	bp := linePool.Get().(*[]byte)
	b := (*bp)[:0]
	b = append(b, `{"time":"`...)
	b = e.Start.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","remote":"`...)
	if e.Remote.IsValid() {
		b = e.Remote.AppendTo(b)
	}
	b = append(b, `","method":`...)
	b = appendJSON(b, e.Method)
	b = append(b, `,"host":`...)
	b = appendJSON(b, e.Host)
	b = append(b, `,"uri":`...)
	b = appendJSON(b, e.URI)
	b = append(b, `,"proto":`...)
	b = appendJSON(b, e.Proto)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, int64(e.Bytes), 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, float64(time.Since(e.Start).Microseconds())/1000, 'f', 3, 64)
	if e.Route != nil {
		b = append(b, `,"route":`...)
		b = appendJSONString(b, e.Route.Name)
	}
	if e.Upstream != nil {
		b = append(b, `,"upstream":`...)
		b = appendJSONString(b, e.Upstream.Addr)
	}
	if e.Route != nil {
		b = append(b, `,"tries":`...)
		b = strconv.AppendInt(b, int64(e.Tries), 10)
	}
	if e.Err != nil {
		b = append(b, `,"error":`...)
		b = appendJSONString(b, e.Err.Error())
	}
	b = append(b, "}\n"...)
	l.mu.Lock()
	_, _ = l.w.Write(b)
	l.mu.Unlock()
	*bp = b
	linePool.Put(bp)
}

func appendJSONString(b []byte, s string) []byte {
	return appendJSON(b, []byte(s)) // no copy: the conversion does not escape
}

const hexDigits = "0123456789abcdef"

// appendJSON appends s as a JSON string (invalid UTF-8 becomes U+FFFD).
func appendJSON(b, s []byte) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
