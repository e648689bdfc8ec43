package spec

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// DefaultTOML is the embedded demo spec: three simulated gateway nodes
// (the exec driver running bin/gatewaysim), hostname gw.am.wso2.com, dynamic
// ports so that the nodes can share one machine. `gwnomad deploy` uses it
// without -f; `gwnomad init` writes it out as a file to edit.
//
//go:embed default.toml
var DefaultTOML []byte

// DefaultFile is the name the embedded default spec is parsed under.
const DefaultFile = "(embedded default spec)"

// Default parses DefaultTOML.
func Default() (*Spec, []Warning, error) { return Parse(DefaultFile, DefaultTOML) }

// LoadOrDefault loads the spec at path, or the embedded default spec when
// path is "" (what `gwnomad deploy` and `gwnomad render` do without -f).
func LoadOrDefault(path string) (*Spec, []Warning, error) {
	if path == "" {
		return Default()
	}
	return Load(path)
}

// Load reads and parses a spec file. Errors are of type Errors (every
// problem found, each with file:line:column and key) or a wrapped I/O error.
func Load(path string) (*Spec, []Warning, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading spec: %w", err)
	}
	return Parse(path, data)
}

// Parse parses, canonicalizes (defaults) and validates a spec. name is used
// in messages (usually the file's path). An invalid spec gives a nil Spec
// and an error of type Errors.
func Parse(name string, data []byte) (*Spec, []Warning, error) {
	s := &Spec{File: name}
	// Key positions first: decode errors that lack a key are matched to
	// one by line. A syntax error stops the walk; Decode reports it.
	s.pos = positions(data)

	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(s); err != nil {
		return nil, nil, s.decodeError(err)
	}
	s.Canonicalize()
	warns, err := s.Validate()
	if err != nil {
		return nil, warns, err
	}
	return s, warns, nil
}

// Error is one problem in a spec, at a position.
type Error struct {
	File   string
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

// Warning is a problem that does not stop a deploy (same shape as Error).
type Warning Error

func (w Warning) String() string { e := Error(w); return "warning: " + e.Error() }

// Errors is every problem found in a spec; it is the error Parse returns.
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

var mismatchRe = regexp.MustCompile(`cannot decode TOML (\w+) into .* of type (\S+)$`)

// decodeError turns go-toml's errors into Errors with file, position and key.
func (s *Spec) decodeError(err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var out Errors
		for i := range strict.Errors {
			de := &strict.Errors[i]
			line, col := de.Position()
			out = append(out, &Error{File: s.File, Line: line, Column: col,
				Key: strings.Join(de.Key(), "."), Msg: "unknown key" + s.suggest(de.Key())})
		}
		return out
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, col := de.Position()
		key := strings.Join(de.Key(), ".")
		if k, ok := s.pos.keyAtLine(line); ok && (key == "" || len(k) > len(key)) {
			key = k
		}
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if m := mismatchRe.FindStringSubmatch(msg); m != nil {
			msg = fmt.Sprintf("wrong type: want %s, got %s", tomlType(m[2]), m[1])
		}
		return Errors{{File: s.File, Line: line, Column: col, Key: key, Msg: msg}}
	}
	return Errors{{File: s.File, Msg: err.Error()}}
}

// suggest proposes a known key for a misspelt one.
func (s *Spec) suggest(key []string) string {
	if len(key) == 0 {
		return ""
	}
	last := key[len(key)-1]
	for _, k := range knownKeys {
		parts := strings.Split(k, ".")
		if len(parts) == len(key) && strings.Join(parts[:len(parts)-1], ".") == strings.Join(key[:len(key)-1], ".") &&
			editDistance(parts[len(parts)-1], last) <= 2 {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
	}
	return ""
}

func tomlType(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "array"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "integer"
	case goType == "string", goType == "spec.Secret":
		return "string"
	case goType == "bool":
		return "boolean"
	case strings.HasPrefix(goType, "float"):
		return "float"
	case goType == "spec.Duration":
		return "duration string such as \"10s\""
	case strings.HasPrefix(goType, "map"), strings.HasPrefix(goType, "spec."):
		return "table"
	}
	return goType
}

// Position of a key in the file.
type Position struct{ Line, Column int }

// index maps a key (its parts joined by keySep) to where it was written.
type index map[string]Position

const keySep = "\x1f"

func (ix index) has(dotted string) bool {
	_, ok := ix[strings.ReplaceAll(dotted, ".", keySep)]
	return ok
}

// at returns the position of a key, or of the closest enclosing table that
// was written, or the zero Position.
func (ix index) at(parts ...string) Position {
	for n := len(parts); n > 0; n-- {
		if p, ok := ix[strings.Join(parts[:n], keySep)]; ok {
			return p
		}
	}
	return Position{}
}

// keyAtLine returns the longest key written on a line.
func (ix index) keyAtLine(line int) (string, bool) {
	best := ""
	for k, p := range ix {
		if p.Line == line && len(k) > len(best) {
			best = k
		}
	}
	return strings.ReplaceAll(best, keySep, "."), best != ""
}

// positions walks the document with go-toml's parser and records where
// every table header and key (inline tables included) was written.
func positions(data []byte) index {
	ix := index{}
	var p unstable.Parser
	p.Reset(data)
	var table []string
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = keyParts(e)
			ix.add(table, p.Shape(keyRange(e)).Start)
		case unstable.KeyValue:
			walkKeyValue(&p, ix, table, e)
		}
	}
	return ix
}

func walkKeyValue(p *unstable.Parser, ix index, table []string, e *unstable.Node) {
	key := append(append([]string{}, table...), keyParts(e)...)
	ix.add(key, p.Shape(keyRange(e)).Start)
	if v := e.Value(); v.Kind == unstable.InlineTable {
		it := v.Children()
		for it.Next() {
			walkKeyValue(p, ix, key, it.Node())
		}
	}
}

func (ix index) add(key []string, pos unstable.Position) {
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

func editDistance(a, b string) int {
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
