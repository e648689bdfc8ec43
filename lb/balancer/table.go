package balancer

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gwnomad/gwnomad/internal/contract"
	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/discovery"
)

// Table is one immutable version of the routing table.
type Table struct {
	Version uint64
	Built   time.Time
	Routes  []*Route // in configuration order

	exact  map[string]*Route
	suffix []suffixRoute // longest suffix first
	def    *Route
}

type suffixRoute struct {
	suffix []byte // ".example.com"
	route  *Route
}

// Route is one [[routes]] entry with its current upstreams.
type Route struct {
	Index     int
	Name      string // the first host
	Config    config.Route
	Query     discovery.Query
	Upstreams []*Upstream // passing instances (Held ones included), sorted by Key
	// Members describes Upstreams[i] as discovery saw it.
	Members []discovery.Instance
	// Other are registered but not passing instances; Skipped lack the
	// configured port.
	Other   []discovery.Instance
	Skipped []discovery.Instance
	// Snapshot is the discovery state the route was built from (nil before
	// the first answer).
	Snapshot *discovery.Snapshot
	// Ext is the request path's per-route data (Builder.OnRoute).
	Ext any

	sel    Selector
	health *Health
	state  *routeState
}

type routeState struct{ ejectMu sync.Mutex }

// Pick returns an upstream not yet tried, preferring ones not ejected; nil
// when every upstream was tried (or there is none).
//
// Slow start (health.slow_start): an upstream that joined the route while
// it was serving is accepted, when the selector picks it, with a
// probability that grows linearly from 10 % to 100 % over the slow start;
// a refused pick is replaced by one more pick among the others, which is
// final. So a new gateway (a cold JVM) gets a tenth of its share at first
// and all of it after slow_start, and a route whose only choice is a
// warming upstream still uses it.
func (r *Route) Pick(tried *Tried, now int64) *Upstream {
	f := Filter{Tried: tried, Now: now}
	if u := r.selectWith(&f); u != nil {
		if ss := int64(r.health.SlowStart); ss > 0 && u.joined > 0 && now-u.joined < ss && !warmAccept(now-u.joined, ss) {
			var t Tried
			if tried != nil {
				t = *tried
			}
			t.Add(u)
			f.Tried = &t
			if v := r.selectWith(&f); v != nil {
				return v
			}
		}
		return u
	}
	// Panic mode: everything left is ejected; better try one than fail.
	f.IgnoreEjection = true
	return r.selectWith(&f)
}

// SlowStart is the route's health.slow_start.
func (r *Route) SlowStart() time.Duration {
	if r.health == nil {
		return 0
	}
	return r.health.SlowStart
}

// warmAccept draws whether an upstream elapsed into a slow start of ss
// (both > 0, elapsed < ss) takes this request: with probability
// 0.1 + 0.9*elapsed/ss.
func warmAccept(elapsed, ss int64) bool {
	const scale = 1 << 20
	p := scale/10 + int64(float64(scale)*0.9*float64(elapsed)/float64(ss))
	return int64(rand.Uint64()%scale) < p
}

// selectWith calls the built-in selectors directly (no interface call, so
// nothing escapes to the heap), custom ones through the interface.
func (r *Route) selectWith(f *Filter) *Upstream {
	switch s := r.sel.(type) {
	case *RoundRobin:
		return s.Select(r.Upstreams, f)
	case P2C:
		return s.Select(r.Upstreams, f)
	case LeastConn:
		return s.Select(r.Upstreams, f)
	default:
		// An interface call lets its arguments escape: hand it copies so
		// the caller's Tried stays on its stack.
		fc := Filter{Now: f.Now, IgnoreEjection: f.IgnoreEjection}
		if f.Tried != nil {
			tc := *f.Tried
			fc.Tried = &tc
		}
		return r.sel.Select(r.Upstreams, &fc)
	}
}

// ReportSuccess records an answer that was not a failure.
func (r *Route) ReportSuccess(u *Upstream, now int64) {
	if u.fails.Load() != 0 {
		u.fails.Store(0)
	}
	if u.ejections.Load() != 0 && !u.Ejected(now) {
		u.ejections.Store(0)
	}
}

// ReportFailure records a connection failure or a failing answer; it
// returns the ejection's length when it ejected u.
func (r *Route) ReportFailure(u *Upstream, now int64) (ejectedFor time.Duration) {
	n := u.fails.Add(1)
	if int(n) < r.health.ConsecutiveFailures || u.Ejected(now) {
		return 0
	}
	r.state.ejectMu.Lock()
	defer r.state.ejectMu.Unlock()
	if u.Ejected(now) {
		return 0
	}
	out := 0
	for _, o := range r.Upstreams {
		if o != u && o.Ejected(now) {
			out++
		}
	}
	total := len(r.Upstreams)
	if out+1 >= total || (out+1)*100 > r.health.MaxEjectedPercent*total {
		return 0 // panic threshold: keep it in
	}
	k := u.ejections.Add(1)
	d := r.health.BaseEjection
	for i := int32(1); i < k && d < r.health.MaxEjection; i++ {
		d *= 2
	}
	d = min(d, r.health.MaxEjection)
	u.ejectedUntil.Store(now + int64(d))
	// Probation: one more failure after the ejection ejects it again.
	u.fails.Store(int32(r.health.ConsecutiveFailures - 1))
	u.totalEject.Add(1)
	return d
}

// Match returns the route for a Host header value (port, trailing dot and
// case ignored): exact name first, then the longest *.suffix, then "*".
// It does not allocate.
func (t *Table) Match(host []byte) *Route {
	var buf [256]byte
	h := normalizeHost(buf[:0], host)
	if h == nil {
		return t.def
	}
	if r, ok := t.exact[string(h)]; ok {
		return r
	}
	for i := range t.suffix {
		if bytes.HasSuffix(h, t.suffix[i].suffix) {
			return t.suffix[i].route
		}
	}
	return t.def
}

// normalizeHost lowercases host and strips a port and a trailing dot into
// dst (nil when host is too long).
func normalizeHost(dst, host []byte) []byte {
	if i := bytes.IndexByte(host, ']'); len(host) > 0 && host[0] == '[' && i > 0 { // [v6]:port
		host = host[1:i]
	} else if i := bytes.LastIndexByte(host, ':'); i >= 0 && bytes.IndexByte(host[:i], ':') < 0 {
		host = host[:i]
	}
	if len(host) > 0 && host[len(host)-1] == '.' {
		host = host[:len(host)-1]
	}
	if len(host) > cap(dst) {
		return nil
	}
	for _, c := range host {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// Builder makes tables from discovery snapshots. It keeps the Upstreams
// alive across tables. Build may be called from several goroutines.
type Builder struct {
	routes []config.Route
	health Health

	// OnRoute makes a route's Ext, once per configured route.
	OnRoute func(index int, r *config.Route) any
	// OnNew prepares a new upstream (its Ext) before it is published.
	OnNew func(r *config.Route, u *Upstream)
	// OnGone is told when an upstream leaves the table for good.
	OnGone func(u *Upstream)

	mu      sync.Mutex
	ups     map[string]*Upstream
	ext     []any
	states  []*routeState
	serving []bool // per route: it had an answer from Consul (slow start applies to newcomers)
	sels    []Selector
	version uint64
}

// NewBuilder returns a builder for routes (defaults filled in).
func NewBuilder(routes []config.Route, h Health) *Builder {
	rs := slices.Clone(routes)
	for i := range rs {
		config.RouteDefaults(&rs[i])
	}
	return &Builder{routes: rs, health: h, ups: map[string]*Upstream{}}
}

// Queries returns what discovery must fetch for these routes.
func (b *Builder) Queries() []discovery.Query {
	var qs []discovery.Query
	for i := range b.routes {
		q := discovery.Query{Service: b.routes[i].Service, Tag: b.routes[i].Tag}
		if !slices.Contains(qs, q) {
			qs = append(qs, q)
		}
	}
	return qs
}

// Build makes a new table from snaps (a missing snapshot: no upstreams).
func (b *Builder) Build(snaps map[discovery.Query]*discovery.Snapshot) *Table {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.states == nil {
		b.states = make([]*routeState, len(b.routes))
		b.serving = make([]bool, len(b.routes))
		b.ext = make([]any, len(b.routes))
		b.sels = make([]Selector, len(b.routes))
		for i := range b.routes {
			b.states[i] = &routeState{}
			b.sels[i] = NewSelector(b.routes[i].Policy)
			if b.OnRoute != nil {
				b.ext[i] = b.OnRoute(i, &b.routes[i])
			}
		}
	}
	b.version++
	t := &Table{Version: b.version, Built: time.Now(), exact: map[string]*Route{}}
	now := t.Built.UnixNano()
	seen := make(map[string]bool, len(b.ups))
	var keyBuf []byte
	for i := range b.routes {
		rc := &b.routes[i]
		r := &Route{
			Index: i, Name: rc.Hosts[0], Config: *rc,
			Query: discovery.Query{Service: rc.Service, Tag: rc.Tag},
			Ext:   b.ext[i], sel: b.sels[i], health: &b.health, state: b.states[i],
		}
		num, name, _ := config.ParsePort(rc.Port)
		if s := snaps[r.Query]; s != nil {
			r.Snapshot = s
			r.Other = s.Other
			r.Upstreams = make([]*Upstream, 0, len(s.Instances))
			r.Members = make([]discovery.Instance, 0, len(s.Instances))
			for _, in := range s.Instances {
				port, ok := ResolvePort(&in, num, name)
				if !ok {
					r.Skipped = append(r.Skipped, in)
					continue
				}
				addr := net.JoinHostPort(in.Address, strconv.Itoa(port))
				keyBuf = appendKey(keyBuf[:0], i, in.Node, in.ID, addr)
				u, ok := b.ups[string(keyBuf)]
				if !ok {
					key := string(keyBuf)
					u = &Upstream{Key: key, Addr: addr, ServiceID: in.ID, Node: in.Node, Route: i}
					if b.serving[i] {
						u.joined = now // it joins a route already serving: slow start
					}
					if b.OnNew != nil {
						b.OnNew(rc, u)
					}
					b.ups[key] = u
				}
				seen[u.Key] = true
				r.Upstreams = append(r.Upstreams, u)
				r.Members = append(r.Members, in)
			}
		}
		if r.Snapshot != nil && r.Snapshot.Ready() {
			b.serving[i] = true // instances that come after this answer join a serving route
		}
		t.Routes = append(t.Routes, r)
		for _, h := range rc.Hosts {
			h = strings.ToLower(strings.TrimSuffix(h, "."))
			switch {
			case h == "*":
				t.def = r
			case strings.HasPrefix(h, "*."):
				t.suffix = append(t.suffix, suffixRoute{suffix: []byte(h[1:]), route: r})
			default:
				t.exact[h] = r
			}
		}
	}
	slices.SortStableFunc(t.suffix, func(a, b suffixRoute) int { return len(b.suffix) - len(a.suffix) })
	for k, u := range b.ups {
		if !seen[k] {
			delete(b.ups, k)
			if b.OnGone != nil {
				b.OnGone(u)
			}
		}
	}
	return t
}

// Replace retires b for next (a configuration reload). An upstream of a
// route that next has unchanged (wherever it now is in the list) carries on
// into next: passive health, slow start, keep-alive pool and metrics
// intact. OnGone is told of every other. next's tables continue b's version
// numbers. Tables b built stay usable for the requests that hold them.
func (b *Builder) Replace(next *Builder) {
	b.mu.Lock()
	defer b.mu.Unlock()
	next.mu.Lock()
	defer next.mu.Unlock()
	// moved[i] is where b's route i is in next, -1 if it is not there
	// unchanged. Validation makes first hosts unique, so a route matches
	// at most one.
	moved := make([]int, len(b.routes))
	for i := range b.routes {
		moved[i] = slices.IndexFunc(next.routes, func(r config.Route) bool { return reflect.DeepEqual(b.routes[i], r) })
	}
	for k, u := range b.ups {
		delete(b.ups, k)
		if j := moved[u.Route]; j >= 0 {
			u.Route = j
			u.Key = string(appendKey(nil, j, u.Node, u.ServiceID, u.Addr))
			next.ups[u.Key] = u
			continue
		}
		if b.OnGone != nil {
			b.OnGone(u)
		}
	}
	next.version = max(next.version, b.version)
}

// appendKey appends an upstream's Key: its route's index, node, service
// ID and address.
func appendKey(dst []byte, route int, node, serviceID, addr string) []byte {
	dst = strconv.AppendInt(dst, int64(route), 10)
	dst = append(dst, '|')
	dst = append(dst, node...)
	dst = append(dst, '|')
	dst = append(dst, serviceID...)
	dst = append(dst, '|')
	return append(dst, addr...)
}

// ResolvePort is the port of in for a route port given as a number (num >
// 0) or a name: meta "port_<name>"; "passthru_http" falls back to the
// service port, "service" is the service port.
func ResolvePort(in *discovery.Instance, num int, name string) (int, bool) {
	if num > 0 {
		return num, true
	}
	if name == "service" {
		return in.Port, in.Port > 0
	}
	if v, ok := in.Meta[contract.MetaPortPrefix+name]; ok {
		p, err := strconv.Atoi(v)
		return p, err == nil && p > 0 && p < 65536
	}
	if name == "passthru_http" && in.Port > 0 {
		return in.Port, true
	}
	return 0, false
}

// String describes u for logs.
func (u *Upstream) String() string { return fmt.Sprintf("%s (%s on %s)", u.Addr, u.ServiceID, u.Node) }
