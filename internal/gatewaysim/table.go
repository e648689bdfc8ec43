package gatewaysim

import (
	"sort"
	"strings"
)

// route is one deployed API with its answer fragments precomputed.
type route struct {
	api  *API
	file string
	// head is the start of every 200 answer of this API:
	// {"api":..,"version":..,"context":..,"file":..,"node":..,
	head []byte
	// tmpl[i] is `"template":"<resource i template>",` of resource i.
	tmpl [][]byte
}

// table is an immutable routing table; the scanner builds a new one and swaps
// it in with an atomic.Pointer, the request path only reads it.
type table struct {
	// byFirst indexes routes by the first segment of their prefix; routes
	// with a longer prefix come first. Routes with the root prefix ("") are
	// under "".
	byFirst map[string][]*route
	count   int
}

func newTable(routes []*route) *table {
	t := &table{byFirst: make(map[string][]*route), count: len(routes)}
	for _, r := range routes {
		k := firstSegment(r.api.Prefix)
		t.byFirst[k] = append(t.byFirst[k], r)
	}
	for _, rs := range t.byFirst {
		sort.SliceStable(rs, func(i, j int) bool { return len(rs[i].api.Prefix) > len(rs[j].api.Prefix) })
	}
	return t
}

// firstSegment returns the first segment of an absolute path without
// allocating: "/a/b" -> "a", "/a" -> "a", "" -> "".
func firstSegment(p string) string {
	if len(p) > 0 && p[0] == '/' {
		p = p[1:]
	}
	if i := strings.IndexByte(p, '/'); i >= 0 {
		p = p[:i]
	}
	return p
}

// lookupResult is the outcome of a routing decision.
type lookupResult int

const (
	lookupNotFound lookupResult = iota
	lookupOK
	lookupMethodNotAllowed
)

// lookup finds the route and resource for a request. For a 405 it returns the
// route whose resource matched the path (for the Allow header). It does not
// allocate.
func (t *table) lookup(method, path string) (lookupResult, *route, int, string) {
	if t == nil {
		return lookupNotFound, nil, 0, ""
	}
	var (
		res     = lookupNotFound
		notAll  *route
		notAllI int
		notSub  string
	)
	try := func(rs []*route) (*route, int, string, bool) {
		for _, r := range rs {
			p := r.api.Prefix
			if !strings.HasPrefix(path, p) {
				continue
			}
			sub := path[len(p):]
			if sub == "" {
				sub = "/"
			} else if sub[0] != '/' {
				continue // "/pizzashackX" must not match "/pizzashack"
			}
			for i := range r.api.Resources {
				rr := &r.api.Resources[i]
				if !rr.matchPath(sub) {
					continue
				}
				if rr.allows(method) {
					return r, i, sub, true
				}
				if res == lookupNotFound {
					res, notAll, notAllI, notSub = lookupMethodNotAllowed, r, i, sub
				}
			}
		}
		return nil, 0, "", false
	}
	if r, i, sub, ok := try(t.byFirst[firstSegment(path)]); ok {
		return lookupOK, r, i, sub
	}
	if r, i, sub, ok := try(t.byFirst[""]); ok {
		return lookupOK, r, i, sub
	}
	return res, notAll, notAllI, notSub
}

// allowFor is the Allow header of a 405: the methods of every resource of the
// route whose template matches sub.
func (r *route) allowFor(sub string) string {
	var ms []string
	seen := map[string]bool{}
	for i := range r.api.Resources {
		rr := &r.api.Resources[i]
		if !rr.matchPath(sub) {
			continue
		}
		for _, m := range rr.Methods {
			if !seen[m] {
				seen[m] = true
				ms = append(ms, m)
			}
		}
	}
	return strings.Join(ms, ", ")
}

// newRoute precomputes the answer fragments of an API for this node.
func newRoute(a *API, file, node string) *route {
	r := &route{api: a, file: file}
	b := []byte(`{"api":`)
	b = appendJSONString(b, a.Name)
	b = append(b, `,"version":`...)
	b = appendJSONString(b, a.Version)
	b = append(b, `,"context":`...)
	b = appendJSONString(b, a.Context)
	b = append(b, `,"file":`...)
	b = appendJSONString(b, file)
	b = append(b, `,"node":`...)
	b = appendJSONString(b, node)
	b = append(b, ',')
	r.head = b
	for _, res := range a.Resources {
		t := []byte(`"template":`)
		t = appendJSONString(t, res.Template)
		t = append(t, ',')
		r.tmpl = append(r.tmpl, t)
	}
	return r
}
