package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
)

func TestLastLines(t *testing.T) {
	for _, tc := range []struct {
		in        string
		n         int
		fromStart bool
		want      string
		complete  bool
	}{
		{"cut\na\nb\nc\n", 2, false, "b\nc\n", true},
		{"cut\na\nb\nc", 2, false, "b\nc", true},
		{"cut\na\nb\n", 2, false, "a\nb\n", true},
		{"cut\na\nb\n", 3, false, "a\nb\n", false}, // "cut" may be a line's end
		{"a\nb\n", 3, true, "a\nb\n", true},
		{"a\nb\n", 0, true, "", true},
		{"", 5, true, "", true},
		{"no newline at all", 1, false, "", false},
	} {
		got, complete := lastLines([]byte(tc.in), tc.n, tc.fromStart)
		if string(got) != tc.want || complete != tc.complete {
			t.Errorf("lastLines(%q, %d, %v) = %q, %v; want %q, %v", tc.in, tc.n, tc.fromStart, got, complete, tc.want, tc.complete)
		}
	}
}

func TestChooseAlloc(t *testing.T) {
	allocs := func() []LogAlloc {
		return []LogAlloc{
			{ID: "aaaa1111-0000", Node: "client-1", Status: "running", Desired: "run", createIdx: 10},
			{ID: "aaaa2222-0000", Node: "client-2", Status: "running", Desired: "run", createIdx: 11},
			{ID: "bbbb3333-0000", Node: "client-2", Status: "failed", Desired: "stop", createIdx: 5},
			{ID: "cccc4444-0000", Node: "client-3", Status: "complete", Desired: "stop", createIdx: 3},
			{ID: "cccc5555-0000", Node: "client-3", Status: "failed", Desired: "stop", createIdx: 7},
		}
	}
	for _, tc := range []struct {
		arg, want string
		errHas    []string
	}{
		{arg: "", errHas: []string{"2 gateway nodes run", "client-1", "aaaa1111-0000", "client-2", "aaaa2222-0000"}},
		{arg: "client-2", want: "aaaa2222-0000"},
		{arg: "client-3", want: "cccc5555-0000"}, // none runs: the latest there
		{arg: "bbbb", want: "bbbb3333-0000"},
		{arg: "aaaa", errHas: []string{`2 allocations start with "aaaa"`}},
		{arg: "nope", errHas: []string{`is "nope"`, "aaaa1111-0000", "aaaa2222-0000"}},
	} {
		got, err := chooseAlloc("apim-gw", allocs(), tc.arg)
		if tc.errHas != nil {
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Errorf("arg %q: %v (%T), want an *InvalidError", tc.arg, err, err)
				continue
			}
			for _, s := range tc.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("arg %q: the error lacks %q:\n%v", tc.arg, s, err)
				}
			}
			continue
		}
		if err != nil || got.ID != tc.want {
			t.Errorf("arg %q: %s, %v; want %s", tc.arg, got.ID, err, tc.want)
		}
	}
	one := allocs()[:1]
	if got, err := chooseAlloc("apim-gw", one, ""); err != nil || got.ID != "aaaa1111-0000" {
		t.Errorf("one running: %s, %v", got.ID, err)
	}
	if _, err := chooseAlloc("apim-gw", nil, ""); err == nil || !strings.Contains(err.Error(), "no allocation") {
		t.Errorf("no allocation: %v", err)
	}
}

// fakeLog is Nomad's log endpoint over one log file that a test appends to.
type fakeLog struct {
	mu       sync.Mutex
	data     []byte
	grew     chan struct{} // closed and replaced on each append
	onFollow func()        // called when a following request comes in
}

const fakeFile = "alloc/logs/gateway.stderr.0"

func (f *fakeLog) append(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.data = append(f.data, s...)
	close(f.grew)
	f.grew = make(chan struct{})
}

func (f *fakeLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, "/v1/client/fs/logs/") {
		http.NotFound(w, r) // the node lookup: the API falls back to the server
		return
	}
	q := r.URL.Query()
	follow := q.Get("follow") == "true"
	offset, _ := strconv.ParseInt(q.Get("offset"), 10, 64)
	if follow && f.onFollow != nil {
		f.onFollow()
	}
	f.mu.Lock()
	pos := min(offset, int64(len(f.data)))
	if q.Get("origin") == "end" {
		pos = max(int64(len(f.data))-offset, 0)
	}
	f.mu.Unlock()
	enc := json.NewEncoder(w)
	for {
		f.mu.Lock()
		chunk, grew := f.data[pos:], f.grew
		f.mu.Unlock()
		// Frames of at most 7 bytes, so that one spans the tail's end.
		for len(chunk) > 0 {
			n := min(len(chunk), 7)
			pos += int64(n)
			if err := enc.Encode(nomadapi.StreamFrame{File: fakeFile, Offset: pos, Data: chunk[:n]}); err != nil {
				return
			}
			chunk = chunk[n:]
		}
		w.(http.Flusher).Flush()
		if !follow {
			return
		}
		select {
		case <-grew:
		case <-r.Context().Done():
			return
		}
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// --tail N -f: the last N lines, then what is written after them, each
// line once, even when a line comes between the tail and the follow.
func TestLogsTailThenFollow(t *testing.T) {
	var old strings.Builder
	for i := range 2000 {
		old.WriteString("old line " + strconv.Itoa(i) + "\n")
	}
	fl := &fakeLog{data: []byte(old.String()), grew: make(chan struct{})}
	fl.onFollow = func() { fl.onFollow = nil; fl.append("between\n") }
	srv := httptest.NewServer(fl)
	defer srv.Close()
	nc, err := nomadapi.NewClient(&nomadapi.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{nomad: nc, nomadAddr: srv.URL}
	a := LogAlloc{ID: "aaaa1111-2222-3333-4444-555566667777", NodeID: "n1"}

	var out bytes.Buffer
	if err := c.Logs(context.Background(), a, LogsOptions{Stderr: true, Tail: 3}, &out); err != nil {
		t.Fatal(err)
	}
	if want := "old line 1997\nold line 1998\nold line 1999\n"; out.String() != want {
		t.Fatalf("--tail 3: %q, want %q", out.String(), want)
	}
	// More lines than the first chunk read from the end holds.
	out.Reset()
	if err := c.Logs(context.Background(), a, LogsOptions{Stderr: true, Tail: 1500}, &out); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"); len(lines) != 1500 || lines[0] != "old line 500" {
		t.Fatalf("--tail 1500: %d lines, first %q", len(lines), lines[0])
	}
	out.Reset()
	if err := c.Logs(context.Background(), a, LogsOptions{Stderr: true, Tail: -1}, &out); err != nil || out.String() != old.String() {
		t.Fatalf("the whole log: %d bytes (want %d), %v", out.Len(), old.Len(), err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var fout syncBuf
	done := make(chan error, 1)
	go func() { done <- c.Logs(ctx, a, LogsOptions{Stderr: true, Tail: 2, Follow: true}, &fout) }()
	want := "old line 1998\nold line 1999\nbetween\n"
	waitOutput(t, &fout, want)
	fl.append("later line\n")
	want += "later line\n"
	waitOutput(t, &fout, want)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Logs after cancel: %v, want context.Canceled", err)
	}
}

func waitOutput(t *testing.T, b *syncBuf, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for b.String() != want {
		if time.Now().After(deadline) || !strings.HasPrefix(want, b.String()) {
			t.Fatalf("output %q, want %q", b.String(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
