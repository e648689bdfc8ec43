// Package consulstorage is a certmagic.Storage on Consul KV, so that every
// gwnomad load balancer shares one set of certificates, ACME accounts and
// challenge answers, and only one of them orders a given certificate.
//
// # Using it
//
//	st, err := consulstorage.New(consulClient, consulstorage.Options{
//		Prefix:  "gwnomad/lb/certmagic",    // the default
//		KeyFile: "/secrets/lb-storage.key", // 32 random bytes, base64
//	})
//	magic := certmagic.New(cache, certmagic.Config{Storage: st})
//
// Make a key with `head -c 32 /dev/urandom | base64 > lb-storage.key` and
// give the same file to every instance (a Nomad variable or Vault secret
// rendered into the task's secrets directory, for instance).
//
// # What is in Consul
//
// Values live under <prefix>/data/<certmagic key>, for instance
// gwnomad/lb/certmagic/data/certificates/acme-v02.api.letsencrypt.org-directory/gw.example.com/gw.example.com.crt.
// Each value is encrypted with AES-256-GCM under the operator's key; the
// key name and the value's header are authenticated too, so a value copied
// to another key does not decrypt. Starting without a key is an error,
// unless Options.Plaintext asks for unencrypted values explicitly (then
// private keys sit readable in Consul for anyone with KV read access).
//
// Locks live under <prefix>/locks/<name>. Each Lock creates a Consul session
// with a TTL (Options.LockTTL, at least 10s, Consul's minimum), a lock-delay
// of 1ms and the "delete" behaviour, and acquires the lock key with it. A
// goroutine renews the session while the lock is held; Unlock destroys the
// session, which deletes the key. When a holder dies, its session is
// invalidated (TTL passed, at most 2×TTL by Consul's rules, or at once if the
// holder's Consul agent fails) and the key goes away with it: a waiting
// instance acquires the lock at that moment. Waiting is a blocking query on
// the lock key, not polling.
//
// # Consistency
//
// Reads are consistent (served by the Consul leader after it confirmed its
// leadership). Store is one atomic write and Delete one transaction (the key
// and everything under it). Nothing is read-modified-written, so concurrent
// writers cannot lose each other's updates: the last Store wins, which is
// what certmagic expects. The only conditional writes are lock acquisitions,
// which Consul grants to one session at a time.
package consulstorage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	consulapi "github.com/hashicorp/consul/api"
)

// EnvKey is the environment variable read for the storage key (base64)
// when Options.KeyFile and Options.Keys are empty.
const EnvKey = "GWNOMAD_LB_STORAGE_KEY"

// MaxValueSize is Consul's default limit on a KV value (kv_max_value_size);
// Store refuses larger values with a clear error instead of Consul's 413.
const MaxValueSize = 512 * 1024

// Options configure New. Zero values are defaulted in one place, New.
type Options struct {
	// Prefix is the KV path under which everything is stored, without
	// leading or trailing slash. Default "gwnomad/lb/certmagic".
	Prefix string
	// KeyFile holds the storage key(s), see ParseKeys. Default "": then
	// Keys, then the environment variable GWNOMAD_LB_STORAGE_KEY.
	KeyFile string
	// Keys are the storage keys themselves (32 bytes each; the first
	// encrypts, all decrypt). Default: from KeyFile or the environment.
	Keys [][]byte
	// Plaintext stores values unencrypted. Default false: without a key,
	// New fails. It cannot be combined with a key.
	Plaintext bool
	// LockTTL is the session TTL of a lock: a dead holder's lock is freed
	// within LockTTL to 2×LockTTL. Default 15s; at least 10s.
	LockTTL time.Duration
	// Logger gets lock trouble (a lost lock, Consul errors while waiting).
	// Default slog.Default().
	Logger *slog.Logger
	// LockWait bounds one blocking query while waiting for a lock (the wait
	// as a whole is bounded only by Lock's context). Default 30s.
	LockWait time.Duration
}

// Storage is a certmagic.Storage (and certmagic.TryLocker and
// certmagic.LockLeaseRenewer) on Consul KV. It is safe for concurrent use.
type Storage struct {
	c        *consulapi.Client
	kv       *consulapi.KV
	prefix   string
	data     string // prefix + "/data/"
	locks    string // prefix + "/locks/"
	sealer   sealer
	lockTTL  time.Duration
	lockWait time.Duration
	owner    string // host and pid, written into lock values
	log      *slog.Logger

	mu   sync.Mutex
	held map[string]*session
}

var (
	_ certmagic.Storage          = (*Storage)(nil)
	_ certmagic.TryLocker        = (*Storage)(nil)
	_ certmagic.LockLeaseRenewer = (*Storage)(nil)
)

// ErrNoKey is returned by New when no storage key is configured and
// plaintext was not asked for.
var ErrNoKey = errors.New("consul certificate storage needs an encryption key (storage_key_file or " + EnvKey + "), or plaintext explicitly")

// New checks opts and returns the storage. It does not contact Consul.
func New(c *consulapi.Client, opts Options) (*Storage, error) {
	if c == nil {
		return nil, errors.New("consul storage: no Consul client")
	}
	if opts.Prefix == "" {
		opts.Prefix = "gwnomad/lb/certmagic"
	}
	if opts.LockTTL == 0 {
		opts.LockTTL = 15 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.LockWait == 0 {
		opts.LockWait = 30 * time.Second
	}
	opts.Prefix = strings.Trim(opts.Prefix, "/")
	if opts.Prefix == "" {
		return nil, errors.New("consul storage: prefix is empty")
	}
	if opts.LockTTL < 10*time.Second || opts.LockTTL > 24*time.Hour {
		return nil, fmt.Errorf("consul storage: lock TTL %s: Consul accepts 10s to 24h", opts.LockTTL)
	}
	keys := opts.Keys
	if len(keys) == 0 && opts.KeyFile != "" {
		k, err := ReadKeyFile(opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("consul storage: %w", err)
		}
		keys = k
	}
	if len(keys) == 0 && opts.KeyFile == "" {
		if env := os.Getenv(EnvKey); env != "" {
			k, err := ParseKeys([]byte(env))
			if err != nil {
				return nil, fmt.Errorf("consul storage: %s: %w", EnvKey, err)
			}
			keys = k
		}
	}
	if len(keys) > 0 && opts.Plaintext {
		return nil, errors.New("consul storage: both a storage key and plaintext are configured; choose one")
	}
	if len(keys) == 0 && !opts.Plaintext {
		return nil, ErrNoKey
	}
	s := &Storage{
		c: c, kv: c.KV(), prefix: opts.Prefix,
		data: opts.Prefix + "/data/", locks: opts.Prefix + "/locks/",
		lockTTL: opts.LockTTL, lockWait: opts.LockWait,
		held: map[string]*session{}, log: opts.Logger,
	}
	for _, k := range keys {
		sk, err := newSealKey(k)
		if err != nil {
			return nil, fmt.Errorf("consul storage: %w", err)
		}
		s.sealer.keys = append(s.sealer.keys, sk)
	}
	host, _ := os.Hostname()
	s.owner = fmt.Sprintf("%s pid %d", host, os.Getpid())
	return s, nil
}

// Encrypted reports whether values are encrypted.
func (s *Storage) Encrypted() bool { return len(s.sealer.keys) > 0 }

// String names the storage in certmagic's logs (never the key).
func (s *Storage) String() string { return "ConsulStorage:" + s.prefix }

// KVKey is the Consul KV key that holds the certmagic key (for tests and
// debugging).
func (s *Storage) KVKey(key string) string { return s.data + cleanKey(key) }

func cleanKey(key string) string { return strings.Trim(key, "/") }

func checkKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("key %q: empty, . or .. path segment", key)
		}
	}
	return nil
}

func (s *Storage) q(ctx context.Context) *consulapi.QueryOptions {
	return (&consulapi.QueryOptions{RequireConsistent: true}).WithContext(ctx)
}

func (s *Storage) w(ctx context.Context) *consulapi.WriteOptions {
	return (&consulapi.WriteOptions{}).WithContext(ctx)
}

// Store puts value at key, creating or overwriting it.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	key = cleanKey(key)
	if err := checkKey(key); err != nil {
		return fmt.Errorf("storing: %w", err)
	}
	sealed, err := s.sealer.seal(key, value, time.Now())
	if err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	if len(sealed) > MaxValueSize {
		return fmt.Errorf("storing %s: %d bytes is more than Consul's %d-byte value limit", key, len(sealed), MaxValueSize)
	}
	if _, err := s.kv.Put(&consulapi.KVPair{Key: s.data + key, Value: sealed}, s.w(ctx)); err != nil {
		return fmt.Errorf("storing %s in consul: %w", key, err)
	}
	return nil
}

// Load returns the value at key, or an error wrapping fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	key = cleanKey(key)
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("loading: %w", err)
	}
	kvp, _, err := s.kv.Get(s.data+key, s.q(ctx))
	if err != nil {
		return nil, fmt.Errorf("loading %s from consul: %w", key, err)
	}
	if kvp == nil {
		return nil, fmt.Errorf("loading %s: %w", key, fs.ErrNotExist)
	}
	v, _, err := s.sealer.open(key, kvp.Value)
	if err != nil {
		return nil, fmt.Errorf("loading: %w", err)
	}
	return v, nil
}

// Delete removes key and, if it is a directory, everything under it, in
// one transaction. A missing key is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	key = cleanKey(key)
	if err := checkKey(key); err != nil {
		return fmt.Errorf("deleting: %w", err)
	}
	ops := consulapi.TxnOps{
		{KV: &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: s.data + key}},
		{KV: &consulapi.KVTxnOp{Verb: consulapi.KVDeleteTree, Key: s.data + key + "/"}},
	}
	ok, resp, _, err := s.c.Txn().Txn(ops, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("deleting %s in consul: %w", key, err)
	}
	if !ok {
		return fmt.Errorf("deleting %s in consul: transaction rolled back: %v", key, txnErrors(resp))
	}
	return nil
}

func txnErrors(resp *consulapi.TxnResponse) string {
	if resp == nil {
		return "no detail"
	}
	var msgs []string
	for _, e := range resp.Errors {
		msgs = append(msgs, e.What)
	}
	return strings.Join(msgs, "; ")
}

// Exists reports whether key is a file or a directory (a prefix of files).
// Errors count as "does not exist", as certmagic documents.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// Stat describes key: a file (IsTerminal, Size of the value, Modified when
// it was stored) or a directory (IsTerminal false, zero Modified and Size).
// A missing key is an error wrapping fs.ErrNotExist.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	key = cleanKey(key)
	if err := checkKey(key); err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("stat: %w", err)
	}
	kvp, _, err := s.kv.Get(s.data+key, s.q(ctx))
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s in consul: %w", key, err)
	}
	if kvp != nil {
		mod, size, err := s.sealer.info(key, kvp.Value)
		if err != nil { // not written by this package: it exists all the same
			return certmagic.KeyInfo{Key: key, Size: int64(len(kvp.Value)), IsTerminal: true}, nil
		}
		return certmagic.KeyInfo{Key: key, Modified: mod, Size: size, IsTerminal: true}, nil
	}
	keys, _, err := s.kv.Keys(s.data+key+"/", "/", s.q(ctx))
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s in consul: %w", key, err)
	}
	if len(keys) == 0 {
		return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", key, fs.ErrNotExist)
	}
	return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
}

// List returns the keys under dir ("" is the whole storage), each
// prefixed with dir like certmagic's FileStorage: only its direct children
// (files and directories) unless recursive, then every file and directory
// below it. A dir that does not exist is an error wrapping fs.ErrNotExist;
// a file has no children.
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	dir = cleanKey(dir)
	base := s.data
	if dir != "" {
		if err := checkKey(dir); err != nil {
			return nil, fmt.Errorf("listing: %w", err)
		}
		base += dir + "/"
	}
	sep := "/"
	if recursive {
		sep = ""
	}
	keys, _, err := s.kv.Keys(base, sep, s.q(ctx))
	if err != nil {
		return nil, fmt.Errorf("listing %s in consul: %w", dir, err)
	}
	seen := map[string]bool{}
	var out []string
	add := func(rel string) {
		if rel == "" || seen[rel] {
			return
		}
		seen[rel] = true
		out = append(out, path.Join(dir, rel))
	}
	for _, k := range keys {
		rel := strings.TrimPrefix(k, base)
		if !recursive {
			add(strings.TrimSuffix(rel, "/"))
			continue
		}
		// every directory on the way down, then the file
		for i := 0; i < len(rel); i++ {
			if rel[i] == '/' {
				add(rel[:i])
			}
		}
		add(strings.TrimSuffix(rel, "/"))
	}
	if len(out) == 0 {
		if dir == "" {
			return nil, nil
		}
		kvp, _, err := s.kv.Get(s.data+dir, s.q(ctx))
		if err != nil {
			return nil, fmt.Errorf("listing %s in consul: %w", dir, err)
		}
		if kvp == nil {
			return nil, fmt.Errorf("listing %s: %w", dir, fs.ErrNotExist)
		}
		return nil, nil
	}
	sort.Strings(out)
	return out, nil
}
