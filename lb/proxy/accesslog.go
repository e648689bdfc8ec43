package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/gwnomad/gwnomad/lb/balancer"
)

// AccessLog writes one JSON object a line, e.g.
//
//	{"time":"2025-01-02T03:04:05.678Z","remote":"10.1.2.3","method":"GET","host":"gw.am.wso2.com","uri":"/pizzashack/1.0.0/menu","proto":"HTTP/1.1","status":200,"bytes":1024,"duration_ms":0.512,"route":"gw.am.wso2.com","upstream":"10.0.0.7:8280","tries":1}
//
// Rules:
//
//   - A request never waits for the log's file. Its line is built without
//     allocation and appended to a buffer in memory; Run's writer hands
//     that buffer to the file when it holds flushBytes or a second has
//     passed, while requests fill a second buffer.
//   - A file that does not keep up (a stalled disk, stdout into a pipe that
//     nobody reads) holds up the writer alone. At most maxBacklog bytes of
//     lines wait for it; lines beyond are dropped and counted (Dropped, the
//     metric gwnomad_lb_access_log_dropped_total). Run warns in the log
//     while lines are being dropped, at most every warnEvery, also while
//     the writer is stuck. A slow log never slows or stops the requests.
type AccessLog struct {
	out    io.Writer
	log    *slog.Logger // nil: no warnings
	redact [][]byte     // query parameters whose values are not logged

	// kick wakes Run when buf reaches flushBytes.
	kick chan struct{}

	mu  sync.Mutex // guards buf and the stamp
	buf []byte     // lines not yet handed to out
	// The timestamp up to the seconds ("2006-01-02T15:04:05") changes once
	// a second: it is formatted then and reused.
	stampSec int64
	stamp    [32]byte
	stampLen int

	dropped atomic.Uint64
	failed  atomic.Uint64 // writes to out that failed

	wmu   sync.Mutex // one Flush at a time; guards spare and out
	spare []byte     // buf's partner, empty while not in use

	warnMu   sync.Mutex // guards what follows
	warned   time.Time
	reported [2]uint64 // dropped and failed at the last warning

	maxBacklog int
}

const (
	flushBytes = 64 << 10 // the writer writes when this much is buffered
	maxBacklog = 4 << 20  // lines waiting for the file, at most
	warnEvery  = 10 * time.Second
	// finalFlushWait bounds the last write at the end of Run: a file that
	// never takes it must not keep the process from exiting.
	finalFlushWait = 5 * time.Second
)

// NewAccessLog writes to w; warnings about w (lines dropped, failed writes)
// go to logger (nil: none). The values of the query parameters named in
// redact (compared as decoded, ignoring case: appendURI) are written as
// REDACTED.
func NewAccessLog(w io.Writer, logger *slog.Logger, redact ...string) *AccessLog {
	names := make([][]byte, len(redact))
	for i, n := range redact {
		names[i] = []byte(n)
	}
	return &AccessLog{out: w, log: logger, redact: names, kick: make(chan struct{}, 1),
		buf: make([]byte, 0, 2*flushBytes), spare: make([]byte, 0, 2*flushBytes), maxBacklog: maxBacklog}
}

// Run writes the buffered lines every second and whenever flushBytes are
// buffered, and warns about dropped lines and failed writes, until ctx
// ends; then it writes once more, waiting for that write at most
// finalFlushWait (a write that never returns is left to the process's
// exit). The writes are made by a goroutine of Run's, so that a stuck
// write does not stop the warnings.
func (l *AccessLog) Run(ctx context.Context) {
	flush := make(chan struct{}, 1)
	written := make(chan struct{})
	go func() { // the writer
		defer close(written)
		for range flush {
			l.Flush()
		}
		l.Flush() // what came after the last signal
	}()
	ask := func() {
		select {
		case flush <- struct{}{}:
		default: // the writer is already asked
		}
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			close(flush)
			select {
			case <-written:
			case <-time.After(finalFlushWait):
				if l.log != nil {
					l.log.Warn("access log: the last lines were not written in time; they are lost", "wait", finalFlushWait)
				}
			}
			l.warn()
			return
		case <-t.C:
			l.warn()
			ask()
		case <-l.kick:
			ask()
		}
	}
}

// Flush writes the lines buffered so far and returns when out has taken
// them (or refused them: they are then lost, and counted for Run's next
// warning). Requests go on filling the other buffer meanwhile.
func (l *AccessLog) Flush() {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.flushLocked()
}

// flushLocked is Flush with l.wmu held.
func (l *AccessLog) flushLocked() {
	l.mu.Lock()
	b := l.buf
	l.buf = l.spare[:0]
	l.mu.Unlock()
	if len(b) > 0 {
		if _, err := l.out.Write(b); err != nil {
			l.failed.Add(1)
		}
	}
	l.spare = b[:0]
}

// SetOutput writes the lines buffered so far to the current writer, then
// makes w the writer, and returns the one it replaced (for log rotation:
// the caller closes it).
func (l *AccessLog) SetOutput(w io.Writer) io.Writer {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.flushLocked()
	old := l.out
	l.out = w
	return old
}

// warn logs how many lines were dropped and writes failed since the last
// warning, if any, at most every warnEvery.
func (l *AccessLog) warn() {
	l.warnMu.Lock()
	defer l.warnMu.Unlock()
	now := time.Now()
	d, f := l.dropped.Load(), l.failed.Load()
	if l.log == nil || [2]uint64{d, f} == l.reported || now.Sub(l.warned) < warnEvery {
		return
	}
	l.log.Warn("access log: lines lost: its file does not keep up or refuses writes",
		"dropped_lines", d-l.reported[0], "failed_writes", f-l.reported[1], "backlog_bytes", l.maxBacklog)
	l.warned, l.reported = now, [2]uint64{d, f}
}

// Dropped is the number of lines dropped since the start because the
// backlog was full.
func (l *AccessLog) Dropped() uint64 { return l.dropped.Load() }

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
	b = appendURI(b, e.URI, l.redact)
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
	if len(l.buf)+len(b)+len(l.stamp) > l.maxBacklog {
		l.mu.Unlock()
		l.dropped.Add(1)
	} else {
		l.buf = append(l.buf, b[:stampAt]...)
		l.buf = l.appendStamp(l.buf, e.Start)
		l.buf = append(l.buf, b[stampAt:]...)
		full := len(l.buf) >= flushBytes
		l.mu.Unlock()
		if full {
			select {
			case l.kick <- struct{}{}:
			default: // Run is already asked
			}
		}
	}
	*bp = b
	linePool.Put(bp)
}

// appendStamp appends "2006-01-02T15:04:05" of t (UTC) to buf; l.mu is
// held. The cached seconds are reformatted only when t's second differs.
func (l *AccessLog) appendStamp(buf []byte, t time.Time) []byte {
	if sec := t.Unix(); sec != l.stampSec || l.stampLen == 0 {
		l.stampLen = len(t.UTC().AppendFormat(l.stamp[:0], "2006-01-02T15:04:05"))
		l.stampSec = sec
	}
	return append(buf, l.stamp[:l.stampLen]...)
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

// appendURI appends uri as a JSON string, with the value of every query
// parameter named in redact written as REDACTED. A name is compared as
// the gateway reads it, not as sent: percent-escapes and '+' decoded
// (repeatedly, since a chain of proxies may decode more than once) and
// case ignored, so that "a%70ikey", "APIKEY" or "api%4Bey" are apikey.
// Parameters are separated by '&' and by ';' (which some servers take as
// '&'); each one of a repeated name is redacted. What is not redacted is
// kept as sent.
func appendURI(b, uri []byte, redact [][]byte) []byte {
	q := bytes.IndexByte(uri, '?')
	if q < 0 || len(redact) == 0 {
		return appendJSON(b, uri)
	}
	b = appendJSONChars(append(b, '"'), uri[:q+1])
	for rest := uri[q+1:]; ; {
		end := bytes.IndexAny(rest, "&;")
		param := rest
		if end >= 0 {
			param = rest[:end]
		}
		if name, _, ok := bytes.Cut(param, []byte{'='}); ok && named(name, redact) {
			b = append(appendJSONChars(b, name), "=REDACTED"...)
		} else {
			b = appendJSONChars(b, param)
		}
		if end < 0 {
			return append(b, '"')
		}
		b, rest = append(b, rest[end]), rest[end+1:]
	}
}

// maxUnescapes bounds how many times a parameter name is decoded.
const maxUnescapes = 4

// named tells whether name, decoded as a query parameter's name, is one
// of names (ignoring case).
func named(name []byte, names [][]byte) bool {
	var arr [64]byte // longer names (rare) make append allocate
	dec := name
	for range maxUnescapes {
		if bytes.IndexByte(dec, '%') < 0 && bytes.IndexByte(dec, '+') < 0 {
			break
		}
		dec = unescapeName(arr[:0], dec)
	}
	for _, n := range names {
		if bytes.EqualFold(dec, n) {
			return true
		}
	}
	return false
}

// unescapeName appends s to dst with "%XX" decoded and '+' as a space,
// as a query is decoded; a '%' not followed by two hex digits stays.
// dst may be s[:0]: each byte written consumes at least one read.
func unescapeName(dst, s []byte) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			c = ' '
		case c == '%' && i+2 < len(s) && isEscHex(s[i+1]) && isEscHex(s[i+2]):
			c = unhexEsc(s[i+1])<<4 | unhexEsc(s[i+2])
			i += 2
		}
		dst = append(dst, c)
	}
	return dst
}

func isEscHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhexEsc(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// appendJSON appends s as a JSON string (invalid UTF-8 becomes U+FFFD).
func appendJSON(b, s []byte) []byte {
	return append(appendJSONChars(append(b, '"'), s), '"')
}

// appendJSONChars appends s escaped for a JSON string, without quotes.
func appendJSONChars(b, s []byte) []byte {
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
	return b
}

// logRejected writes the access log line of a request that fasthttp
// refused before the handler (NewFastServer's ErrorHandler: 400, 408,
// 413, 431), with what was parsed of it. fasthttp resets a header it
// could not parse, so such a line has no method, host or URI; a header
// that was parsed (a body too large, a bad URI) gives them, redacted as
// any other line. err is logged without the bytes it quotes.
func (p *Proxy) logRejected(ctx *fasthttp.RequestCtx, err error) {
	if p.opt.AccessLog == nil {
		return
	}
	e := Entry{
		Start: time.Now(), Remote: remoteAddr(ctx.RemoteAddr()),
		Status: ctx.Response.StatusCode(), Bytes: len(ctx.Response.Body()),
	}
	if h := &ctx.Request.Header; h.Len() > 0 { // else reset: Method() and RequestURI() would say "GET /"
		e.Method, e.Host, e.URI, e.Proto = h.Method(), h.Host(), h.RequestURI(), h.Protocol()
	}
	if err != nil {
		e.Err = errors.New(scrubClientBytes(err.Error()))
	}
	p.opt.AccessLog.Write(&e)
}

// scrubClientBytes removes from a message of fasthttp's (an error, a log
// line) the bytes of the peer that it quotes, which may hold credentials
// (Authorization, Cookie, ?apikey=): the buffer dump from "contents:" on
// that its header errors end with, and every quoted string (%q: a request
// line, a header name or value, the buffer) but those that are only an IP
// address and port (the connection's ends, which its error lines name).
// A quoted string becomes "…", one cut short drops what follows.
func scrubClientBytes(msg string) string {
	if i := strings.Index(msg, "contents:"); i >= 0 {
		msg = strings.TrimRight(msg[:i], ", ")
	}
	if strings.IndexByte(msg, '"') < 0 {
		return msg
	}
	var b strings.Builder
	b.Grow(len(msg))
	for {
		i := strings.IndexByte(msg, '"')
		if i < 0 {
			b.WriteString(msg)
			return b.String()
		}
		b.WriteString(msg[:i])
		j := closingQuote(msg, i+1)
		if j < 0 {
			b.WriteString(`"…"`)
			return b.String()
		}
		if u, err := strconv.Unquote(msg[i : j+1]); err == nil && isAddrPort(u) {
			b.WriteString(msg[i : j+1])
		} else {
			b.WriteString(`"…"`)
		}
		msg = msg[j+1:]
	}
}

// closingQuote is the index of the '"' that ends a Go-quoted string whose
// text starts at from (after its opening quote), or -1.
func closingQuote(s string, from int) int {
	for k := from; k < len(s); k++ {
		switch s[k] {
		case '\\':
			k++ // the escaped byte
		case '"':
			return k
		}
	}
	return -1
}

func isAddrPort(s string) bool {
	_, err := netip.ParseAddrPort(s)
	return err == nil
}
