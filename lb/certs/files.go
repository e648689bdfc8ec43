package certs

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// fileCert serves a certificate and key from files and reloads them when
// their contents change.
type fileCert struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
	sum               [32]byte // of the files' contents behind cur
	lastErr           string
}

func readPair(certFile, keyFile string) (*tls.Certificate, [32]byte, error) {
	var sum [32]byte
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, sum, fmt.Errorf("reading tls.cert_file: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, sum, fmt.Errorf("reading tls.key_file: %w", err)
	}
	h := sha256.New()
	h.Write(certPEM)
	h.Write([]byte{0})
	h.Write(keyPEM)
	copy(sum[:], h.Sum(nil))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// tls's errors describe the PEM blocks, never the key bytes.
		return nil, sum, fmt.Errorf("loading %s and %s: %w", certFile, keyFile, err)
	}
	return &cert, sum, nil
}

func loadFileCert(certFile, keyFile string) (*fileCert, error) {
	cert, sum, err := readPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	fc := &fileCert{certFile: certFile, keyFile: keyFile, sum: sum}
	fc.cur.Store(cert)
	return fc, nil
}

func (fc *fileCert) get() *tls.Certificate { return fc.cur.Load() }

// check reloads the pair if the files' contents changed. A pair that does
// not load (say, the certificate was replaced but not yet the key) keeps
// the current certificate; it is tried again at the next check.
func (fc *fileCert) check(log *slog.Logger, mt *metrics) {
	cert, sum, err := readPair(fc.certFile, fc.keyFile)
	if sum == fc.sum && err == nil {
		return
	}
	if err != nil {
		if msg := err.Error(); msg != fc.lastErr {
			fc.lastErr = msg
			mt.fileReloads.WithLabelValues("failure").Inc()
			log.Error("certificate files changed but do not load; still serving the previous certificate", "err", err)
		}
		return
	}
	fc.lastErr = ""
	fc.sum = sum
	fc.cur.Store(cert)
	mt.fileReloads.WithLabelValues("success").Inc()
	attrs := []any{"cert_file", fc.certFile}
	if cert.Leaf != nil {
		attrs = append(attrs, "names", cert.Leaf.DNSNames, "not_after", cert.Leaf.NotAfter)
	}
	log.Info("certificate files reloaded", attrs...)
}

func (fc *fileCert) watch(ctx context.Context, every time.Duration, log *slog.Logger, mt *metrics) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fc.check(log, mt)
		}
	}
}
