package gatewaysim

import (
	"strings"
	"testing"
)

// FuzzParseAPI checks that the artifact parser never panics and that what it
// accepts is routable: the prefix is clean, templates are compiled, and a
// lookup of the API's own paths neither panics nor allocates a wrong match.
// Seed corpus: testdata/fuzz/FuzzParseAPI. Run: go test -fuzz=FuzzParseAPI.
func FuzzParseAPI(f *testing.F) {
	f.Add(SampleAPI)
	f.Add([]byte(`<api name="A" context="/{version}/a" version="1"><resource methods="GET POST" uri-template="/x/{id}/*"/></api>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := ParseAPI(data)
		if err != nil {
			if a != nil {
				t.Fatal("API returned with an error")
			}
			return
		}
		if a.Name == "" || len(a.Resources) == 0 {
			t.Fatalf("accepted API without name or resources: %+v", a)
		}
		if a.Prefix != "" && (!strings.HasPrefix(a.Prefix, "/") || strings.HasSuffix(a.Prefix, "/") || strings.Contains(a.Prefix, "//")) {
			t.Fatalf("unclean prefix %q", a.Prefix)
		}
		tbl := newTable([]*route{newRoute(a, "f.xml", "gw1")})
		for _, r := range a.Resources {
			for _, m := range r.Methods {
				if m != strings.ToUpper(m) || m == "" {
					t.Fatalf("method %q not upper case", m)
				}
			}
			// A literal path built from the template must reach this API.
			path := a.Prefix + strings.NewReplacer("{", "", "}", "", "*", "s").Replace(strings.SplitN(r.Template, "?", 2)[0])
			method := "GET"
			if len(r.Methods) > 0 {
				method = r.Methods[0]
			}
			res, rt, _, _ := tbl.lookup(method, path)
			if !strings.ContainsAny(r.Template, "{*") && r.Template != "" && strings.HasPrefix(r.Template, "/") && !strings.Contains(r.Template, "//") {
				if res == lookupNotFound {
					t.Fatalf("%s %s (template %q) not found", method, path, r.Template)
				}
			}
			if res != lookupNotFound && rt.api != a {
				t.Fatal("matched another API")
			}
		}
		tbl.lookup("GET", "/")
		tbl.lookup("DELETE", a.Prefix+"/a/b/c/")
	})
}
