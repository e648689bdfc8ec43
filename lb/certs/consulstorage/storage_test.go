package consulstorage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb/certs/consulstorage"
	"github.com/gwnomad/gwnomad/lb/certs/internal/childproc"
)

func newKey(t testing.TB) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestHelperProcess is the other process of the lock tests (see childproc).
// Environment: CONSUL_HTTP_ADDR, STORAGE_PREFIX, STORAGE_KEY (base64),
// LOCK_NAME.
func TestHelperProcess(t *testing.T) {
	if childproc.Role() == "" {
		t.Skip("helper process only")
	}
	c, err := consulapi.NewClient(consulapi.DefaultConfig())
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	key, _ := base64.StdEncoding.DecodeString(os.Getenv("STORAGE_KEY"))
	st, err := consulstorage.New(c, consulstorage.Options{
		Prefix: os.Getenv("STORAGE_PREFIX"), Keys: [][]byte{key}, LockTTL: 10 * time.Second,
	})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	ctx := context.Background()
	name := os.Getenv("LOCK_NAME")
	switch childproc.Role() {
	case "locker":
		if err := st.Lock(ctx, name); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Println("LOCKED")
		for line := range childproc.Lines() {
			if line == "unlock" {
				if err := st.Unlock(ctx, name); err != nil {
					fmt.Println("ERROR", err)
					os.Exit(1)
				}
				fmt.Println("UNLOCKED")
			}
		}
	}
	os.Exit(0)
}

// TestStorage runs the semantics table against one real Consul agent.
func TestStorage(t *testing.T) {
	stack := testenv.Consul(t)
	c := stack.ConsulAPI()
	key := newKey(t)
	var n atomic.Int32
	fresh := func(t *testing.T) (*consulstorage.Storage, string) {
		prefix := fmt.Sprintf("test/%d", n.Add(1))
		st, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix, Keys: [][]byte{key}, LockTTL: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return st, prefix
	}

	t.Run("Semantics", func(t *testing.T) {
		st, _ := fresh(t)
		testSemantics(t, st)
	})
	t.Run("SameAsFileStorage", func(t *testing.T) {
		st, _ := fresh(t)
		compareWithFileStorage(t, st, &certmagic.FileStorage{Path: t.TempDir()})
	})
	t.Run("Encryption", func(t *testing.T) { testEncryption(t, c, key) })
	t.Run("Locks", func(t *testing.T) {
		st, prefix := fresh(t)
		other, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix, Keys: [][]byte{key}, LockTTL: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		testLocksInProcess(t, st, other)
	})
	t.Run("LockContentionTwoProcesses", func(t *testing.T) {
		st, prefix := fresh(t)
		testLockTwoProcesses(t, stack.Consul.HTTPAddr, st, prefix, key)
	})
	t.Run("LockExpiresWhenHolderDies", func(t *testing.T) {
		st, prefix := fresh(t)
		testLockExpiry(t, stack.Consul.HTTPAddr, c, st, prefix, key)
	})
	t.Run("CertmagicStorageCheck", func(t *testing.T) {
		// certmagic writes, reads and deletes a random key before each
		// issuance and refuses storage that fails it.
		st, _ := fresh(t)
		cache := certmagic.NewCache(certmagic.CacheOptions{GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return nil, nil }})
		defer cache.Stop()
		cfg := certmagic.New(cache, certmagic.Config{Storage: st})
		// CacheUnmanagedCertificatePEMBytes etc. would need a cert; the
		// storage check is reached through ObtainCertSync with an issuer
		// that fails right after it.
		cfg.Issuers = []certmagic.Issuer{failingIssuer{}}
		err := cfg.ObtainCertSync(ctxT(t, 30*time.Second), "check.example.com")
		if err == nil || strings.Contains(err.Error(), "storage") {
			t.Fatalf("obtain with a failing issuer: %v (want the issuer's error, not a storage failure)", err)
		}
	})
}

type failingIssuer struct{}

func (failingIssuer) Issue(context.Context, *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	return nil, errors.New("test issuer always fails")
}
func (failingIssuer) IssuerKey() string { return "failing" }

func testSemantics(t *testing.T, st *consulstorage.Storage) {
	ctx := ctxT(t, time.Minute)
	isNotExist := func(err error) bool { return errors.Is(err, fs.ErrNotExist) }

	// Missing keys.
	if _, err := st.Load(ctx, "nope"); !isNotExist(err) {
		t.Errorf("Load missing: %v, want fs.ErrNotExist", err)
	}
	if _, err := st.Stat(ctx, "nope"); !isNotExist(err) {
		t.Errorf("Stat missing: %v, want fs.ErrNotExist", err)
	}
	if _, err := st.List(ctx, "nope", false); !isNotExist(err) {
		t.Errorf("List missing: %v, want fs.ErrNotExist", err)
	}
	if st.Exists(ctx, "nope") {
		t.Error("Exists missing: true")
	}
	if err := st.Delete(ctx, "nope"); err != nil {
		t.Errorf("Delete missing: %v, want nil", err)
	}

	// Store, Load, overwrite, Stat.
	before := time.Now()
	files := map[string]string{
		"a/b/c.crt": "cert", "a/b/c.key": "key", "a/b/d/e.json": "{}", "a/f": "f",
		"ab/x": "not under a", "top": "", "acme/acct/user.json": strings.Repeat("x", 10000),
	}
	for k, v := range files {
		if err := st.Store(ctx, k, []byte(v)); err != nil {
			t.Fatalf("Store %s: %v", k, err)
		}
	}
	after := time.Now()
	for k, v := range files {
		got, err := st.Load(ctx, k)
		if err != nil || string(got) != v {
			t.Errorf("Load %s = %q, %v; want %q", k, got, err, v)
		}
		info, err := st.Stat(ctx, k)
		if err != nil {
			t.Errorf("Stat %s: %v", k, err)
			continue
		}
		if !info.IsTerminal || info.Key != k || info.Size != int64(len(v)) {
			t.Errorf("Stat %s = %+v; want terminal, size %d", k, info, len(v))
		}
		if info.Modified.Before(before.Add(-time.Millisecond)) || info.Modified.After(after.Add(time.Millisecond)) {
			t.Errorf("Stat %s: Modified %s not within the Store calls (%s..%s)", k, info.Modified, before, after)
		}
	}
	if err := st.Store(ctx, "a/f", []byte("f2")); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.Load(ctx, "a/f"); string(got) != "f2" {
		t.Errorf("Load after overwrite = %q", got)
	}
	for _, dir := range []string{"a", "a/b", "a/b/d", "acme"} {
		info, err := st.Stat(ctx, dir)
		if err != nil || info.IsTerminal || info.Key != dir {
			t.Errorf("Stat dir %s = %+v, %v; want a non-terminal key", dir, info, err)
		}
		if !st.Exists(ctx, dir) {
			t.Errorf("Exists dir %s: false", dir)
		}
	}
	// "a" is a prefix of "a/b" but not of "ab/x".
	if st.Exists(ctx, "a/b/c") {
		t.Error(`Exists "a/b/c" (a prefix of a file name, not a directory): true`)
	}

	// List.
	list := func(dir string, rec bool) []string {
		t.Helper()
		got, err := st.List(ctx, dir, rec)
		if err != nil {
			t.Fatalf("List %q %v: %v", dir, rec, err)
		}
		slices.Sort(got)
		return got
	}
	want := []string{"a/b", "a/f"}
	if got := list("a", false); !slices.Equal(got, want) {
		t.Errorf("List a = %v, want %v", got, want)
	}
	want = []string{"a/b", "a/b/c.crt", "a/b/c.key", "a/b/d", "a/b/d/e.json", "a/f"}
	if got := list("a", true); !slices.Equal(got, want) {
		t.Errorf("List a recursive = %v, want %v", got, want)
	}
	want = []string{"a", "ab", "acme", "top"}
	if got := list("", false); !slices.Equal(got, want) {
		t.Errorf("List root = %v, want %v", got, want)
	}
	if got := list("top", false); len(got) != 0 {
		t.Errorf("List of a file = %v, want nothing", got)
	}

	// Delete a file, then a directory with everything under it.
	if err := st.Delete(ctx, "a/f"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Load(ctx, "a/f"); !isNotExist(err) {
		t.Errorf("Load deleted: %v", err)
	}
	if err := st.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "a/b", "a/b/c.crt", "a/b/d/e.json"} {
		if st.Exists(ctx, k) {
			t.Errorf("Exists %s after deleting a: true", k)
		}
	}
	if got, err := st.Load(ctx, "ab/x"); err != nil || string(got) != "not under a" {
		t.Errorf("deleting a removed ab/x: %q, %v", got, err)
	}
	if err := st.Delete(ctx, "a"); err != nil {
		t.Errorf("Delete again: %v", err)
	}

	// Bad keys and oversized values are refused.
	for _, k := range []string{"", "/", "a//b", "a/../b"} {
		if err := st.Store(ctx, k, []byte("x")); err == nil {
			t.Errorf("Store %q: no error", k)
		}
	}
	if err := st.Store(ctx, "big", make([]byte, consulstorage.MaxValueSize)); err == nil {
		t.Error("Store of a value over Consul's limit: no error")
	}
}

// compareWithFileStorage applies the same operations to st and to
// certmagic's FileStorage and compares what List, Stat and Exists say.
func compareWithFileStorage(t *testing.T, st *consulstorage.Storage, fst *certmagic.FileStorage) {
	ctx := ctxT(t, time.Minute)
	keys := []string{
		"certificates/acme/example.com/example.com.crt",
		"certificates/acme/example.com/example.com.key",
		"certificates/acme/example.com/example.com.json",
		"certificates/acme/www.example.com/www.example.com.crt",
		"acme/acme/users/default/default.json",
		"ocsp/example.com-abc",
		"last_clean.json",
	}
	for _, s := range []certmagic.Storage{st, fst} {
		for _, k := range keys {
			if err := s.Store(ctx, k, []byte("v:"+k)); err != nil {
				t.Fatal(err)
			}
		}
	}
	probe := []string{"certificates", "certificates/acme", "certificates/acme/example.com", "acme", "last_clean.json", "nope", "certificates/acme/example.com/example.com.crt"}
	for _, p := range probe {
		for _, rec := range []bool{false, true} {
			a, errA := st.List(ctx, p, rec)
			b, errB := fst.List(ctx, p, rec)
			slices.Sort(a)
			slices.Sort(b)
			if !slices.Equal(a, b) || errors.Is(errA, fs.ErrNotExist) != errors.Is(errB, fs.ErrNotExist) {
				t.Errorf("List(%q, %v): consul %v (%v), file %v (%v)", p, rec, a, errA, b, errB)
			}
		}
		ia, errA := st.Stat(ctx, p)
		ib, errB := fst.Stat(ctx, p)
		if (errA == nil) != (errB == nil) || ia.IsTerminal != ib.IsTerminal || ia.Key != ib.Key || (ia.IsTerminal && ia.Size != ib.Size) {
			t.Errorf("Stat(%q): consul %+v (%v), file %+v (%v)", p, ia, errA, ib, errB)
		}
		if st.Exists(ctx, p) != fst.Exists(ctx, p) {
			t.Errorf("Exists(%q): consul %v, file %v", p, st.Exists(ctx, p), fst.Exists(ctx, p))
		}
	}
	for _, s := range []certmagic.Storage{st, fst} {
		if err := s.Delete(ctx, "certificates/acme/example.com"); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := st.List(ctx, "", true)
	b, _ := fst.List(ctx, "", true)
	slices.Sort(a)
	slices.Sort(b)
	if !slices.Equal(a, b) {
		t.Errorf("after Delete, List all: consul %v, file %v", a, b)
	}
}

func testEncryption(t *testing.T, c *consulapi.Client, key []byte) {
	ctx := ctxT(t, time.Minute)
	prefix := "test/enc"
	st, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix, Keys: [][]byte{key}})
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("-----BEGIN EC PRIVATE KEY----- very secret")
	if err := st.Store(ctx, "site/key.pem", secret); err != nil {
		t.Fatal(err)
	}
	kvp, _, err := c.KV().Get(st.KVKey("site/key.pem"), nil)
	if err != nil || kvp == nil {
		t.Fatalf("raw KV get: %v %v", kvp, err)
	}
	if kvp.Key != prefix+"/data/site/key.pem" {
		t.Errorf("KV key = %q", kvp.Key)
	}
	if bytes.Contains(kvp.Value, secret) || bytes.Contains(kvp.Value, []byte("PRIVATE")) {
		t.Errorf("raw KV value contains the plaintext")
	}

	t.Run("WrongKey", func(t *testing.T) {
		wrong, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix, Keys: [][]byte{newKey(t)}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = wrong.Load(ctx, "site/key.pem")
		if !errors.Is(err, consulstorage.ErrDecrypt) || !strings.Contains(err.Error(), "not among the configured keys") {
			t.Errorf("Load with the wrong key: %v; want ErrDecrypt naming the key mismatch", err)
		}
		if strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(key)) {
			t.Error("error contains the key")
		}
	})
	t.Run("Rotation", func(t *testing.T) {
		newer := newKey(t)
		rot, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix, Keys: [][]byte{newer, key}})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := rot.Load(ctx, "site/key.pem"); err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("Load with [new, old] keys: %q %v", got, err)
		}
		if err := rot.Store(ctx, "site/new.pem", secret); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Load(ctx, "site/new.pem"); !errors.Is(err, consulstorage.ErrDecrypt) {
			t.Errorf("old-key-only instance read a value under the new key: %v", err)
		}
	})
	t.Run("MovedValue", func(t *testing.T) {
		// A value copied to another key does not decrypt (the key name is
		// authenticated).
		if _, err := c.KV().Put(&consulapi.KVPair{Key: st.KVKey("site/moved.pem"), Value: kvp.Value}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Load(ctx, "site/moved.pem"); !errors.Is(err, consulstorage.ErrDecrypt) {
			t.Errorf("Load of a moved value: %v, want ErrDecrypt", err)
		}
		tampered := slices.Clone(kvp.Value)
		tampered[len(tampered)-1] ^= 1
		if _, err := c.KV().Put(&consulapi.KVPair{Key: st.KVKey("site/key2.pem"), Value: tampered}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Load(ctx, "site/key2.pem"); !errors.Is(err, consulstorage.ErrDecrypt) {
			t.Errorf("Load of a tampered value: %v, want ErrDecrypt", err)
		}
	})
	t.Run("PlaintextAndEncryptedDoNotMix", func(t *testing.T) {
		plain, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix, Plaintext: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := plain.Load(ctx, "site/key.pem"); !errors.Is(err, consulstorage.ErrDecrypt) {
			t.Errorf("plaintext instance loading an encrypted value: %v", err)
		}
		if err := plain.Store(ctx, "site/plain.txt", []byte("hello")); err != nil {
			t.Fatal(err)
		}
		raw, _, _ := c.KV().Get(plain.KVKey("site/plain.txt"), nil)
		if raw == nil || !bytes.HasSuffix(raw.Value, []byte("hello")) {
			t.Errorf("plaintext value in KV: %+v", raw)
		}
		if _, err := st.Load(ctx, "site/plain.txt"); !errors.Is(err, consulstorage.ErrDecrypt) {
			t.Errorf("encrypted instance loading a plaintext value: %v, want ErrDecrypt", err)
		}
	})
	t.Run("KeyRequired", func(t *testing.T) {
		t.Setenv(consulstorage.EnvKey, "")
		if _, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix}); !errors.Is(err, consulstorage.ErrNoKey) {
			t.Errorf("New without key or plaintext: %v, want ErrNoKey", err)
		}
		if _, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix, Keys: [][]byte{key}, Plaintext: true}); err == nil {
			t.Error("New with a key and plaintext: no error")
		}
		if _, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix, Keys: [][]byte{key[:16]}}); err == nil {
			t.Error("New with a 16-byte key: no error")
		}
		t.Setenv(consulstorage.EnvKey, base64.StdEncoding.EncodeToString(key))
		fromEnv, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := fromEnv.Load(ctx, "site/key.pem"); err != nil || !bytes.Equal(got, secret) {
			t.Errorf("key from %s: %q %v", consulstorage.EnvKey, got, err)
		}
		t.Setenv(consulstorage.EnvKey, "")
		dir := t.TempDir()
		kf := filepath.Join(dir, "key")
		body := "# lb storage key\n" + base64.StdEncoding.EncodeToString(key) + "\n"
		if err := os.WriteFile(kf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		fromFile, err := consulstorage.New(c, consulstorage.Options{Prefix: prefix, KeyFile: kf})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := fromFile.Load(ctx, "site/key.pem"); err != nil || !bytes.Equal(got, secret) {
			t.Errorf("key from file: %q %v", got, err)
		}
		bad := filepath.Join(dir, "bad")
		_ = os.WriteFile(bad, []byte("not-a-key-at-all!!\n"), 0o600)
		_, err = consulstorage.New(c, consulstorage.Options{Prefix: prefix, KeyFile: bad})
		if err == nil || strings.Contains(err.Error(), "not-a-key") {
			t.Errorf("bad key file: %v (want an error that does not echo the line)", err)
		}
	})
}

func testLocksInProcess(t *testing.T, st, other *consulstorage.Storage) {
	ctx := ctxT(t, 2*time.Minute)
	if err := st.Lock(ctx, "issue_cert_example.com"); err != nil {
		t.Fatal(err)
	}
	// Another instance cannot take it.
	if ok, err := other.TryLock(ctx, "issue_cert_example.com"); ok || err != nil {
		t.Fatalf("TryLock of a held lock = %v, %v; want false, nil", ok, err)
	}
	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	err := other.Lock(short, "issue_cert_example.com")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock of a held lock with a 1.5s context: %v, want DeadlineExceeded", err)
	}
	// Neither can the same instance from another goroutine (certmagic
	// relies on that within one process too).
	got := make(chan error, 1)
	go func() { got <- st.Lock(ctx, "issue_cert_example.com") }()
	select {
	case err := <-got:
		t.Fatalf("second Lock in the same instance returned while held: %v", err)
	case <-time.After(time.Second):
	}
	if err := st.RenewLockLease(ctx, "issue_cert_example.com", time.Minute); err != nil {
		t.Errorf("RenewLockLease of a held lock: %v", err)
	}
	start := time.Now()
	if err := st.Unlock(ctx, "issue_cert_example.com"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("waiting Lock acquired %s after Unlock", time.Since(start))
		if time.Since(start) > 2*time.Second {
			t.Errorf("waiting Lock took %s after Unlock (want a blocking query to wake it at once)", time.Since(start))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("waiting Lock not acquired 20s after Unlock")
	}
	if err := st.Unlock(ctx, "issue_cert_example.com"); err != nil {
		t.Fatal(err)
	}
	if err := st.Unlock(ctx, "issue_cert_example.com"); err == nil {
		t.Error("Unlock of a lock not held: no error")
	}
	if ok, err := other.TryLock(ctx, "issue_cert_example.com"); !ok || err != nil {
		t.Fatalf("TryLock of a free lock = %v, %v", ok, err)
	}
	if err := other.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.TryLock(ctx, "issue_cert_example.com"); !ok || err != nil {
		t.Fatalf("TryLock after the holder's Close = %v, %v", ok, err)
	}
	_ = st.Unlock(ctx, "issue_cert_example.com")
}

func helperEnv(addr, prefix string, key []byte, lock string) []string {
	return []string{"CONSUL_HTTP_ADDR=" + addr, "STORAGE_PREFIX=" + prefix,
		"STORAGE_KEY=" + base64.StdEncoding.EncodeToString(key), "LOCK_NAME=" + lock}
}

func testLockTwoProcesses(t *testing.T, addr string, st *consulstorage.Storage, prefix string, key []byte) {
	ctx := ctxT(t, 2*time.Minute)
	child := childproc.Start(t, "locker", helperEnv(addr, prefix, key, "issue_cert_two.example.com")...)
	child.Expect(t, "LOCKED", 30*time.Second)
	if ok, err := st.TryLock(ctx, "issue_cert_two.example.com"); ok || err != nil {
		t.Fatalf("TryLock while another process holds it = %v, %v", ok, err)
	}
	got := make(chan error, 1)
	go func() { got <- st.Lock(ctx, "issue_cert_two.example.com") }()
	select {
	case err := <-got:
		t.Fatalf("Lock returned while another process holds it: %v", err)
	case <-time.After(2 * time.Second):
	}
	start := time.Now()
	child.Send("unlock")
	child.Expect(t, "UNLOCKED", 30*time.Second)
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("acquired %s after the other process unlocked", time.Since(start))
	case <-time.After(20 * time.Second):
		t.Fatal("Lock not acquired 20s after the other process unlocked")
	}
	// Now the child cannot have it.
	if err := st.Unlock(ctx, "issue_cert_two.example.com"); err != nil {
		t.Fatal(err)
	}
}

func testLockExpiry(t *testing.T, addr string, c *consulapi.Client, st *consulstorage.Storage, prefix string, key []byte) {
	ctx := ctxT(t, 2*time.Minute)
	child := childproc.Start(t, "locker", helperEnv(addr, prefix, key, "issue_cert_dies.example.com")...)
	child.Expect(t, "LOCKED", 30*time.Second)
	kvp, _, err := c.KV().Get(prefix+"/locks/issue_cert_dies.example.com", nil)
	if err != nil || kvp == nil || kvp.Session == "" {
		t.Fatalf("lock key in consul: %+v %v", kvp, err)
	}
	child.Kill() // SIGKILL: no Unlock, no session destroy
	killed := time.Now()
	if err := st.Lock(ctx, "issue_cert_dies.example.com"); err != nil {
		t.Fatalf("Lock after the holder was killed: %v", err)
	}
	waited := time.Since(killed)
	t.Logf("lock of the killed holder freed after %s (session TTL 10s, Consul invalidates within 2×TTL)", waited)
	if waited > 35*time.Second {
		t.Errorf("took %s, want within 2×TTL (+slack)", waited)
	}
	if err := st.Unlock(ctx, "issue_cert_dies.example.com"); err != nil {
		t.Fatal(err)
	}
}
