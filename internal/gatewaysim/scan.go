package gatewaysim

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// fileState is what the scanner remembers of one artifact file.
type fileState struct {
	mtime time.Time
	size  int64
	ino   uint64
	api   *API  // nil when the file did not parse
	err   error // parse or read error
}

func (f *fileState) same(info fs.FileInfo) bool {
	return f.mtime.Equal(info.ModTime()) && f.size == info.Size() && f.ino == inode(info)
}

func inode(info fs.FileInfo) uint64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino)
	}
	return 0
}

// scanner polls the API artifact directory. It is used by one goroutine only.
type scanner struct {
	dir        string
	node       string
	log        *log.Logger
	files      map[string]*fileState
	dirMissing bool // the directory was missing at the last scan (logged once)
	// unreadable is the error of the last scan when the directory exists but
	// cannot be read (a stale NFS mount, lost permissions), else nil.
	unreadable error
}

func newScanner(dir, node string, logger *log.Logger) *scanner {
	return &scanner{dir: dir, node: node, log: logger, files: map[string]*fileState{}}
}

// scan reads the directory, parses new and changed files (by mtime, size and
// inode), forgets removed ones, and returns a new routing table when anything
// changed (nil otherwise). A directory that does not exist counts as empty; a
// directory that cannot be read keeps the current table and sets unreadable,
// which fails readiness: like a WSO2 node whose NFS mount went away, the node
// must leave the load balancer until it can see its artifacts again.
func (sc *scanner) scan() *table {
	entries, err := os.ReadDir(sc.dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !sc.dirMissing {
			sc.log.Printf("artifact directory %s does not exist (yet): serving no API", sc.dir)
			sc.dirMissing = true
		}
		entries = nil
	case err != nil:
		if sc.unreadable == nil {
			sc.log.Printf("scan artifact directory: %v (keeping %d deployed file(s); not ready until it is readable)", err, len(sc.files))
		}
		sc.unreadable = err
		return nil
	default:
		if sc.unreadable != nil {
			sc.log.Printf("artifact directory %s readable again", sc.dir)
			sc.unreadable = nil
		}
		if sc.dirMissing {
			sc.log.Printf("artifact directory %s appeared", sc.dir)
			sc.dirMissing = false
		}
	}
	changed := false
	present := make(map[string]bool, len(entries))
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".xml") {
			continue
		}
		path := filepath.Join(sc.dir, name)
		info, err := os.Stat(path) // follows symlinks
		if err != nil || !info.Mode().IsRegular() {
			continue // vanished since ReadDir, or not a file: absent this round
		}
		present[name] = true
		old := sc.files[name]
		if old != nil && old.same(info) {
			continue
		}
		st := &fileState{mtime: info.ModTime(), size: info.Size(), ino: inode(info)}
		data, err := readLimited(path)
		if err == nil {
			st.api, err = ParseAPI(data)
		}
		st.err = err
		sc.files[name] = st
		changed = true
		switch {
		case err != nil:
			sc.log.Printf("artifact %s: skipped: %v", name, err)
		case old != nil && old.api != nil:
			sc.log.Printf("artifact %s: redeployed API %s at %s (%d resource(s))", name, st.api.Name, st.api.Prefix, len(st.api.Resources))
		default:
			sc.log.Printf("artifact %s: deployed API %s at %s (%d resource(s))", name, st.api.Name, st.api.Prefix, len(st.api.Resources))
		}
	}
	for name, st := range sc.files {
		if present[name] {
			continue
		}
		delete(sc.files, name)
		changed = true
		if st.api != nil {
			sc.log.Printf("artifact %s: removed: undeployed API %s at %s", name, st.api.Name, st.api.Prefix)
		} else {
			sc.log.Printf("artifact %s: removed", name)
		}
	}
	if !changed {
		return nil
	}
	return sc.build()
}

// build makes a routing table of every parsed file. When two files declare
// the same prefix, the first by file name wins and the other is logged.
func (sc *scanner) build() *table {
	names := make([]string, 0, len(sc.files))
	for name, st := range sc.files {
		if st.api != nil {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	byPrefix := map[string]string{}
	routes := make([]*route, 0, len(names))
	for _, name := range names {
		a := sc.files[name].api
		if other, dup := byPrefix[a.Prefix]; dup {
			sc.log.Printf("artifact %s: API %s at %s not served: %s already deploys that context and version", name, a.Name, a.Prefix, other)
			continue
		}
		byPrefix[a.Prefix] = name
		routes = append(routes, newRoute(a, name, sc.node))
	}
	return newTable(routes)
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxArtifactSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxArtifactSize {
		return nil, fmt.Errorf("larger than %d bytes", maxArtifactSize)
	}
	return data, nil
}
