// Command vulndb writes a Go vulnerability database that govulncheck reads
// with -db file:///dir, from the OSV entries of the golang.org/x/vulndb
// module (data/osv), which the Go module proxy serves. It is for machines
// that reach the module proxy but not vuln.go.dev.
//
//	go run ./tools/vulndb -src $(go env GOMODCACHE)/golang.org/x/vulndb@VERSION/data/osv -out bin/vulndb
//
// The layout is the v1 database's (index/db.json, index/modules.json,
// ID/<id>.json); the entries are copied as they are, with their
// "modified" time set to "published" where the repository leaves it zero.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

type entry struct {
	ID        string    `json:"id"`
	Modified  time.Time `json:"modified"`
	Published time.Time `json:"published"`
	Withdrawn *string   `json:"withdrawn,omitempty"`
	Affected  []struct {
		Package struct {
			Name string `json:"name"` // the module path; "stdlib" and "toolchain" for Go itself
		} `json:"package"`
	} `json:"affected"`
}

type moduleVuln struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
}

type moduleMeta struct {
	Path  string       `json:"path"`
	Vulns []moduleVuln `json:"vulns"`
}

func main() {
	src := flag.String("src", "", "directory of OSV entries (golang.org/x/vulndb's data/osv)")
	out := flag.String("out", "vulndb", "directory to write the database to")
	flag.Parse()
	if err := run(*src, *out); err != nil {
		fmt.Fprintln(os.Stderr, "vulndb:", err)
		os.Exit(1)
	}
}

func run(src, out string) error {
	if src == "" {
		return fmt.Errorf("-src is required")
	}
	files, err := filepath.Glob(filepath.Join(src, "GO-*.json"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no GO-*.json entries in %s", src)
	}
	if err := os.MkdirAll(filepath.Join(out, "ID"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(out, "index"), 0o755); err != nil {
		return err
	}
	modules := map[string][]moduleVuln{}
	var newest time.Time
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var e entry
		if err := json.Unmarshal(data, &e); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if e.ID == "" || !strings.HasPrefix(filepath.Base(f), e.ID) {
			return fmt.Errorf("%s: id %q does not match the file name", f, e.ID)
		}
		var raw map[string]any
		if err := json.Unmarshal(data, &raw); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if e.Modified.IsZero() || e.Modified.Year() < 2000 {
			e.Modified = e.Published
			raw["modified"] = e.Published.Format(time.RFC3339)
		}
		if e.Modified.After(newest) {
			newest = e.Modified
		}
		if err := writeJSON(filepath.Join(out, "ID", e.ID+".json"), raw); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, a := range e.Affected {
			if p := a.Package.Name; p != "" && !seen[p] {
				seen[p] = true
				modules[p] = append(modules[p], moduleVuln{ID: e.ID, Modified: e.Modified})
			}
		}
	}
	var index []moduleMeta
	for p, v := range modules {
		index = append(index, moduleMeta{Path: p, Vulns: v})
	}
	slices.SortFunc(index, func(a, b moduleMeta) int { return strings.Compare(a.Path, b.Path) })
	if err := writeJSON(filepath.Join(out, "index", "modules.json"), index); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(out, "index", "db.json"), map[string]time.Time{"modified": newest}); err != nil {
		return err
	}
	fmt.Printf("vulndb: %d entries, %d modules, modified %s -> %s\n", len(files), len(index), newest.Format(time.DateOnly), out)
	return nil
}

func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
