package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

func loadCertPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate", file)
	}
	return pool, nil
}

// CertFiles serves a certificate and key from files, reloading them when
// either file changes (checked at most every few seconds, on handshakes).
// A reload that fails keeps the certificate already loaded.
type CertFiles struct {
	CertFile, KeyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	mtime   time.Time
	checked time.Time
}

// NewCertFiles loads the pair once (an error if it cannot).
func NewCertFiles(certFile, keyFile string) (*CertFiles, error) {
	c := &CertFiles{CertFile: certFile, KeyFile: keyFile}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *CertFiles) modTime() time.Time {
	var t time.Time
	for _, f := range []string{c.CertFile, c.KeyFile} {
		if st, err := os.Stat(f); err == nil && st.ModTime().After(t) {
			t = st.ModTime()
		}
	}
	return t
}

func (c *CertFiles) load() error {
	mt := c.modTime()
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return fmt.Errorf("loading TLS certificate: %w", err)
	}
	c.cert, c.mtime = &cert, mt
	return nil
}

// GetCertificate is a tls.Config.GetCertificate.
func (c *CertFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.Sub(c.checked) > 5*time.Second {
		c.checked = now
		if mt := c.modTime(); mt.After(c.mtime) {
			_ = c.load() // on error: keep the loaded one
		}
	}
	if c.cert == nil {
		return nil, errors.New("no certificate")
	}
	return c.cert, nil
}
