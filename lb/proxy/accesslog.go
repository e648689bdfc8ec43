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
	// The timestamp up to the seconds ("2006-01-02T15:04:05.") changes once
	// a second: it is formatted then and reused (under mu).
	stampSec int64
	stamp    [32]byte
	stampLen int
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
	Start time.Time
	// Duration is the request's time so far; 0: measured by Write.
	Duration                 time.Duration
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
	stampAt := len(b) // the seconds go here, under mu (appendStamp)
	b = append(b, `.000Z","remote":"`...)
	ms := e.Start.Nanosecond() / 1e6
	b[stampAt+1], b[stampAt+2], b[stampAt+3] = byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10)
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
	d := e.Duration
	if d == 0 {
		d = time.Since(e.Start)
	}
	b = appendMillis(b, d.Microseconds())
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
	l.appendStamp(b[:stampAt], e.Start)
	_, _ = l.w.Write(b[stampAt:])
	l.mu.Unlock()
	*bp = b
	linePool.Put(bp)
}

// appendStamp writes "2006-01-02T15:04:05" of t (UTC) to w before line
// (line ends where the seconds go); l.mu is held. The cached seconds are
// reformatted only when t's second differs.
func (l *AccessLog) appendStamp(head []byte, t time.Time) {
	if sec := t.Unix(); sec != l.stampSec || l.stampLen == 0 {
		l.stampLen = len(t.UTC().AppendFormat(l.stamp[:0], "2006-01-02T15:04:05"))
		l.stampSec = sec
	}
	_, _ = l.w.Write(head)
	_, _ = l.w.Write(l.stamp[:l.stampLen])
}

// appendMillis appends us microseconds as milliseconds with three decimals
// (what AppendFloat(us/1000, 'f', 3) gives, without the float).
func appendMillis(b []byte, us int64) []byte {
	if us < 0 {
		b = append(b, '-')
		us = -us
	}
	b = strconv.AppendInt(b, us/1000, 10)
	f := us % 1000
	return append(b, '.', byte('0'+f/100), byte('0'+f/10%10), byte('0'+f%10))
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
