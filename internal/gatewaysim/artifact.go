package gatewaysim

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
)

// API is one parsed Synapse API artifact (<api> element of an api/*.xml file).
type API struct {
	Name        string // name attribute
	Context     string // context attribute as written
	Version     string // version attribute ("" = unversioned)
	VersionType string // version-type attribute ("url", "context" or "")
	// Prefix is the URL path prefix the API answers under, computed from
	// Context and Version: "/<context>/<version>", or Context with
	// "{version}" replaced by Version when it contains that placeholder, or
	// Context alone when the version is empty or (version-type="context")
	// Context already ends with "/<version>" (the API-M 4.x layout).
	Prefix    string
	Resources []Resource
}

// Resource is one <resource> of an API.
type Resource struct {
	// Methods allowed, upper case; empty means every method.
	Methods []string
	// Template is the uri-template or url-mapping as written ("" matches
	// every path).
	Template string
	segs     []segment
	anyPath  bool // no template: matches everything
}

// segment kinds of a compiled uri-template.
const (
	segLiteral = iota // exact text
	segParam          // {name}: one non-empty path segment
	segAffix          // pre{name}suf: one segment with a literal prefix/suffix
	segStar           // * not last: exactly one segment
	segRest           // * last: the rest of the path, possibly empty
)

type segment struct {
	kind     int
	lit      string // segLiteral: text; segAffix: prefix
	suf      string // segAffix: suffix
	template string
}

type xmlAPI struct {
	XMLName     xml.Name      `xml:"api"`
	Name        string        `xml:"name,attr"`
	Context     string        `xml:"context,attr"`
	Version     string        `xml:"version,attr"`
	VersionType string        `xml:"version-type,attr"`
	Resources   []xmlResource `xml:"resource"`
}

type xmlResource struct {
	Methods     string `xml:"methods,attr"`
	URITemplate string `xml:"uri-template,attr"`
	URLMapping  string `xml:"url-mapping,attr"`
}

// maxArtifactSize bounds what the scanner reads of one artifact file.
const maxArtifactSize = 4 << 20

// ParseAPI parses a Synapse API artifact: <api name=".." context="/ctx"
// version="1.0.0"> with one or more <resource methods="GET POST"
// uri-template="/path/*"> children (url-mapping is accepted too). Everything
// inside a resource (sequences, endpoints) is ignored.
func ParseAPI(data []byte) (*API, error) {
	if len(data) > maxArtifactSize {
		return nil, fmt.Errorf("artifact larger than %d bytes", maxArtifactSize)
	}
	var x xmlAPI
	dec := xml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&x); err != nil {
		return nil, fmt.Errorf("parse XML: %w", err)
	}
	a := &API{
		Name:        strings.TrimSpace(x.Name),
		Context:     strings.TrimSpace(x.Context),
		Version:     strings.TrimSpace(x.Version),
		VersionType: strings.TrimSpace(x.VersionType),
	}
	if a.Name == "" {
		return nil, errors.New("api: missing name attribute")
	}
	if a.Context == "" {
		return nil, errors.New("api: missing context attribute")
	}
	if !strings.HasPrefix(a.Context, "/") {
		return nil, fmt.Errorf("api: context %q does not start with /", a.Context)
	}
	if strings.ContainsAny(a.Version, "/?#{} ") {
		return nil, fmt.Errorf("api: invalid version %q", a.Version)
	}
	prefix, err := apiPrefix(a.Context, a.Version, a.VersionType)
	if err != nil {
		return nil, err
	}
	a.Prefix = prefix
	if len(x.Resources) == 0 {
		return nil, errors.New("api: no <resource> element")
	}
	for i, xr := range x.Resources {
		r, err := compileResource(xr)
		if err != nil {
			return nil, fmt.Errorf("api: resource %d: %w", i+1, err)
		}
		a.Resources = append(a.Resources, r)
	}
	return a, nil
}

func apiPrefix(context, version, versionType string) (string, error) {
	p := context
	switch {
	case strings.Contains(p, "{version}"):
		if version == "" {
			return "", fmt.Errorf("api: context %q has {version} but the api has no version", context)
		}
		p = strings.ReplaceAll(p, "{version}", version)
	case version == "":
	case versionType == "context" && (strings.HasSuffix(strings.TrimRight(p, "/"), "/"+version)):
	default:
		p = strings.TrimRight(p, "/") + "/" + version
	}
	p = cleanPrefix(p)
	if strings.ContainsAny(p, "{}*?#") {
		return "", fmt.Errorf("api: unsupported characters in context %q", context)
	}
	return p, nil
}

// cleanPrefix collapses duplicate slashes and removes a trailing slash; the
// root context becomes "" (it matches every path).
func cleanPrefix(p string) string {
	for strings.Contains(p, "//") {
		p = strings.ReplaceAll(p, "//", "/")
	}
	return strings.TrimRight(p, "/")
}

func compileResource(xr xmlResource) (Resource, error) {
	var r Resource
	for _, m := range strings.FieldsFunc(xr.Methods, func(c rune) bool { return c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '\r' }) {
		r.Methods = append(r.Methods, strings.ToUpper(m))
	}
	tmpl := strings.TrimSpace(xr.URITemplate)
	if tmpl == "" {
		tmpl = strings.TrimSpace(xr.URLMapping)
	}
	r.Template = tmpl
	if i := strings.IndexByte(tmpl, '?'); i >= 0 { // query part of a uri-template
		tmpl = tmpl[:i]
	}
	if tmpl == "" {
		r.anyPath = true
		return r, nil
	}
	if tmpl == "*" || tmpl == "/*" {
		r.segs = []segment{{kind: segRest, template: "*"}}
		return r, nil
	}
	if !strings.HasPrefix(tmpl, "/") {
		return r, fmt.Errorf("template %q does not start with /", r.Template)
	}
	parts := strings.Split(strings.Trim(tmpl, "/"), "/")
	if len(parts) == 1 && parts[0] == "" {
		parts = nil // template "/"
	}
	for i, p := range parts {
		s, err := compileSegment(p, i == len(parts)-1)
		if err != nil {
			return r, fmt.Errorf("template %q: %w", r.Template, err)
		}
		r.segs = append(r.segs, s)
	}
	return r, nil
}

func compileSegment(p string, last bool) (segment, error) {
	s := segment{template: p}
	switch {
	case p == "*":
		s.kind = segStar
		if last {
			s.kind = segRest
		}
	case strings.ContainsAny(p, "{}"):
		o := strings.IndexByte(p, '{')
		c := strings.LastIndexByte(p, '}')
		if o < 0 || c < o || strings.Count(p, "{") != 1 || strings.Count(p, "}") != 1 || c == o+1 {
			return s, fmt.Errorf("malformed variable in segment %q", p)
		}
		if o == 0 && c == len(p)-1 {
			s.kind = segParam
		} else {
			s.kind, s.lit, s.suf = segAffix, p[:o], p[c+1:]
		}
	case p == "":
		return s, errors.New("empty path segment")
	case strings.Contains(p, "*"):
		return s, fmt.Errorf("wildcard inside segment %q is not supported", p)
	default:
		s.kind, s.lit = segLiteral, p
	}
	return s, nil
}

// matchPath reports whether the resource template matches path (the part of
// the request path after the API prefix; "/" or "/a/b"). It does not allocate.
func (r *Resource) matchPath(path string) bool {
	if r.anyPath {
		return true
	}
	rest := path
	if len(rest) > 1 && rest[len(rest)-1] == '/' { // tolerate one trailing slash
		rest = rest[:len(rest)-1]
	}
	if len(rest) > 0 && rest[0] == '/' {
		rest = rest[1:]
	}
	for _, s := range r.segs {
		if s.kind == segRest {
			return true
		}
		if rest == "" {
			return false
		}
		seg := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			seg, rest = rest[:i], rest[i+1:]
		} else {
			rest = ""
		}
		switch s.kind {
		case segLiteral:
			if seg != s.lit {
				return false
			}
		case segParam, segStar:
			if seg == "" {
				return false
			}
		case segAffix:
			if len(seg) <= len(s.lit)+len(s.suf) || !strings.HasPrefix(seg, s.lit) || !strings.HasSuffix(seg, s.suf) {
				return false
			}
		}
	}
	return rest == ""
}

// allows reports whether the resource accepts the method.
func (r *Resource) allows(method string) bool {
	if len(r.Methods) == 0 {
		return true
	}
	for _, m := range r.Methods {
		if m == method {
			return true
		}
	}
	return false
}
