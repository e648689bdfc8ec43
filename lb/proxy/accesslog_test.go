package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

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
