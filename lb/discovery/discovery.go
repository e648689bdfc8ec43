// Package discovery keeps the load balancer's view of the gateways fresh from
// Consul's health API.
//
// It separates what to fetch from how to keep it fresh, as consul-template
// does:
//
//   - a Query names one Consul service (and an optional tag); a Fetcher runs
//     one blocking query for it (ConsulFetcher is the real one);
//   - a Watcher runs one goroutine per Query that loops on blocking queries
//     and publishes a Snapshot of every Query, whole, to its OnUpdate
//     callback whenever one of them changes.
//
// The rules the Watcher keeps, because a balancer that trusts Consul too much
// turns a Consul hiccup into an outage:
//
//   - Only instances whose checks all pass are published (Consul's
//     passingOnly), but the Watcher asks for all of them, so it can show the
//     others and tell a deregistered instance from a failing one.
//   - An error never changes the instances: the last good answer is kept and
//     marked stale (Snapshot.StaleSince), errors are retried with a growing
//     backoff. Only a successful answer may empty a route.
//   - Staleness is bounded: past MaxStaleness without a good answer, the
//     instances are dropped (0 keeps them forever).
//   - After an outage, answers may only add instances for ReconnectGrace:
//     a Consul agent that restarts reports every check critical until the
//     check has run once, and that must not empty the table. Instances kept
//     this way are marked Held.
//   - Every goroutine belongs to the context given to Run.
package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// Query is what to fetch: one Consul service, optionally filtered by tag.
type Query struct {
	Service string
	Tag     string
}

func (q Query) String() string {
	if q.Tag == "" {
		return q.Service
	}
	return q.Tag + "." + q.Service
}

// Instance is one registered instance of a service.
type Instance struct {
	ID      string            // Consul service ID
	Node    string            // Consul node name
	Address string            // service address, else the node's
	Port    int               // service port
	Meta    map[string]string // service meta (port_http, port_passthru_http, ...)
	Tags    []string
	// Status is Consul's aggregated status of all the instance's checks
	// (node checks included): passing, warning, critical or maintenance.
	Status string
	// Held: not passing (or absent) in the latest answer but kept by the
	// reconnect grace.
	Held bool
}

// Key identifies an instance across answers.
func (i *Instance) Key() string { return i.Node + "/" + i.ID }

// Snapshot is the published state of one Query.
type Snapshot struct {
	Query Query
	// Instances are those to send traffic to: passing (and Held) ones,
	// sorted by Key.
	Instances []Instance
	// Other are registered instances that are not passing (for /routes).
	Other []Instance
	Index uint64 // Consul index of the last good answer
	// Updated is when the last good answer arrived (zero: none yet).
	Updated time.Time
	// StaleSince is when the watch started failing (zero: healthy).
	StaleSince time.Time
	// LastErr is the last error while stale.
	LastErr error
	// Expired: stale for longer than MaxStaleness; Instances were dropped.
	Expired bool
	// GraceUntil: the reconnect grace runs until then (zero: none).
	GraceUntil time.Time
	// Errors counts failed queries since the start.
	Errors uint64
}

// Ready reports whether a good answer has arrived at least once.
func (s *Snapshot) Ready() bool { return !s.Updated.IsZero() }

// Age is how long the snapshot has been stale (0 while the watch is live).
func (s *Snapshot) Age(now time.Time) time.Duration {
	if s.StaleSince.IsZero() {
		return 0
	}
	if s.Updated.IsZero() {
		return now.Sub(s.StaleSince)
	}
	return now.Sub(s.Updated)
}

// Fetcher runs one blocking query: it returns every registered instance of
// q (passing or not) once Consul's index for it passes index, or after wait.
type Fetcher interface {
	Fetch(ctx context.Context, q Query, index uint64, wait time.Duration) (instances []Instance, newIndex uint64, err error)
}

// ConsulFetcher fetches from Consul's health API (/v1/health/service).
type ConsulFetcher struct {
	Client *consulapi.Client
	// Datacenter to ask (empty: the agent's).
	Datacenter string
}

// Fetch implements Fetcher.
func (f *ConsulFetcher) Fetch(ctx context.Context, q Query, index uint64, wait time.Duration) ([]Instance, uint64, error) {
	// A blocking query can hang on a dead network path: bound it a little
	// beyond the wait Consul adds jitter to (wait/16).
	ctx, cancel := context.WithTimeout(ctx, wait+wait/16+5*time.Second)
	defer cancel()
	opts := &consulapi.QueryOptions{
		Datacenter: f.Datacenter,
		WaitIndex:  index,
		WaitTime:   wait,
		AllowStale: true, // any server answers; a leader election does not stop discovery
	}
	entries, meta, err := f.Client.Health().Service(q.Service, q.Tag, false, opts.WithContext(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("consul health %s: %w", q, err)
	}
	out := make([]Instance, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil || e.Node == nil {
			continue
		}
		addr := e.Service.Address
		if addr == "" {
			addr = e.Node.Address
		}
		out = append(out, Instance{
			ID: e.Service.ID, Node: e.Node.Node, Address: addr, Port: e.Service.Port,
			Meta: e.Service.Meta, Tags: e.Service.Tags, Status: e.Checks.AggregatedStatus(),
		})
	}
	return out, meta.LastIndex, nil
}

// Watcher keeps a Snapshot of each Query fresh. Set the fields, then Run.
type Watcher struct {
	Fetcher Fetcher
	Queries []Query
	// OnUpdate receives every snapshot (keyed by Query) each time one of
	// them changes. Calls are serialized; the map and snapshots are the
	// callee's to keep (never modified afterwards).
	OnUpdate func(map[Query]*Snapshot)
	Logger   *slog.Logger

	WaitTime       time.Duration // blocking query wait; default 60s
	MaxStaleness   time.Duration // 0: keep the last good answer forever
	ReconnectGrace time.Duration // 0: no grace
	MinBackoff     time.Duration // default 100ms
	MaxBackoff     time.Duration // default 5s

	mu      sync.Mutex
	snaps   map[Query]*Snapshot
	notify  chan struct{}
	ctx     context.Context     // Run's; nil before Run
	watches map[Query]*watching // what runs now
	wg      sync.WaitGroup
}

// watching is one query's loop; publish drops what a stopped loop sends.
type watching struct{ cancel context.CancelFunc }

// Snapshots returns the current snapshots (a copy of the map).
func (w *Watcher) Snapshots() map[Query]*Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[Query]*Snapshot, len(w.snaps))
	for q, s := range w.snaps {
		out[q] = s
	}
	return out
}

// Run watches until ctx ends. It returns only then.
func (w *Watcher) Run(ctx context.Context) error {
	if w.WaitTime <= 0 {
		w.WaitTime = 60 * time.Second
	}
	if w.MinBackoff <= 0 {
		w.MinBackoff = 100 * time.Millisecond
	}
	if w.MaxBackoff <= 0 {
		w.MaxBackoff = 5 * time.Second
	}
	if w.Logger == nil {
		w.Logger = slog.Default()
	}
	w.mu.Lock()
	w.snaps = map[Query]*Snapshot{}
	w.watches = map[Query]*watching{}
	w.notify = make(chan struct{}, 1)
	w.ctx = ctx
	w.startLocked(unique(w.Queries))
	w.mu.Unlock()

	// The publisher coalesces bursts of changes into one OnUpdate.
	w.wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-w.notify:
				if w.OnUpdate != nil {
					w.OnUpdate(w.Snapshots())
				}
			}
		}
	})
	<-ctx.Done()
	w.wg.Wait()
	return nil
}

// Watched returns the queries watched now (or to be, before Run).
func (w *Watcher) Watched() []Query {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.Queries)
}

// SetQueries changes what is watched, also while Run runs (a reload): a
// query kept keeps its watch and snapshot; a new one starts with an empty
// snapshot (not Ready until Consul answers); a removed one stops and its
// snapshot goes. OnUpdate follows.
func (w *Watcher) SetQueries(qs []Query) {
	w.mu.Lock()
	defer w.mu.Unlock()
	qs = unique(qs)
	w.Queries = qs
	if w.ctx == nil || w.ctx.Err() != nil {
		return // Run starts them, or has ended
	}
	for q, wq := range w.watches {
		if !slices.Contains(qs, q) {
			wq.cancel()
			delete(w.watches, q)
			delete(w.snaps, q)
		}
	}
	w.startLocked(qs)
	w.signal()
}

// startLocked starts the queries not watched yet; w.mu is held.
func (w *Watcher) startLocked(qs []Query) {
	for _, q := range qs {
		if w.watches[q] != nil {
			continue
		}
		ctx, cancel := context.WithCancel(w.ctx)
		wq := &watching{cancel: cancel}
		w.watches[q] = wq
		w.snaps[q] = &Snapshot{Query: q}
		w.wg.Go(func() { w.watch(ctx, q, wq) })
	}
}

func unique(qs []Query) []Query {
	qs = slices.Clone(qs)
	slices.SortFunc(qs, func(a, b Query) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(qs)
}

// publish makes s the snapshot of its query, unless wq's loop was stopped.
func (w *Watcher) publish(wq *watching, s *Snapshot) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.watches[s.Query] != wq {
		return
	}
	w.snaps[s.Query] = s
	w.signal()
}

// signal wakes the publisher (w.mu is held or not needed).
func (w *Watcher) signal() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// watch is the loop of one Query.
func (w *Watcher) watch(ctx context.Context, q Query, wq *watching) {
	log := w.Logger.With("service", q.String())
	cur := &Snapshot{Query: q}
	var (
		index      uint64
		failures   int
		held       []Instance // instances kept by the reconnect grace
		graceUntil time.Time  // end of the reconnect grace (zero: none)
		last       []Instance // last answer, all instances
		started    time.Time  // of the last query
	)
	for ctx.Err() == nil {
		wait := w.WaitTime
		if !graceUntil.IsZero() {
			// Wake up when the grace ends, to drop what it held.
			if rem := time.Until(graceUntil); rem < wait {
				wait = max(rem, 50*time.Millisecond)
			}
		}
		// Consul asks clients to rate-limit blocking queries that return
		// at once; a burst of changes is still seen within 50ms.
		if d := time.Since(started); d < 50*time.Millisecond {
			sleep(ctx, 50*time.Millisecond-d)
		}
		started = time.Now()
		qIndex := index
		if failures > 0 {
			// After a failure, ask without blocking: an agent that comes
			// back with its data (a restart) keeps the same index until
			// something changes, and a blocking query on it would leave
			// the table stale for up to WaitTime.
			qIndex = 0
		}
		insts, newIndex, err := w.Fetcher.Fetch(ctx, q, qIndex, wait)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err != nil {
			failures++
			next := *cur
			next.Errors++
			next.LastErr = err
			if next.StaleSince.IsZero() {
				next.StaleSince = now
				log.Warn("consul query failed; serving the last good answer", "err", err)
			}
			if w.MaxStaleness > 0 && next.Ready() && !next.Expired && now.Sub(next.Updated) > w.MaxStaleness {
				next.Expired = true
				next.Instances = nil
				log.Error("no good answer from consul for longer than max_staleness; dropping the instances",
					"max_staleness", w.MaxStaleness, "last_good", next.Updated)
			}
			cur = &next
			w.publish(wq, cur)
			sleep(ctx, backoff(w.MinBackoff, w.MaxBackoff, failures))
			continue
		}

		// Consul's blocking query rules: an index that goes backwards
		// (a restored snapshot, a new cluster) starts over from 0.
		if newIndex < index {
			newIndex = 0
		}
		recovered := !cur.StaleSince.IsZero()
		if recovered {
			log.Info("consul answers again", "stale_for", now.Sub(cur.StaleSince).Round(time.Millisecond), "failed_queries", failures)
			if w.ReconnectGrace > 0 && cur.Ready() {
				held = cur.Instances
				graceUntil = now.Add(w.ReconnectGrace)
			}
		}
		failures = 0
		graceEnded := !graceUntil.IsZero() && !now.Before(graceUntil)
		changed := recovered || graceEnded || !cur.Ready() || !sameInstances(last, insts)
		if newIndex == index && !changed {
			// Nothing new (the wait ran out).
			continue
		}
		index = newIndex
		last = insts
		next := &Snapshot{Query: q, Index: index, Updated: now, Errors: cur.Errors}
		if graceEnded {
			held, graceUntil = nil, time.Time{}
			log.Info("reconnect grace over")
		}
		next.GraceUntil = graceUntil
		next.Instances, next.Other = split(insts, held)
		if changed {
			cur = next
			w.publish(wq, cur)
		} else {
			cur = next // only the index moved
		}
	}
}

// split sorts insts into passing (plus held ones not passing now) and the
// others.
func split(insts, held []Instance) (use, other []Instance) {
	use = make([]Instance, 0, len(insts))
	seen := make(map[string]bool, len(insts))
	for _, in := range insts {
		if in.Status == consulapi.HealthPassing {
			use = append(use, in)
			seen[in.Key()] = true
		}
	}
	for _, h := range held {
		if !seen[h.Key()] {
			h.Held = true
			use = append(use, h)
			seen[h.Key()] = true
		}
	}
	for _, in := range insts {
		if !seen[in.Key()] {
			other = append(other, in)
		}
	}
	byKey := func(a, b Instance) int { return strings.Compare(a.Key(), b.Key()) }
	slices.SortFunc(use, byKey)
	slices.SortFunc(other, byKey)
	return use, other
}

func sameInstances(a, b []Instance) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := &a[i], &b[i]
		if x.ID != y.ID || x.Node != y.Node || x.Address != y.Address || x.Port != y.Port ||
			x.Status != y.Status || !maps(x.Meta, y.Meta) || !slices.Equal(x.Tags, y.Tags) {
			return false
		}
	}
	return true
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// backoff is min*2^(n-1), capped at max, with ±10% jitter.
func backoff(minD, maxD time.Duration, n int) time.Duration {
	d := minD
	for i := 1; i < n && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	j := time.Duration(rand.Int64N(int64(d)/5 + 1))
	return d - d/10 + j
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
