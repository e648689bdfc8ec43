package discovery

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// scriptFetcher answers blocking queries from a script the test changes;
// it stands in for Consul only for the time-based rules that a real agent
// would take minutes to show (max staleness, grace expiry). The same rules
// run against a real Consul in package lb's outage test.
type scriptFetcher struct {
	mu      sync.Mutex
	index   uint64
	insts   []Instance
	err     error
	changed chan struct{}
}

func newScript() *scriptFetcher { return &scriptFetcher{changed: make(chan struct{})} }

func (f *scriptFetcher) set(insts []Instance, err error) {
	f.mu.Lock()
	f.insts, f.err = insts, err
	f.index++
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *scriptFetcher) Fetch(ctx context.Context, q Query, index uint64, wait time.Duration) ([]Instance, uint64, error) {
	f.mu.Lock()
	if f.err != nil {
		err := f.err
		f.mu.Unlock()
		return nil, 0, err
	}
	if index < f.index {
		defer f.mu.Unlock()
		return f.insts, f.index, nil
	}
	ch := f.changed
	f.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	case <-t.C:
	case <-ch:
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, 0, f.err
	}
	return f.insts, f.index, nil
}

// recover clears the error without a change of index: an agent restarted
// with its data answers with the index it had.
func (f *scriptFetcher) recover() {
	f.mu.Lock()
	f.err = nil
	f.mu.Unlock()
}

func inst(id, status string) Instance {
	return Instance{ID: id, Node: "n", Address: "127.0.0.1", Port: 1, Status: status}
}

type recorder struct {
	mu   sync.Mutex
	last *Snapshot
}

func (r *recorder) on(m map[Query]*Snapshot) {
	r.mu.Lock()
	r.last = m[Query{Service: "s"}]
	r.mu.Unlock()
}

func (r *recorder) wait(t *testing.T, what string, cond func(s *Snapshot) bool) *Snapshot {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		s := r.last
		r.mu.Unlock()
		if s != nil && cond(s) {
			return s
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s (last %+v)", what, r.last)
	return nil
}

func ids(s *Snapshot) string {
	out := ""
	for _, i := range s.Instances {
		out += i.ID
		if i.Held {
			out += "(held)"
		}
		out += " "
	}
	return out
}

func run(t *testing.T, w *Watcher) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestStaleKeepsLastGoodThenExpires(t *testing.T) {
	f := newScript()
	f.set([]Instance{inst("a", "passing"), inst("b", "critical")}, nil)
	rec := &recorder{}
	run(t, &Watcher{Fetcher: f, Queries: []Query{{Service: "s"}}, OnUpdate: rec.on,
		WaitTime: time.Second, MaxStaleness: 400 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	s := rec.wait(t, "first answer", func(s *Snapshot) bool { return s.Ready() })
	if ids(s) != "a " || len(s.Other) != 1 {
		t.Fatalf("passing only: %q, other %v", ids(s), s.Other)
	}
	f.set(nil, errors.New("connection refused"))
	s = rec.wait(t, "stale", func(s *Snapshot) bool { return !s.StaleSince.IsZero() })
	if ids(s) != "a " || s.Expired {
		t.Fatalf("an error changed the instances: %q", ids(s))
	}
	s = rec.wait(t, "expiry", func(s *Snapshot) bool { return s.Expired })
	if len(s.Instances) != 0 {
		t.Fatalf("expired but still %q", ids(s))
	}
}

func TestReconnectGraceHoldsThenDrops(t *testing.T) {
	f := newScript()
	f.set([]Instance{inst("a", "passing"), inst("b", "passing")}, nil)
	rec := &recorder{}
	run(t, &Watcher{Fetcher: f, Queries: []Query{{Service: "s"}}, OnUpdate: rec.on,
		WaitTime: time.Second, ReconnectGrace: 500 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	rec.wait(t, "first answer", func(s *Snapshot) bool { return ids(s) == "a b " })
	f.set(nil, errors.New("agent down"))
	rec.wait(t, "stale", func(s *Snapshot) bool { return !s.StaleSince.IsZero() })
	// The agent is back: its checks are critical until they run; a new
	// instance c is passing. Answers may only add during the grace.
	start := time.Now()
	f.set([]Instance{inst("a", "critical"), inst("b", "critical"), inst("c", "passing")}, nil)
	s := rec.wait(t, "recovered", func(s *Snapshot) bool { return s.StaleSince.IsZero() })
	if ids(s) != "a(held) b(held) c " || s.GraceUntil.IsZero() {
		t.Fatalf("during the grace: %q", ids(s))
	}
	// a passes again; b stays critical and is dropped when the grace ends.
	f.set([]Instance{inst("a", "passing"), inst("b", "critical"), inst("c", "passing")}, nil)
	rec.wait(t, "a passing", func(s *Snapshot) bool { return ids(s) == "a b(held) c " })
	s = rec.wait(t, "grace over", func(s *Snapshot) bool { return ids(s) == "a c " })
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Errorf("grace ended after %v, want ~500ms", d)
	}
	if !s.GraceUntil.IsZero() {
		t.Errorf("grace still set")
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 10: 5 * time.Second} {
		d := backoff(100*time.Millisecond, 5*time.Second, n)
		if d < want*9/10 || d > want*11/10 {
			t.Errorf("backoff(%d) = %v, want ~%v", n, d, want)
		}
	}
}

// TestFreshAtOnceAfterAgentRestart: Consul comes back with the index it had;
// the first query after the outage must not block on that index (the table
// would stay stale for up to WaitTime, here an hour).
func TestFreshAtOnceAfterAgentRestart(t *testing.T) {
	f := newScript()
	f.set([]Instance{inst("a", "passing")}, nil)
	rec := &recorder{}
	run(t, &Watcher{Fetcher: f, Queries: []Query{{Service: "s"}}, OnUpdate: rec.on,
		WaitTime: time.Hour, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	rec.wait(t, "first answer", func(s *Snapshot) bool { return s.Ready() })
	f.mu.Lock()
	f.err = errors.New("connection refused") // the agent stops (no change of index)
	close(f.changed)                         // wakes the blocking query
	f.changed = make(chan struct{})
	f.mu.Unlock()
	rec.wait(t, "stale", func(s *Snapshot) bool { return !s.StaleSince.IsZero() })
	f.recover()
	s := rec.wait(t, "fresh again", func(s *Snapshot) bool { return s.StaleSince.IsZero() })
	if ids(s) != "a " {
		t.Fatalf("after the restart: %q", ids(s))
	}
}

// SetQueries while running: a kept query keeps its snapshot, a new one
// starts empty and fills, a removed one goes, and what its stopped loop
// still publishes is dropped (the race a reload can meet). The rest runs
// against a real Consul in package lb's reload test.
func TestSetQueriesWhileRunning(t *testing.T) {
	f := newScript()
	f.set([]Instance{inst("a", "passing")}, nil)
	a, b := Query{Service: "a"}, Query{Service: "b"}
	w := &Watcher{Fetcher: f, Queries: []Query{a}}
	run(t, w)
	waitSnap := func(q Query, want bool) *Snapshot {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			s, ok := w.Snapshots()[q]
			if ok == want && (!want || s.Ready()) {
				return s
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("%v: want present and ready %v, have %v", q, want, w.Snapshots())
		return nil
	}
	sa := waitSnap(a, true)
	w.mu.Lock()
	stopped := w.watches[a]
	w.mu.Unlock()

	w.SetQueries([]Query{a, b})
	waitSnap(b, true)
	if w.Snapshots()[a] != sa {
		t.Error("the kept query's snapshot was replaced")
	}
	w.SetQueries([]Query{b})
	waitSnap(a, false)
	w.publish(stopped, &Snapshot{Query: a, Updated: time.Now()})
	if _, ok := w.Snapshots()[a]; ok {
		t.Error("a stopped loop's publish brought back a removed query")
	}
}
