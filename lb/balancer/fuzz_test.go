package balancer

import (
	"bytes"
	"strings"
	"testing"

	"github.com/gwnomad/gwnomad/lb/config"
)

// FuzzMatch checks host/route matching against a plain model of the rules:
// the Host header loses its port ("host:port", "[v6]:port"), one trailing
// dot and its ASCII case; then an exact host wins, then the longest
// "*.suffix", then "*". The fuzzer picks the Host header and three route
// patterns (reduced to valid host characters, as config validation would).
//
//	go test ./lb/balancer -run '^$' -fuzz '^FuzzMatch$' -fuzztime 20s
func FuzzMatch(f *testing.F) {
	for _, c := range [][4]string{
		{"gw.example.com", "gw.example.com", "*.example.com", "*"},
		{"GW.Example.COM:443", "gw.example.com", "*.example.com", ""},
		{"a.b.api.example.com", "*.example.com", "*.api.example.com", ""},
		{"x.api.example.com:80", "*.api.example.com", "api.example.com", "*"},
		{"example.com", "*.example.com", "example.com.", ""},
		{"[::1]:8080", "::1", "*", ""},
		{"[::1]", "[::1]", "", "*"},
		{"::1", "::1", "*", ""},
		{"host.:1", "host", "", ""},
		{"", "*", "", ""},
		{"...", ".", "*..", ""},
		{strings.Repeat("a", 300) + ".com", "*.com", "", ""},
	} {
		f.Add(c[0], c[1], c[2], c[3])
	}
	f.Fuzz(func(t *testing.T, host, p1, p2, p3 string) {
		var routes []config.Route
		for _, p := range []string{p1, p2, p3} {
			if p = hostChars(p); p != "" {
				routes = append(routes, config.Route{Hosts: []string{p}})
			}
		}
		tb := NewBuilder(routes, testHealth).Build(nil)
		got := tb.Match([]byte(host))
		want := modelMatch(routes, host)
		if got != nil && (got.Index < 0 || got.Index >= len(tb.Routes) || tb.Routes[got.Index] != got) {
			t.Fatalf("Match(%q) returned a route not in the table", host)
		}
		if idx(got) != want {
			t.Fatalf("Match(%q) with routes %v = route %d, model says %d", host, patterns(routes), idx(got), want)
		}
		if up := bytes.ToUpper([]byte(host)); idx(tb.Match(up)) != idx(got) && isASCII(host) {
			t.Fatalf("Match is case-sensitive: %q vs %q", host, up)
		}
		if !strings.ContainsAny(host, ":[]") && len(host) < 200 {
			if r := tb.Match([]byte(host + ":8443")); idx(r) != idx(got) {
				t.Fatalf("port changes the route: %q", host)
			}
		}
	})
}

func idx(r *Route) int {
	if r == nil {
		return -1
	}
	return r.Index
}

func patterns(rs []config.Route) []string {
	var p []string
	for _, r := range rs {
		p = append(p, r.Hosts[0])
	}
	return p
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// hostChars keeps what a configured host may hold: ASCII letters, digits,
// '-', '.', ':' (IPv6), '[' ']' and a leading "*".
func hostChars(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 80; i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.', c == ':', c == '[', c == ']':
			b.WriteByte(c)
		case c == '*' && b.Len() == 0:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// modelMatch is the matching rule written plainly; it returns the route
// index or -1.
func modelMatch(routes []config.Route, host string) int {
	h := host
	if strings.HasPrefix(h, "[") && strings.Index(h, "]") > 0 {
		h = h[1:strings.Index(h, "]")]
	} else if i := strings.LastIndex(h, ":"); i >= 0 && !strings.Contains(h[:i], ":") {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	def := -1
	exact := map[string]int{}
	type suf struct {
		s string
		i int
	}
	var sufs []suf
	for i, r := range routes {
		p := strings.ToLower(strings.TrimSuffix(r.Hosts[0], "."))
		switch {
		case p == "*":
			def = i
		case strings.HasPrefix(p, "*."):
			sufs = append(sufs, suf{p[1:], i})
		default:
			exact[p] = i
		}
	}
	if len(h) > 256 {
		return def
	}
	h = asciiLower(h)
	if i, ok := exact[h]; ok {
		return i
	}
	best := -1
	for _, s := range sufs {
		if strings.HasSuffix(h, s.s) && (best < 0 || len(s.s) > len(sufs[best].s)) {
			best = indexOf(sufs, s.i, func(x suf) int { return x.i })
		}
	}
	if best >= 0 {
		return sufs[best].i
	}
	return def
}

func indexOf[T any](xs []T, v int, key func(T) int) int {
	for i, x := range xs {
		if key(x) == v {
			return i
		}
	}
	return -1
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
