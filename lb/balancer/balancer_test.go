package balancer

import (
	"fmt"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/discovery"
)

var testHealth = Health{ConsecutiveFailures: 3, BaseEjection: time.Second, MaxEjection: 8 * time.Second, MaxEjectedPercent: 50}

func snap(service string, n int) map[discovery.Query]*discovery.Snapshot {
	s := &discovery.Snapshot{Query: discovery.Query{Service: service}, Updated: time.Now()}
	for i := range n {
		s.Instances = append(s.Instances, discovery.Instance{
			ID: fmt.Sprintf("gw-%d", i), Node: fmt.Sprintf("node-%d", i%50),
			Address: fmt.Sprintf("10.0.%d.%d", i/250, i%250), Port: 8280,
			Meta:   map[string]string{"port_passthru_http": "8280", "port_http": "9763"},
			Status: "passing",
		})
	}
	return map[discovery.Query]*discovery.Snapshot{s.Query: s}
}

func build(t testing.TB, policy string, n int) (*Builder, *Table) {
	b := NewBuilder([]config.Route{{Hosts: []string{"gw.example.com", "*.api.example.com"}, Policy: policy}}, testHealth)
	return b, b.Build(snap("apim-gateway", n))
}

func TestMatch(t *testing.T) {
	b := NewBuilder([]config.Route{
		{Hosts: []string{"gw.example.com"}},
		{Hosts: []string{"*.example.com"}},
		{Hosts: []string{"*.api.example.com"}},
		{Hosts: []string{"*"}},
	}, testHealth)
	tb := b.Build(nil)
	for host, want := range map[string]int{
		"gw.example.com": 0, "GW.Example.COM:443": 0, "gw.example.com.": 0,
		"x.example.com": 1, "a.b.api.example.com": 2, "x.api.example.com:80": 2,
		"example.com": 3, "other": 3, "[::1]:80": 3, "": 3,
	} {
		r := tb.Match([]byte(host))
		if r == nil || r.Index != want {
			t.Errorf("Match(%q) = %v, want route %d", host, r, want)
		}
	}
	b2 := NewBuilder([]config.Route{{Hosts: []string{"only.example.com"}}}, testHealth)
	if r := b2.Build(nil).Match([]byte("nope")); r != nil {
		t.Errorf("no default route: got %v", r)
	}
}

func TestResolvePort(t *testing.T) {
	in := &discovery.Instance{Port: 8280, Meta: map[string]string{"port_http": "9763", "port_bad": "x"}}
	for _, c := range []struct {
		port string
		want int
		ok   bool
	}{{"passthru_http", 8280, true}, {"http", 9763, true}, {"https", 0, false}, {"bad", 0, false}, {"1234", 1234, true}, {"service", 8280, true}} {
		num, name, err := config.ParsePort(c.port)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := ResolvePort(in, num, name)
		if got != c.want || ok != c.ok {
			t.Errorf("port %q: got %d %v, want %d %v", c.port, got, ok, c.want, c.ok)
		}
	}
}

func TestUpstreamsSurviveRebuild(t *testing.T) {
	b, t1 := build(t, "p2c", 3)
	r := t1.Routes[0]
	if len(r.Upstreams) != 3 || r.Upstreams[0].Addr != "10.0.0.0:8280" {
		t.Fatalf("upstreams: %v", r.Upstreams)
	}
	u := r.Upstreams[1]
	u.Acquire()
	t2 := b.Build(snap("apim-gateway", 3))
	if t2.Routes[0].Upstreams[1] != u || u.Inflight() != 1 || t2.Version != t1.Version+1 {
		t.Fatalf("upstream not carried over")
	}
	gone := 0
	b.OnGone = func(*Upstream) { gone++ }
	b.Build(snap("apim-gateway", 1))
	if gone != 2 {
		t.Fatalf("OnGone called %d times, want 2", gone)
	}
}

// A reload carries the instances of an unchanged route over wherever the
// route moved; a changed route's instances are gone, and a carried one is
// found again by the next Build (not made anew).
func TestReplaceCarriesMovedRoutes(t *testing.T) {
	a := config.Route{Hosts: []string{"a.example.com"}}
	b1 := config.Route{Hosts: []string{"b.example.com"}, Policy: "p2c"}
	old := NewBuilder([]config.Route{a, b1}, testHealth)
	gone := map[string]bool{}
	old.OnGone = func(u *Upstream) { gone[u.Key] = true }
	t1 := old.Build(snap("apim-gateway", 2))
	ua, ub := t1.Routes[0].Upstreams[0], t1.Routes[1].Upstreams[0]
	ub.Acquire()

	b2 := b1
	b2.Policy = "least_conn" // changed: its instances start over
	next := NewBuilder([]config.Route{{Hosts: []string{"new.example.com"}}, b2, a}, testHealth)
	made := 0
	next.OnNew = func(*config.Route, *Upstream) { made++ }
	old.Replace(next)
	if len(gone) != 2 || gone[ua.Key] {
		t.Fatalf("gone after Replace: %v; a's instance %s must carry on", gone, ua.Key)
	}
	t2 := next.Build(snap("apim-gateway", 2))
	if got := t2.Routes[2].Upstreams[0]; got != ua || got.Route != 2 {
		t.Errorf("route a moved from 0 to 2: its instance is %p (route %d), want %p carried over", got, got.Route, ua)
	}
	if got := t2.Routes[1].Upstreams[0]; got == ub || got.Inflight() != 0 {
		t.Errorf("route b changed: its instance was carried over")
	}
	if made != 4 { // new.example.com's two and changed b's two
		t.Errorf("OnNew called %d times, want 4", made)
	}
	if t2.Version <= t1.Version {
		t.Errorf("version %d after %d", t2.Version, t1.Version)
	}
}

func TestPoliciesSpreadAndSkip(t *testing.T) {
	for _, p := range config.Policies {
		t.Run(p, func(t *testing.T) {
			_, tb := build(t, p, 3)
			r := tb.Routes[0]
			count := map[*Upstream]int{}
			now := time.Now().UnixNano()
			for range 300 {
				var tr Tried
				u := r.Pick(&tr, now)
				count[u]++
				if p != "round_robin" {
					u.Acquire() // least_conn and p2c must then avoid it
				}
			}
			for _, u := range r.Upstreams {
				if count[u] < 60 {
					t.Errorf("%s got %d of 300 picks", u.Addr, count[u])
				}
			}
			var tr Tried
			for range 3 {
				u := r.Pick(&tr, now)
				if u == nil || tr.Has(u) {
					t.Fatalf("pick %v: nil or tried again", u)
				}
				tr.Add(u)
			}
			if u := r.Pick(&tr, now); u != nil {
				t.Fatalf("all tried, got %v", u)
			}
		})
	}
}

func TestEjectionBackoffAndPanicThreshold(t *testing.T) {
	_, tb := build(t, "round_robin", 4)
	r := tb.Routes[0]
	now := time.Now().UnixNano()
	a, b, c := r.Upstreams[0], r.Upstreams[1], r.Upstreams[2]
	for i := 0; i < 2; i++ {
		if d := r.ReportFailure(a, now); d != 0 {
			t.Fatalf("ejected after %d failures", i+1)
		}
	}
	if d := r.ReportFailure(a, now); d != time.Second {
		t.Fatalf("third failure: ejected for %v, want 1s", d)
	}
	var tr Tried
	for range 20 {
		if r.Pick(&tr, now) == a {
			t.Fatal("ejected upstream picked")
		}
	}
	// After the ejection, one failure (probation) ejects again, for longer.
	later := now + int64(1100*time.Millisecond)
	if d := r.ReportFailure(a, later); d != 2*time.Second {
		t.Fatalf("probation failure: ejected for %v, want 2s", d)
	}
	// Panic threshold 50% of 4: b can go, c cannot.
	for range 3 {
		r.ReportFailure(b, later)
	}
	if !b.Ejected(later) {
		t.Fatal("b not ejected")
	}
	for range 5 {
		if d := r.ReportFailure(c, later); d != 0 {
			t.Fatal("panic threshold exceeded")
		}
	}
	// A success resets the backoff once the ejection is over.
	muchLater := later + int64(10*time.Second)
	r.ReportSuccess(a, muchLater)
	if a.ConsecutiveFailures() != 0 || a.ejections.Load() != 0 {
		t.Fatal("success did not reset")
	}
	// Everything ejected or tried: Pick ignores ejection rather than fail.
	var tr2 Tried
	tr2.Add(c)
	tr2.Add(r.Upstreams[3])
	if u := r.Pick(&tr2, later); u != a && u != b {
		t.Fatalf("panic pick = %v", u)
	}
}

func TestPickDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under -race")
	}
	for _, p := range config.Policies {
		_, tb := build(t, p, 1000)
		r := tb.Routes[0]
		now := time.Now().UnixNano()
		if n := testing.AllocsPerRun(1000, func() {
			var tr Tried
			u := r.Pick(&tr, now)
			tr.Add(u)
			r.Pick(&tr, now)
		}); n != 0 {
			t.Errorf("%s: %v allocs per pick", p, n)
		}
		if n := testing.AllocsPerRun(1000, func() { tb.Match([]byte("GW.example.com:443")) }); n != 0 {
			t.Errorf("Match: %v allocs", n)
		}
	}
}

func BenchmarkPick1000(b *testing.B) {
	for _, p := range config.Policies {
		b.Run(p, func(b *testing.B) {
			_, tb := build(b, p, 1000)
			now := time.Now().UnixNano()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var tr Tried
					r := tb.Match([]byte("gw.example.com"))
					u := r.Pick(&tr, now)
					u.Acquire()
					u.Release()
				}
			})
		})
	}
}

func BenchmarkRebuild1000(b *testing.B) {
	bl, _ := build(b, "p2c", 1000)
	s1, s2 := snap("apim-gateway", 1000), snap("apim-gateway", 999)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			bl.Build(s1)
		} else {
			bl.Build(s2) // one instance leaves and comes back every other build
		}
	}
}

// Slow start: the instances of the route's first answer are not ramped; one
// that joins later gets about a tenth of its share at first, half-way more,
// all of it once slow_start has passed, and is still used when it is the
// only choice left. Picks stay allocation-free.
func TestSlowStartRampsNewcomers(t *testing.T) {
	h := testHealth
	h.SlowStart = 10 * time.Second
	for _, p := range config.Policies {
		t.Run(p, func(t *testing.T) {
			b := NewBuilder([]config.Route{{Hosts: []string{"gw.example.com"}, Policy: p}}, h)
			first := b.Build(snap("apim-gateway", 3)).Routes[0]
			for _, u := range first.Upstreams {
				if !u.WarmUntil(h.SlowStart).IsZero() {
					t.Fatalf("%s of the first answer is ramped", u.Addr)
				}
			}
			r := b.Build(snap("apim-gateway", 4)).Routes[0]
			var newcomer *Upstream
			for _, u := range r.Upstreams {
				if !u.WarmUntil(h.SlowStart).IsZero() {
					newcomer = u
				}
			}
			if newcomer == nil || newcomer.Addr != "10.0.0.3:8280" {
				t.Fatalf("the newcomer is not ramped: %v", newcomer)
			}
			share := func(at time.Duration) float64 {
				now := newcomer.joined + int64(at)
				n := 0
				const picks = 20000
				for range picks {
					var tr Tried
					u := r.Pick(&tr, now)
					if u == newcomer {
						n++
					}
				}
				return float64(n) / picks
			}
			// A full share is 1/4 of the picks. At the start ~0.1 of
			// it, half-way ~0.55 of it, after slow_start all of it.
			if s := share(0); s < 0.01 || s > 0.06 {
				t.Errorf("share at the start %.3f, want about 0.025", s)
			}
			if s := share(5 * time.Second); s < 0.09 || s > 0.19 {
				t.Errorf("share half-way %.3f, want about 0.14", s)
			}
			if s := share(10 * time.Second); s < 0.2 || s > 0.3 {
				t.Errorf("share after slow_start %.3f, want about 0.25", s)
			}
			// The only candidate left: used whatever its ramp.
			var tr Tried
			for _, u := range r.Upstreams {
				if u != newcomer {
					tr.Add(u)
				}
			}
			if u := r.Pick(&tr, newcomer.joined); u != newcomer {
				t.Errorf("the only choice left was not taken: %v", u)
			}
			if !raceEnabled {
				if n := testing.AllocsPerRun(1000, func() {
					var tr Tried
					r.Pick(&tr, newcomer.joined)
				}); n != 0 {
					t.Errorf("%v allocs per pick during a slow start", n)
				}
			}
		})
	}
}
