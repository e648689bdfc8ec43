// Package balancer holds the routing table: which gateways serve which host,
// and how the request path picks one.
//
// The table is built whole from discovery snapshots by a Builder and swapped
// in with an atomic pointer (Holder); the request path reads it without a
// lock and never sees half a table:
//
//	h := &balancer.Holder{}
//	b := balancer.NewBuilder(routes, health)
//	h.Store(b.Build(snapshots))         // on every discovery update
//	...
//	t := h.Load()                      // on every request
//	r := t.Match(host)                 // exact host, then *.suffix, then "*"
//	u := r.Pick(&tried, now)           // the route's Selector; nil: nobody left
//
// An Upstream (one instance of one route) outlives the tables it appears in:
// its in-flight count and its passive health carry over from one table to
// the next, so a Consul update does not forgive an instance that is failing.
//
// Passive health rules:
//   - ConsecutiveFailures failures (connection failures, 5xx) eject an
//     instance for BaseEjection; each ejection while it keeps failing doubles
//     that, up to MaxEjection; a success resets it.
//   - After an ejection the instance is on probation: one more failure ejects
//     it again.
//   - Panic threshold: ejection never takes more than MaxEjectedPercent of a
//     route's instances out, and never the last one; and when every
//     remaining candidate is ejected, Pick ignores ejection rather than fail.
package balancer

import (
	"sync/atomic"
	"time"
)

// Upstream is one instance of a route's service: where to send, and what
// the request path learnt about it.
type Upstream struct {
	Key       string // identity: route index, node, service ID, address
	Addr      string // host:port to dial
	ServiceID string
	Node      string
	Route     int // index of its route in the configuration (Key and Route change when a reload moves the route)

	inflight     atomic.Int64
	fails        atomic.Int32 // consecutive failures
	ejections    atomic.Int32 // consecutive ejections (backoff exponent)
	ejectedUntil atomic.Int64 // unix nanos; 0: not ejected
	totalEject   atomic.Uint64
	joined       int64 // unix nanos it joined a serving route (slow start); 0: from the start

	// Ext is the request path's own per-upstream data (keep-alive pool,
	// pre-resolved metrics), set once by Builder.OnNew before the upstream
	// is published.
	Ext any
}

// WarmUntil is when u's slow start ends (zero: it has none); slowStart is
// its route's health.slow_start.
func (u *Upstream) WarmUntil(slowStart time.Duration) time.Time {
	if u.joined == 0 || slowStart <= 0 {
		return time.Time{}
	}
	return time.Unix(0, u.joined+int64(slowStart))
}

// Inflight is the number of requests in flight to u.
func (u *Upstream) Inflight() int64 { return u.inflight.Load() }

// Acquire counts a request in flight; Release ends it.
func (u *Upstream) Acquire() { u.inflight.Add(1) }

// Release ends a request counted by Acquire.
func (u *Upstream) Release() { u.inflight.Add(-1) }

// Ejected reports whether u is ejected at now (unix nanos).
func (u *Upstream) Ejected(now int64) bool { return u.ejectedUntil.Load() > now }

// EjectedUntil is the end of the current ejection (zero time: none).
func (u *Upstream) EjectedUntil() time.Time {
	n := u.ejectedUntil.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Ejections is how many times u was ejected in total.
func (u *Upstream) Ejections() uint64 { return u.totalEject.Load() }

// ConsecutiveFailures is the current run of failures.
func (u *Upstream) ConsecutiveFailures() int { return int(u.fails.Load()) }

// Health is the passive health configuration.
type Health struct {
	ConsecutiveFailures int
	BaseEjection        time.Duration
	MaxEjection         time.Duration
	MaxEjectedPercent   int
	// SlowStart ramps an instance that joins a route already serving
	// (a gateway added or restarted) from 10 % to its full share of the
	// requests over this long (0: at once). See Route.Pick.
	SlowStart time.Duration
}

// Holder publishes the current table.
type Holder struct{ p atomic.Pointer[Table] }

// Load returns the current table (never nil after the first Store).
func (h *Holder) Load() *Table { return h.p.Load() }

// Store swaps the table.
func (h *Holder) Store(t *Table) { h.p.Store(t) }
