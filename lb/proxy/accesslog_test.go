package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/gwnomad/gwnomad/internal/testenv"
)

// stalledWriter takes nothing until released, as a stalled disk or a pipe
// that nobody reads.
type stalledWriter struct {
	release chan struct{}
	out     testenv.SyncBuffer
}

func (w *stalledWriter) Write(b []byte) (int, error) {
	<-w.release
	return w.out.Write(b)
}

// A log whose file takes nothing never holds up a request: lines beyond
// the backlog are dropped and counted, a warning says so while the file
// is still stuck, and once the file takes writes again the lines kept
// arrive whole.
func TestAccessLogNeverBlocksRequests(t *testing.T) {
	w := &stalledWriter{release: make(chan struct{})}
	var logged testenv.SyncBuffer
	l := NewAccessLog(w, slog.New(slog.NewTextHandler(&logged, nil)))
	l.maxBacklog = 2 * flushBytes
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { l.Run(ctx); close(ran) }()

	const n = 4000 // about 650 KiB of lines, 5 × the backlog
	wrote := make(chan struct{})
	go func() {
		for i := range n {
			l.Write(&Entry{Start: time.Now(), Method: []byte("GET"), URI: []byte("/menu?i=" + strings.Repeat("x", i%50)), Status: 200})
		}
		close(wrote)
	}()
	select {
	case <-wrote:
	case <-time.After(30 * time.Second):
		t.Fatal("Write blocked while the log's file took nothing")
	}
	d := l.Dropped()
	if d == 0 || d >= n {
		t.Fatalf("dropped %d of %d lines, want some but not all", d, n)
	}

	// Run warns while its writer is still stuck.
	testenv.WaitFor(t, 30*time.Second, "a warning about the dropped lines", func() error {
		if s := logged.String(); !strings.Contains(s, "lines lost") || !strings.Contains(s, "dropped_lines=") {
			return fmt.Errorf("log: %q", s)
		}
		return nil
	})

	close(w.release)
	l.Flush() // waits for Run's write in progress, then writes the rest
	cancel()
	<-ran
	out := w.out.String()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if uint64(len(lines)) != n-d {
		t.Errorf("%d lines written, want %d (%d written, %d dropped)", len(lines), n-d, n, d)
	}
	if len(out) > 2*l.maxBacklog {
		t.Errorf("%d bytes were held for the file, backlog is %d", len(out), l.maxBacklog)
	}
	for _, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil || m["status"] != 200.0 {
			t.Fatalf("line %q: %v", line, err)
		}
	}
}

// Run writes what was buffered when its context ends, and a full buffer
// without waiting for its ticker.
func TestAccessLogRunWrites(t *testing.T) {
	w := &stalledWriter{release: make(chan struct{})}
	close(w.release)
	l := NewAccessLog(w, nil)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { l.Run(ctx); close(ran) }()
	written := func() int {
		return len(w.out.String())
	}
	for written() == 0 { // a full buffer (flushBytes) is written at once
		l.Write(&Entry{Start: time.Now(), URI: []byte(strings.Repeat("u", 200)), Status: 200})
		if l.Dropped() > 0 {
			t.Fatal("lines dropped: Run does not write a full buffer")
		}
	}
	l.Write(&Entry{Start: time.Now(), URI: []byte("/last"), Status: 204})
	cancel()
	<-ran
	out := strings.TrimSuffix(w.out.String(), "\n")
	if last := out[strings.LastIndexByte(out, '\n')+1:]; !strings.Contains(last, `"uri":"/last"`) {
		t.Errorf("the last line was not written at Run's end: %s", last)
	}
}

// The values of the named query parameters never reach the log; the rest
// of the URI is kept as sent.
func TestAccessLogRedactsQuery(t *testing.T) {
	names := [][]byte{[]byte("apikey"), []byte("access_token")}
	for _, c := range []struct{ uri, want string }{
		{"/menu", "/menu"},
		{"/menu?", "/menu?"},
		{"/menu?apikey=s3cret", "/menu?apikey=REDACTED"},
		{"/menu?x=1&APIKey=s3cret&y=2", "/menu?x=1&APIKey=REDACTED&y=2"},
		{"/menu?access_token=s3cret&apikey=s3cret", "/menu?access_token=REDACTED&apikey=REDACTED"},
		{"/menu?apikey=&apikey", "/menu?apikey=REDACTED&apikey"},
		{"/menu?myapikey=1&apikeys=2&a=apikey", "/menu?myapikey=1&apikeys=2&a=apikey"},
		{"/menu?x=\"s\"&&apikey=a=b", `/menu?x=\"s\"&&apikey=REDACTED`},
		{"/a?apikey=x?y&z=1", "/a?apikey=REDACTED&z=1"},
	} {
		got := string(appendURI(nil, []byte(c.uri), names))
		if want := `"` + c.want + `"`; got != want {
			t.Errorf("appendURI(%q) = %s, want %s", c.uri, got, want)
		}
	}
	if got := string(appendURI(nil, []byte("/menu?apikey=s3cret"), nil)); got != `"/menu?apikey=s3cret"` {
		t.Errorf("no names: %s", got)
	}

	var buf strings.Builder
	l := NewAccessLog(&buf, nil, "apikey")
	l.Write(&Entry{Start: time.Now(), URI: []byte("/pizzashack/1.0.0/menu?apikey=eyJhbGciOi.s3cret"), Status: 200})
	l.Flush()
	if strings.Contains(buf.String(), "s3cret") || !strings.Contains(buf.String(), `"uri":"/pizzashack/1.0.0/menu?apikey=REDACTED"`) {
		t.Errorf("access log line: %s", buf.String())
	}
}

type refusingWriter struct{}

func (refusingWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// Writes that fail are counted and warned about.
func TestAccessLogWarnsAboutFailedWrites(t *testing.T) {
	var logged testenv.SyncBuffer
	l := NewAccessLog(refusingWriter{}, slog.New(slog.NewTextHandler(&logged, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx)
	l.Write(&Entry{Start: time.Now(), Status: 200})
	testenv.WaitFor(t, 30*time.Second, "a warning about the failed write", func() error {
		if s := logged.String(); !strings.Contains(s, "failed_writes=1") || !strings.Contains(s, "dropped_lines=0") {
			return fmt.Errorf("log: %q", s)
		}
		return nil
	})
}

// A credential's name is recognised however it is written, as the gateway
// would decode it: percent-escapes (also several times over), '+', case;
// parameters are split at '&' and ';', and every one of a repeated name is
// redacted.
func TestAccessLogRedactsEncodedNames(t *testing.T) {
	names := [][]byte{[]byte("apikey"), []byte("access_token"), []byte("api key")}
	for _, c := range []struct{ uri, want string }{
		{"/m?a%70ikey=s3cret", "/m?a%70ikey=REDACTED"},
		{"/m?APIKEY=s3cret", "/m?APIKEY=REDACTED"},
		{"/m?api%4Bey=s3cret", "/m?api%4Bey=REDACTED"},
		{"/m?api%4bey=s3cret", "/m?api%4bey=REDACTED"},
		{"/m?%61%70%69%6b%65%79=s3cret", "/m?%61%70%69%6b%65%79=REDACTED"},
		{"/m?access%5Ftoken=s3cret", "/m?access%5Ftoken=REDACTED"},
		{"/m?ACCESS%5fTOKEN=s3cret&x=1", "/m?ACCESS%5fTOKEN=REDACTED&x=1"},
		{"/m?a%2570ikey=s3cret", "/m?a%2570ikey=REDACTED"}, // decoded twice
		{"/m?api+key=s3cret", "/m?api+key=REDACTED"},       // '+' is a space
		{"/m?api%20key=s3cret", "/m?api%20key=REDACTED"},
		{"/m?x=1;apikey=s3cret;y=2", "/m?x=1;apikey=REDACTED;y=2"},
		{"/m?apikey=one&apikey=two;APIKEY=three", "/m?apikey=REDACTED&apikey=REDACTED;APIKEY=REDACTED"},
		{"/m?a%zzpikey=1&a%7=2&%=3", "/m?a%zzpikey=1&a%7=2&%=3"}, // not escapes: kept
		{"/m?apikeyx=1&xapikey=2&a%70ikey2=3", "/m?apikeyx=1&xapikey=2&a%70ikey2=3"},
		{"/m?" + strings.Repeat("%61", 40) + "=1", "/m?" + strings.Repeat("%61", 40) + "=1"}, // longer than the stack buffer
	} {
		got := string(appendURI(nil, []byte(c.uri), names))
		if want := `"` + c.want + `"`; got != want {
			t.Errorf("appendURI(%q) = %s, want %s", c.uri, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { appendURI(make([]byte, 0, 256), []byte("/m?a%70ikey=s3cret&x=1"), names) }); n > 1 {
		t.Errorf("appendURI allocates %v times per line", n)
	}
}

// fasthttp's messages quote what the client sent; what the log gets of
// them keeps the message and the connection's addresses, and nothing of
// the client's bytes.
func TestScrubClientBytes(t *testing.T) {
	var errs []error
	for _, raw := range []string{
		"GET /x?apikey=SECRET HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer SECRET\r\nX-Bad: a\x01b\r\n\r\n",
		"G\x01T /x?apikey=SECRET HTTP/1.1\r\nAuthorization: Bearer SECRET\r\n\r\n",
		"GET /x?apikey=SECRET\x7f HTTP/1.1\r\nAuthorization: Bearer SECRET\r\n\r\n",
		"GET /x?apikey=SECRET XTTP/1.1\r\nAuthorization: Bearer SECRET\r\n\r\n",
		"GET /x?apikey=SECRET HTTP/1.1\r\nAuthorization: Bearer SECRET\r\n" + strings.Repeat("X-Pad: 0123456789\r\n", 30) + "Bad Key\r\n\r\n",
	} {
		var h fasthttp.RequestHeader
		if err := h.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
			errs = append(errs, err)
		} else {
			t.Errorf("%q parsed", raw)
		}
	}
	for _, err := range errs {
		line := fmt.Sprintf("error when serving connection %q<->%q: %v", "127.0.0.1:80", "[::1]:5555", err)
		got := scrubClientBytes(line)
		if strings.Contains(got, "SECRET") || strings.Contains(got, "contents") {
			t.Errorf("scrubbed %q\nto %q", line, got)
		}
		if !strings.HasPrefix(got, `error when serving connection "127.0.0.1:80"<->"[::1]:5555": error when reading request headers: `) {
			t.Errorf("scrubbed %q\nto %q: the message is lost", line, got)
		}
	}
	for in, want := range map[string]string{
		`no quotes at all`:                          `no quotes at all`,
		`cut "short \"SECRET`:                       `cut "…"`,
		`a "x\\" b "SECRET" c`:                      `a "…" b "…" c`,
		`size=12, contents: "SECRET"..."SECRET"`:    `size=12`,
		`"10.0.0.1:80" and "10.0.0.1:80 SECRET" ok`: `"10.0.0.1:80" and "…" ok`,
	} {
		if got := scrubClientBytes(in); got != want {
			t.Errorf("scrubClientBytes(%q) = %q, want %q", in, got, want)
		}
	}
}

// Requests fasthttp refuses (400, 408, 413, 431) get an access log line
// each, redacted as any, and neither that log nor the process's at level
// debug gets the credentials they carried.
func TestRejectionsLoggedWithoutSecrets(t *testing.T) {
	a := backend(t, "a", 200)
	var logged, access testenv.SyncBuffer
	logger := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))
	al := NewAccessLog(&access, nil, "apikey")
	lb := startLBWith(t, Options{AccessLog: al, Logger: logger},
		ServerOptions{ReadTimeout: time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: 5 * time.Second, MaxHeaderBytes: 4096, MaxBodyBytes: 1 << 20},
		addr(a))
	const creds = "Authorization: Bearer SECRET\r\nCookie: session=SECRET\r\n"
	for _, c := range []struct {
		name, raw string
		status    int
	}{
		{"bad header value", "GET /x?apikey=SECRET HTTP/1.1\r\nHost: gw.example.com\r\n" + creds + "X-Bad: a\x01b\r\n\r\n", 400},
		{"bad method", "G\x01T /x?apikey=SECRET HTTP/1.1\r\nHost: gw.example.com\r\n" + creds + "\r\n", 400},
		{"bad URI", "GET /x?apikey=SECRET\x7f HTTP/1.1\r\nHost: gw.example.com\r\n" + creds + "\r\n", 400},
		{"no host", "GET /x?apikey=SECRET HTTP/1.1\r\n" + creds + "\r\n", 400},
		{"header too large", "GET /x?apikey=SECRET HTTP/1.1\r\nHost: gw.example.com\r\n" + creds + "X-Big: " + strings.Repeat("x", 5000) + "\r\n\r\n", 431},
		{"body too large", "POST /x?apikey=SECRET HTTP/1.1\r\nHost: gw.example.com\r\n" + creds + "Content-Length: 2000000\r\n\r\n", 413},
		{"timeout", "GET /x?apikey=SECRET HTTP/1.1\r\nHost: gw.example.com\r\n" + creds, 408}, // the header never ends
	} {
		rc := dialRaw(t, lb.addr)
		resp, _ := rc.do(c.raw)
		if resp.StatusCode != c.status {
			t.Errorf("%s: %d, want %d", c.name, resp.StatusCode, c.status)
		}
	}
	al.Flush()
	lines := strings.Split(strings.TrimSpace(access.String()), "\n")
	var statuses []string
	for _, line := range lines {
		var e struct {
			Status         int
			Remote, Method string
			URI            string
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		statuses = append(statuses, fmt.Sprint(e.Status))
		if e.Remote != "127.0.0.1" {
			t.Errorf("line without the client's address: %s", line)
		}
		if e.Status == 413 && (e.Method != "POST" || e.URI != "/x?apikey=REDACTED") {
			t.Errorf("413 line lacks what was parsed: %s", line)
		}
	}
	if got := strings.Join(statuses, " "); got != "400 400 400 400 431 413 408" {
		t.Errorf("access log statuses %s, want 400 400 400 400 431 413 408:\n%s", got, access.String())
	}
	if strings.Contains(access.String(), "SECRET") {
		t.Errorf("a credential in the access log:\n%s", access.String())
	}
	testenv.WaitFor(t, 10*time.Second, "fasthttp's debug lines", func() error {
		if n := strings.Count(logged.String(), "http server"); n < 3 {
			return fmt.Errorf("%d lines: %s", n, logged.String())
		}
		return nil
	})
	if strings.Contains(logged.String(), "SECRET") {
		t.Errorf("a credential in the process log:\n%s", logged.String())
	}
}

// rawClient is one client connection to the balancer, spoken to by hand.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

// do sends raw (a whole request) and reads the answer and its body.
func (rc *rawClient) do(raw string) (*http.Response, string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, raw); err != nil {
		rc.t.Fatal(err)
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		rc.t.Fatalf("answer to %q: %v", raw, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		rc.t.Fatalf("body of the answer to %q: %v", raw, err)
	}
	return resp, string(b)
}
