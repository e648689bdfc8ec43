package consulstorage

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Every value in Consul is an envelope:
//
//	magic "gwn1" | alg (1 byte) | key id (4 bytes) | modified (8 bytes, Unix ns, big endian) | body
//
// alg 0 is plaintext (key id zero, body = the value); alg 1 is AES-256-GCM
// (key id = first 4 bytes of SHA-256 of the key, body = 12-byte nonce then
// ciphertext and tag). The header and the certmagic key are the GCM
// additional data, so a value cannot be moved to another key or have its
// modification time changed without failing to decrypt.
const (
	magic      = "gwn1"
	headerLen  = 4 + 1 + 4 + 8
	algPlain   = 0
	algAESGCM  = 1
	nonceLen   = 12
	gcmTagLen  = 16
	keyLen     = 32
	keyIDBytes = 4
)

// ErrDecrypt is returned (wrapped) when a value cannot be decrypted with
// the configured keys: it was written with another key, by an instance in
// plaintext mode, or it was tampered with.
var ErrDecrypt = errors.New("cannot decrypt storage value")

type sealKey struct {
	id   [keyIDBytes]byte
	aead cipher.AEAD
}

func newSealKey(k []byte) (sealKey, error) {
	if len(k) != keyLen {
		return sealKey{}, fmt.Errorf("storage key: %d bytes, want %d (AES-256)", len(k), keyLen)
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return sealKey{}, fmt.Errorf("storage key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return sealKey{}, fmt.Errorf("storage key: %w", err)
	}
	sum := sha256.Sum256(k)
	var sk sealKey
	copy(sk.id[:], sum[:keyIDBytes])
	sk.aead = aead
	return sk, nil
}

// sealer encrypts with keys[0] and decrypts with any of keys; with no keys
// it writes plaintext envelopes (only when plaintext was asked for).
type sealer struct {
	keys []sealKey
}

func header(alg byte, id [keyIDBytes]byte, mod time.Time) []byte {
	h := make([]byte, headerLen, headerLen+nonceLen+gcmTagLen)
	copy(h, magic)
	h[4] = alg
	copy(h[5:9], id[:])
	binary.BigEndian.PutUint64(h[9:17], uint64(mod.UnixNano()))
	return h
}

func aad(h []byte, key string) []byte {
	a := make([]byte, 0, len(h)+len(key))
	return append(append(a, h...), key...)
}

func (s *sealer) seal(key string, value []byte, mod time.Time) ([]byte, error) {
	if len(s.keys) == 0 {
		h := header(algPlain, [keyIDBytes]byte{}, mod)
		return append(h, value...), nil
	}
	k := s.keys[0]
	h := header(algAESGCM, k.id, mod)
	nonce := make([]byte, nonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("making nonce: %w", err)
	}
	out := append(h, nonce...)
	return k.aead.Seal(out, nonce, value, aad(h, key)), nil
}

// info reads the header only: modification time and plaintext size.
func (s *sealer) info(key string, raw []byte) (mod time.Time, size int64, err error) {
	if len(raw) < headerLen || string(raw[:4]) != magic {
		return time.Time{}, 0, fmt.Errorf("%s: not a gwnomad storage value", key)
	}
	mod = time.Unix(0, int64(binary.BigEndian.Uint64(raw[9:17])))
	size = int64(len(raw) - headerLen)
	if raw[4] == algAESGCM {
		size -= nonceLen + gcmTagLen
		if size < 0 {
			return time.Time{}, 0, fmt.Errorf("%s: truncated value: %w", key, ErrDecrypt)
		}
	}
	return mod, size, nil
}

func (s *sealer) open(key string, raw []byte) ([]byte, time.Time, error) {
	mod, _, err := s.info(key, raw)
	if err != nil {
		return nil, time.Time{}, err
	}
	h := raw[:headerLen]
	switch raw[4] {
	case algPlain:
		if len(s.keys) > 0 {
			return nil, time.Time{}, fmt.Errorf("%s: value is stored in plaintext but this storage is encrypted (written by an instance with plaintext on?): %w", key, ErrDecrypt)
		}
		return raw[headerLen:], mod, nil
	case algAESGCM:
		if len(s.keys) == 0 {
			return nil, time.Time{}, fmt.Errorf("%s: value is encrypted but no storage key is configured: %w", key, ErrDecrypt)
		}
		var id [keyIDBytes]byte
		copy(id[:], h[5:9])
		body := raw[headerLen:]
		if len(body) < nonceLen+gcmTagLen {
			return nil, time.Time{}, fmt.Errorf("%s: truncated value: %w", key, ErrDecrypt)
		}
		for _, k := range s.keys {
			if k.id != id {
				continue
			}
			pt, err := k.aead.Open(nil, body[:nonceLen], body[nonceLen:], aad(h, key))
			if err != nil {
				return nil, time.Time{}, fmt.Errorf("%s: authentication failed (tampered or moved value): %w", key, ErrDecrypt)
			}
			return pt, mod, nil
		}
		return nil, time.Time{}, fmt.Errorf("%s: encrypted with key id %x, which is not among the configured keys %s: %w",
			key, id, s.keyIDs(), ErrDecrypt)
	default:
		return nil, time.Time{}, fmt.Errorf("%s: unknown value encoding %d", key, raw[4])
	}
}

func (s *sealer) keyIDs() string {
	ids := make([]string, len(s.keys))
	for i, k := range s.keys {
		ids[i] = hex.EncodeToString(k.id[:])
	}
	return "[" + strings.Join(ids, " ") + "]"
}

// ParseKeys reads storage keys from the text of a key file: one key a line,
// each 32 bytes written in base64 (standard or URL alphabet, padded or not)
// or hex. Blank lines and lines starting with # are ignored. The first key
// encrypts; all of them decrypt, which is how keys are rotated: put the new
// key first, keep the old one below until every value was rewritten.
func ParseKeys(text []byte) ([][]byte, error) {
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(text))
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		k, err := decodeKey(s)
		if err != nil {
			return nil, fmt.Errorf("storage key on line %d: %w", line, err)
		}
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading storage keys: %w", err)
	}
	if len(keys) == 0 {
		return nil, errors.New("no storage key found (want 32 random bytes in base64, e.g. `head -c 32 /dev/urandom | base64`)")
	}
	return keys, nil
}

func decodeKey(s string) ([]byte, error) {
	if len(s) == 2*keyLen {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != keyLen {
				return nil, fmt.Errorf("decodes to %d bytes, want %d", len(b), keyLen)
			}
			return b, nil
		}
	}
	// Never echo the line: it may be key material with a typo.
	return nil, errors.New("not base64 or hex")
}

// ReadKeyFile is ParseKeys on a file's contents.
func ReadKeyFile(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading storage key file: %w", err)
	}
	keys, err := ParseKeys(b)
	if err != nil {
		return nil, fmt.Errorf("storage key file %s: %w", path, err)
	}
	return keys, nil
}
