package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

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
// redact (compared ignoring case) are written as REDACTED.
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
// parameter named in redact written as REDACTED.
func appendURI(b, uri []byte, redact [][]byte) []byte {
	q := bytes.IndexByte(uri, '?')
	if q < 0 || len(redact) == 0 {
		return appendJSON(b, uri)
	}
	b = appendJSONChars(append(b, '"'), uri[:q+1])
	for rest := uri[q+1:]; ; {
		param, next, more := bytes.Cut(rest, []byte{'&'})
		if name, _, ok := bytes.Cut(param, []byte{'='}); ok && named(name, redact) {
			b = append(appendJSONChars(b, name), "=REDACTED"...)
		} else {
			b = appendJSONChars(b, param)
		}
		if !more {
			return append(b, '"')
		}
		b, rest = append(b, '&'), next
	}
}

func named(name []byte, names [][]byte) bool {
	for _, n := range names {
		if bytes.EqualFold(name, n) {
			return true
		}
	}
	return false
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
