package gatewaysim

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestParseAPISample(t *testing.T) {
	a, err := ParseAPI(SampleAPI)
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != "PizzaShackAPI" || a.Context != "/pizzashack" || a.Version != "1.0.0" || a.Prefix != "/pizzashack/1.0.0" {
		t.Errorf("api: %+v", a)
	}
	var got []string
	for _, r := range a.Resources {
		got = append(got, strings.Join(r.Methods, ",")+" "+r.Template)
	}
	want := []string{"GET /menu", "POST /order", "GET /order/{orderId}"}
	if !slices.Equal(got, want) {
		t.Errorf("resources %q, want %q", got, want)
	}
}

func apiXML(name, context, version, extra string, resources ...string) []byte {
	var b strings.Builder
	b.WriteString(`<api xmlns="http://ws.apache.org/ns/synapse" name="` + name + `" context="` + context + `"`)
	if version != "" {
		b.WriteString(` version="` + version + `"`)
	}
	b.WriteString(" " + extra + ">\n")
	for _, r := range resources {
		m, tmpl, _ := strings.Cut(r, " ")
		b.WriteString(`<resource`)
		if m != "" && m != "-" {
			b.WriteString(` methods="` + strings.ReplaceAll(m, ",", " ") + `"`)
		}
		if tmpl != "" {
			b.WriteString(` uri-template="` + tmpl + `"`)
		}
		b.WriteString("><inSequence><send><endpoint><address uri=\"http://backend/x\"/></endpoint></send></inSequence></resource>\n")
	}
	b.WriteString("</api>\n")
	return []byte(b.String())
}

func TestParseAPIPrefix(t *testing.T) {
	for _, tc := range []struct{ context, version, extra, want string }{
		{"/pizzashack", "1.0.0", "", "/pizzashack/1.0.0"},
		{"/pizzashack/", "1.0.0", `version-type="url"`, "/pizzashack/1.0.0"},
		{"/{version}/pizzashack", "2.0", "", "/2.0/pizzashack"},
		{"/pizzashack/{version}", "2.0", `version-type="context"`, "/pizzashack/2.0"},
		{"/pizzashack/1.0.0", "1.0.0", `version-type="context"`, "/pizzashack/1.0.0"},
		{"/pizzashack", "", "", "/pizzashack"},
		{"/a/b", "v1", "", "/a/b/v1"},
		{"/", "", "", ""},
	} {
		a, err := ParseAPI(apiXML("X", tc.context, tc.version, tc.extra, "GET /*"))
		if err != nil {
			t.Errorf("%s %s: %v", tc.context, tc.version, err)
			continue
		}
		if a.Prefix != tc.want {
			t.Errorf("context %q version %q %s: prefix %q, want %q", tc.context, tc.version, tc.extra, a.Prefix, tc.want)
		}
	}
}

func TestParseAPIErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		xml  string
		want string
	}{
		{"not xml", "hello", "parse XML"},
		{"truncated", `<api name="A" context="/a" version="1"><resource uri-template="/x">`, "parse XML"},
		{"wrong root", `<sequence name="A"/>`, "parse XML"},
		{"no name", `<api context="/a"><resource uri-template="/x"/></api>`, "name"},
		{"no context", `<api name="A"><resource uri-template="/x"/></api>`, "context"},
		{"relative context", `<api name="A" context="a"><resource uri-template="/x"/></api>`, "context"},
		{"no resource", `<api name="A" context="/a" version="1"/>`, "no <resource>"},
		{"bad template", `<api name="A" context="/a"><resource uri-template="x"/></api>`, "template"},
		{"unclosed var", `<api name="A" context="/a"><resource uri-template="/x/{id"/></api>`, "malformed"},
		{"{version} without version", `<api name="A" context="/{version}/a"><resource uri-template="/x"/></api>`, "version"},
		{"bad version", `<api name="A" context="/a" version="1/2"><resource uri-template="/x"/></api>`, "version"},
	} {
		_, err := ParseAPI([]byte(tc.xml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

// testTable builds a routing table from artifacts (file name -> XML).
func testTable(t testing.TB, files map[string][]byte) *table {
	t.Helper()
	var routes []*route
	for _, name := range slices.Sorted(maps.Keys(files)) {
		a, err := ParseAPI(files[name])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		routes = append(routes, newRoute(a, name, "gw1"))
	}
	return newTable(routes)
}

func TestLookup(t *testing.T) {
	tbl := testTable(t, map[string][]byte{
		"pizza.xml":  SampleAPI,
		"wild.xml":   apiXML("Wild", "/wild", "v1", "", "GET,POST /files/*", "DELETE /items/{id}", "- /any/*", "GET /f/{name}.json", "PUT /x/*/y"),
		"all.xml":    apiXML("All", "/all", "v1", "", "GET /*"),
		"nover.xml":  apiXML("NoVer", "/nover", "", "", "GET /ping"),
		"ctxver.xml": apiXML("CtxVer", "/{version}/cv", "2.0", "", "GET /"),
		"deep.xml":   apiXML("Deep", "/all/v1/deep", "v2", "", "GET /x"),
		"notmpl.xml": apiXML("NoTmpl", "/notmpl", "1", "", "GET"),
	})
	for _, tc := range []struct {
		method, path string
		want         lookupResult
		api, tmpl    string
	}{
		{"GET", "/pizzashack/1.0.0/menu", lookupOK, "PizzaShackAPI", "/menu"},
		{"GET", "/pizzashack/1.0.0/menu/", lookupOK, "PizzaShackAPI", "/menu"},
		{"POST", "/pizzashack/1.0.0/order", lookupOK, "PizzaShackAPI", "/order"},
		{"GET", "/pizzashack/1.0.0/order/42", lookupOK, "PizzaShackAPI", "/order/{orderId}"},
		{"GET", "/pizzashack/1.0.0/order", lookupMethodNotAllowed, "PizzaShackAPI", "/order"},
		{"DELETE", "/pizzashack/1.0.0/menu", lookupMethodNotAllowed, "PizzaShackAPI", "/menu"},
		{"GET", "/pizzashack/1.0.0/order/42/x", lookupNotFound, "", ""},
		{"GET", "/pizzashack/2.0.0/menu", lookupNotFound, "", ""},
		{"GET", "/pizzashack/menu", lookupNotFound, "", ""},
		{"GET", "/pizzashackX/1.0.0/menu", lookupNotFound, "", ""},
		{"GET", "/pizzashack/1.0.0", lookupNotFound, "", ""},
		{"GET", "/", lookupNotFound, "", ""},
		{"GET", "", lookupNotFound, "", ""},
		{"GET", "/wild/v1/files", lookupOK, "Wild", "/files/*"},
		{"POST", "/wild/v1/files/a/b/c", lookupOK, "Wild", "/files/*"},
		{"PUT", "/wild/v1/files/a", lookupMethodNotAllowed, "Wild", "/files/*"},
		{"DELETE", "/wild/v1/items/7", lookupOK, "Wild", "/items/{id}"},
		{"DELETE", "/wild/v1/items", lookupNotFound, "", ""},
		{"PATCH", "/wild/v1/any/thing", lookupOK, "Wild", "/any/*"},
		{"GET", "/wild/v1/f/report.json", lookupOK, "Wild", "/f/{name}.json"},
		{"GET", "/wild/v1/f/.json", lookupNotFound, "", ""},
		{"GET", "/wild/v1/f/report.xml", lookupNotFound, "", ""},
		{"PUT", "/wild/v1/x/anything/y", lookupOK, "Wild", "/x/*/y"},
		{"PUT", "/wild/v1/x/a/b/y", lookupNotFound, "", ""},
		{"GET", "/all/v1", lookupOK, "All", "/*"},
		{"GET", "/all/v1/", lookupOK, "All", "/*"},
		{"GET", "/all/v1/a/b", lookupOK, "All", "/*"},
		{"GET", "/all/v1/deep/v2/x", lookupOK, "Deep", "/x"},
		{"GET", "/all/v1/deep/v2/y", lookupOK, "All", "/*"}, // longest prefix first, then the next
		{"GET", "/nover/ping", lookupOK, "NoVer", "/ping"},
		{"GET", "/2.0/cv", lookupOK, "CtxVer", "/"},
		{"GET", "/2.0/cv/", lookupOK, "CtxVer", "/"},
		{"GET", "/2.0/cv/x", lookupNotFound, "", ""},
		{"GET", "/notmpl/1/what/ever", lookupOK, "NoTmpl", ""},
	} {
		res, rt, i, _ := tbl.lookup(tc.method, tc.path)
		if res != tc.want {
			t.Errorf("%s %s: result %d, want %d", tc.method, tc.path, res, tc.want)
			continue
		}
		if tc.want == lookupNotFound {
			continue
		}
		if rt.api.Name != tc.api || rt.api.Resources[i].Template != tc.tmpl {
			t.Errorf("%s %s: matched %s %q, want %s %q", tc.method, tc.path, rt.api.Name, rt.api.Resources[i].Template, tc.api, tc.tmpl)
		}
	}
	if got := tbl.byFirst["wild"][0].allowFor("/files/a"); got != "GET, POST" {
		t.Errorf("allow %q, want \"GET, POST\"", got)
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	tbl := testTable(t, map[string][]byte{"pizza.xml": SampleAPI})
	allocs := testing.AllocsPerRun(100, func() {
		if res, _, _, _ := tbl.lookup("GET", "/pizzashack/1.0.0/order/42"); res != lookupOK {
			t.Fatal("no match")
		}
		_ = querySize("a=b&size=1024")
	})
	if allocs != 0 {
		t.Errorf("lookup allocates %.0f times per request", allocs)
	}
}

func TestQuerySize(t *testing.T) {
	for q, want := range map[string]int{
		"": 0, "size=1024": 1024, "a=1&size=10": 10, "size=x": 0, "size=-3": 0, "xsize=3": 0,
		"size=999999999999": MaxPadSize,
	} {
		if got := querySize(q); got != want {
			t.Errorf("querySize(%q) = %d, want %d", q, got, want)
		}
	}
}

func TestPadExactSizeAndValidJSON(t *testing.T) {
	base := []byte(`{"api":"A","path":"/x"`)
	for _, size := range []int{0, 5, len(base) + 2, len(base) + 3, len(base) + 12, len(base) + 13, 1024, 100000} {
		b := pad(append([]byte(nil), base...), size)
		if size > len(base)+2 && len(b) != size {
			t.Errorf("size %d: got %d bytes", size, len(b))
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Errorf("size %d: invalid JSON %q: %v", size, b, err)
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\back`, "ctl\x00\x1f\n\t\r", "<&>", "é€😀", "bad\xff\xfe", "\u2028\u2029"} {
		b := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Errorf("%q: invalid JSON %s: %v", s, b, err)
			continue
		}
		want := strings.ToValidUTF8(s, "\ufffd")
		if s == "bad\xff\xfe" {
			want = "bad\ufffd\ufffd"
		}
		if got != want {
			t.Errorf("%q: round trip %q", s, got)
		}
	}
}
