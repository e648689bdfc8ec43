package spec

import (
	_ "embed"
	"fmt"
	"os"

	"github.com/gwnomad/gwnomad/internal/tomlfile"
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
	// Key positions first: validation places its errors with them.
	pos, err := tomlfile.Decode(name, data, s, knownKeys)
	s.pos = pos
	if err != nil {
		return nil, nil, err
	}
	s.Canonicalize()
	warns, err := s.Validate()
	if err != nil {
		return nil, warns, err
	}
	return s, warns, nil
}

// Error is one problem in a spec, at a position.
type Error = tomlfile.Error

// Errors is every problem found in a spec; it is the error Parse returns.
type Errors = tomlfile.Errors

// Position of a key in the file.
type Position = tomlfile.Position

// Warning is a problem that does not stop a deploy (same shape as Error).
type Warning Error

func (w Warning) String() string { e := Error(w); return "warning: " + e.Error() }

// keySep joins key parts in map keys (keys may contain dots when quoted).
const keySep = "\x1f"
