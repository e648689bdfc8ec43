package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gwnomad/gwnomad/internal/tomlfile"
)

// FuzzParse feeds lb.toml text to Parse and Validate: neither may panic,
// every problem is a tomlfile.Error that names the file, and a key's line
// is one of the file's lines. Seeds: the example files under deploy/lb and
// testdata/fuzz/FuzzParse.
//
//	go test ./lb/config -run '^$' -fuzz '^FuzzParse$' -fuzztime 20s
func FuzzParse(f *testing.F) {
	examples, _ := filepath.Glob("../../deploy/lb/*.toml")
	for _, p := range examples {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := strings.Count(string(data), "\n") + 1
		check := func(err error) {
			if err == nil {
				return
			}
			var es tomlfile.Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error %v (%T) is not tomlfile.Errors", err, err)
			}
			for _, e := range es {
				if e.File != "fuzz.toml" || e.Line < 0 || e.Line > lines {
					t.Fatalf("error %q: file %q, line %d of %d", e.Error(), e.File, e.Line, lines)
				}
			}
		}
		cfg, err := Parse("fuzz.toml", data)
		check(err)
		if err != nil {
			return
		}
		check(cfg.Validate())
	})
}
