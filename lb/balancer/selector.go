package balancer

import (
	"math/rand/v2"
	"sync/atomic"
)

// Selector picks one upstream of a route. Implementations must be safe for
// concurrent use and must not allocate: Select runs on every request.
type Selector interface {
	// Select returns an upstream of ups for which f.OK is true, or nil.
	Select(ups []*Upstream, f *Filter) *Upstream
}

// NewSelector returns the selector for a policy name (round_robin,
// least_conn, p2c); unknown names get p2c.
func NewSelector(policy string) Selector {
	switch policy {
	case "round_robin":
		return &RoundRobin{}
	case "least_conn":
		return LeastConn{}
	default:
		return P2C{}
	}
}

// MaxTries is the most upstreams one request can try.
const MaxTries = 8

// Tried is the set of upstreams a request already tried (no allocation).
type Tried struct {
	n  int
	up [MaxTries]*Upstream
}

// Add records u.
func (t *Tried) Add(u *Upstream) {
	if t.n < MaxTries {
		t.up[t.n] = u
		t.n++
	}
}

// Has reports whether u was tried.
func (t *Tried) Has(u *Upstream) bool {
	for i := 0; i < t.n; i++ {
		if t.up[i] == u {
			return true
		}
	}
	return false
}

// Len is the number of upstreams tried.
func (t *Tried) Len() int { return t.n }

// Filter says which upstreams a Select may return.
type Filter struct {
	Tried *Tried
	Now   int64 // unix nanos
	// IgnoreEjection: ejected upstreams are candidates too (panic mode).
	IgnoreEjection bool
}

// OK reports whether u is a candidate.
func (f *Filter) OK(u *Upstream) bool {
	if f.Tried != nil && f.Tried.Has(u) {
		return false
	}
	return f.IgnoreEjection || !u.Ejected(f.Now)
}

// RoundRobin takes the upstreams in turn, skipping those filtered out.
type RoundRobin struct{ next atomic.Uint64 }

// Select implements Selector.
func (r *RoundRobin) Select(ups []*Upstream, f *Filter) *Upstream {
	n := uint64(len(ups))
	if n == 0 {
		return nil
	}
	start := r.next.Add(1) - 1
	for i := uint64(0); i < n; i++ {
		if u := ups[(start+i)%n]; f.OK(u) {
			return u
		}
	}
	return nil
}

// LeastConn takes the upstream with the fewest requests in flight; ties go
// to a random one of them (scanning from a random start).
type LeastConn struct{}

// Select implements Selector.
func (LeastConn) Select(ups []*Upstream, f *Filter) *Upstream {
	n := len(ups)
	if n == 0 {
		return nil
	}
	start := rand.IntN(n)
	var best *Upstream
	var bestN int64
	for i := 0; i < n; i++ {
		u := ups[(start+i)%n]
		if !f.OK(u) {
			continue
		}
		if c := u.inflight.Load(); best == nil || c < bestN {
			best, bestN = u, c
		}
	}
	return best
}

// P2C is the power of two choices: two random candidates, the one with fewer
// requests in flight wins. Near least_conn's balance at O(1) cost.
type P2C struct{}

// Select implements Selector.
func (P2C) Select(ups []*Upstream, f *Filter) *Upstream {
	n := len(ups)
	switch n {
	case 0:
		return nil
	case 1:
		if f.OK(ups[0]) {
			return ups[0]
		}
		return nil
	}
	// A few random draws find candidates fast when most are; otherwise fall
	// back to a scan so a candidate is never missed.
	var a, b *Upstream
	for i := 0; i < 4 && b == nil; i++ {
		u := ups[rand.IntN(n)]
		if !f.OK(u) || u == a {
			continue
		}
		if a == nil {
			a = u
		} else {
			b = u
		}
	}
	if a == nil {
		return LeastConn{}.Select(ups, f)
	}
	if b == nil {
		// Only one found by chance: compare with the first other candidate.
		start := rand.IntN(n)
		for i := 0; i < n; i++ {
			if u := ups[(start+i)%n]; u != a && f.OK(u) {
				b = u
				break
			}
		}
		if b == nil {
			return a
		}
	}
	if b.inflight.Load() < a.inflight.Load() {
		return b
	}
	return a
}
