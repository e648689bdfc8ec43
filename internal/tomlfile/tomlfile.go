// Package tomlfile decodes a TOML file strictly and says where every problem
// is: file:line:column and the dotted key, as in
//
//	lb.toml:12:1: proxy.tries: must be at least 1 (got 0)
//	gwnomad.toml:3:1: gateway.cont: unknown key (did you mean "gateway.count"?)
//
// Both of gwnomad's files use it: the deploy spec (package spec) and lb.toml
// (package lb/config). Decode fills a struct and returns an Index of where
// each key was written, which later validation uses to place its own
// errors (Index.At).
//
// Keys are dotted. An element of an array of tables carries its index:
// the second [[routes]] table's hosts key is "routes[1].hosts".
package tomlfile

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Error is one problem in a file, at a position.
type Error struct {
	File   string // "" when the value did not come from a file
	Line   int    // 1-based; 0 when the key is absent from the file
	Column int    // 1-based
	Key    string // dotted key, e.g. "gateway.count"
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found, one a line.
type Errors []*Error

func (es Errors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap gives errors.As access to each *Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Sort orders es by position, those without one first (stable).
func (es Errors) Sort() {
	sort.SliceStable(es, func(i, j int) bool { return Less(es[i], es[j]) })
}

// Less orders two errors by position.
func Less(a, b *Error) bool {
	if a.Line != b.Line {
		return a.Line < b.Line
	}
	return a.Column < b.Column
}

// Position of a key in the file (1-based; zero: not written).
type Position struct{ Line, Column int }

// Index maps every key written in a file (table headers, keys, keys of
// inline tables) to its position.
type Index map[string]Position

// keySep joins key parts in an Index: keys may contain dots when quoted.
const keySep = "\x1f"

// Has reports whether the dotted key was written.
func (ix Index) Has(dotted string) bool {
	_, ok := ix[strings.ReplaceAll(dotted, ".", keySep)]
	return ok
}

// At returns the position of a key given by its parts, or of the closest
// enclosing table that was written, or the zero Position.
func (ix Index) At(parts ...string) Position {
	for n := len(parts); n > 0; n-- {
		if p, ok := ix[strings.Join(parts[:n], keySep)]; ok {
			return p
		}
	}
	return Position{}
}

// AtDotted is At of a dotted key.
func (ix Index) AtDotted(dotted string) Position { return ix.At(strings.Split(dotted, ".")...) }

// KeyAtLine returns the longest key written on a line, dotted.
func (ix Index) KeyAtLine(line int) (string, bool) {
	best := ""
	for k, p := range ix {
		if p.Line == line && (len(k) > len(best) || len(k) == len(best) && k < best) {
			best = k
		}
	}
	return strings.ReplaceAll(best, keySep, "."), best != ""
}

// Positions walks the document with go-toml's parser and records where
// every table header and key (inline tables included) was written. A syntax
// error stops the walk (Decode reports it).
func Positions(data []byte) Index {
	ix := Index{}
	var p unstable.Parser
	p.Reset(data)
	var table []string
	arrays := map[string]int{} // an array of tables (raw parts) -> index of its last element
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table:
			table = indexed(keyParts(e), arrays)
			ix.add(table, p.Shape(keyRange(e)).Start)
		case unstable.ArrayTable:
			raw := keyParts(e)
			k := strings.Join(raw, keySep)
			n, seen := arrays[k]
			if seen {
				n++
			}
			arrays[k] = n
			start := p.Shape(keyRange(e)).Start
			ix.add(raw, start) // "routes": the first element
			table = indexed(raw, arrays)
			ix.add(table, start)
		case unstable.KeyValue:
			walkKeyValue(&p, ix, table, e)
		}
	}
	return ix
}

// indexed gives the parts of every array of tables among parts their
// current element: routes -> routes[2].
func indexed(parts []string, arrays map[string]int) []string {
	out := make([]string, len(parts))
	for i := range parts {
		out[i] = parts[i]
		if n, ok := arrays[strings.Join(parts[:i+1], keySep)]; ok {
			out[i] = fmt.Sprintf("%s[%d]", parts[i], n)
		}
	}
	return out
}

func walkKeyValue(p *unstable.Parser, ix Index, table []string, e *unstable.Node) {
	key := append(append([]string{}, table...), keyParts(e)...)
	ix.add(key, p.Shape(keyRange(e)).Start)
	if v := e.Value(); v.Kind == unstable.InlineTable {
		it := v.Children()
		for it.Next() {
			walkKeyValue(p, ix, key, it.Node())
		}
	}
}

func (ix Index) add(key []string, pos unstable.Position) {
	k := strings.Join(key, keySep)
	if _, ok := ix[k]; !ok {
		ix[k] = Position{Line: pos.Line, Column: pos.Column}
	}
}

func keyParts(n *unstable.Node) []string {
	var parts []string
	it := n.Key()
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return parts
}

// keyRange is the range of a node's first key part.
func keyRange(n *unstable.Node) unstable.Range {
	it := n.Key()
	it.Next()
	return it.Node().Raw
}

// Decode decodes data into v; a key that v has no field for is an error.
// file names the data in errors; known lists the valid dotted keys (Keys)
// for "did you mean" suggestions. Errors are of type Errors. The Index is
// returned whatever happens (empty after a syntax error).
func Decode(file string, data []byte, v any, known []string) (Index, error) {
	ix := Positions(data)
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return ix, decodeError(file, ix, known, err)
	}
	return ix, nil
}

var mismatchRe = regexp.MustCompile(`cannot decode TOML (\w+) into .* of type (\S+)$`)

// decodeError turns go-toml's errors into Errors. Their messages never
// quote the file's text (go-toml's String() would, secrets included).
func decodeError(file string, ix Index, known []string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var out Errors
		for i := range strict.Errors {
			de := &strict.Errors[i]
			line, col := de.Position()
			key := keyAt(ix, line, de.Key())
			msg := "unknown key"
			if k := suggest(known, de.Key()); k != "" {
				if i := strings.LastIndexByte(key, '.'); i >= 0 {
					k = key[:i+1] + k // the table as written: routes[2].
				}
				msg += fmt.Sprintf(" (did you mean %q?)", k)
			}
			out = append(out, &Error{File: file, Line: line, Column: col, Key: key, Msg: msg})
		}
		return out
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, col := de.Position()
		key := strings.Join(de.Key(), ".")
		if k, ok := ix.KeyAtLine(line); ok && (key == "" || len(k) > len(key)) {
			key = k
		}
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if m := mismatchRe.FindStringSubmatch(msg); m != nil {
			msg = fmt.Sprintf("wrong type: want %s, got %s", typeName(m[2]), m[1])
		}
		return Errors{{File: file, Line: line, Column: col, Key: key, Msg: msg}}
	}
	return Errors{{File: file, Msg: strings.TrimPrefix(err.Error(), "toml: ")}}
}

var elemRe = regexp.MustCompile(`\[\d+\]`)

// keyAt is key dotted, with the array indices of the Index when the key
// written on line is the same one.
func keyAt(ix Index, line int, key []string) string {
	dotted := strings.Join(key, ".")
	if k, ok := ix.KeyAtLine(line); ok && elemRe.ReplaceAllString(k, "") == dotted {
		return k
	}
	return dotted
}

// suggest proposes the last part of a known key for a misspelt one ("":
// none is close).
func suggest(known, key []string) string {
	if len(key) == 0 {
		return ""
	}
	last, parent := key[len(key)-1], strings.Join(key[:len(key)-1], ".")
	for _, k := range known {
		i := strings.LastIndexByte(k, '.')
		kParent, kLast := "", k
		if i >= 0 {
			kParent, kLast = k[:i], k[i+1:]
		}
		if kParent == parent && EditDistance(kLast, last) <= 2 {
			return kLast
		}
	}
	return ""
}

// typeName is the TOML type a Go type decodes from.
func typeName(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "array"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "integer"
	case goType == "string", strings.HasSuffix(goType, ".Secret"):
		return "string"
	case goType == "bool":
		return "boolean"
	case strings.HasPrefix(goType, "float"):
		return "float"
	case strings.HasSuffix(goType, ".Duration"):
		return "duration string such as \"10s\""
	case strings.HasPrefix(goType, "map"), strings.Contains(goType, "."):
		return "table"
	}
	return goType
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	timeType     = reflect.TypeOf(time.Time{})
)

// Keys lists the dotted keys of a struct type from its toml tags: tables
// and their keys; the keys of an array of tables as "routes.hosts". Struct
// types that decode from text (durations, times) are values, not tables.
func Keys(t reflect.Type) []string {
	var out []string
	textUnmarshaler := reflect.TypeOf((*interface{ UnmarshalText([]byte) error })(nil)).Elem()
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("toml"), ",")[0]
			if tag == "" || tag == "-" || !f.IsExported() {
				continue
			}
			key := tag
			if prefix != "" {
				key = prefix + "." + tag
			}
			out = append(out, key)
			ft := f.Type
			if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != durationType && ft != timeType && !reflect.PointerTo(ft).Implements(textUnmarshaler) {
				walk(key, ft)
			}
		}
	}
	walk("", t)
	return out
}

// EditDistance is the Levenshtein distance of a and b (bytes).
func EditDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
