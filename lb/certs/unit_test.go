package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestHostAllowed(t *testing.T) {
	patterns := []string{"gw.example.com", "*.apps.example.com", "*"}
	for name, want := range map[string]bool{
		"gw.example.com":       true,
		"GW.Example.com.":      true,
		"x.apps.example.com":   true,
		"a.b.apps.example.com": true,
		"apps.example.com":     false, // the wildcard needs a label in front
		"evil.com":             false, // "*" (default route) allows nothing
		"xapps.example.com":    false,
		"":                     false,
	} {
		if got := HostAllowed(patterns, name); got != want {
			t.Errorf("HostAllowed(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, `tls.mode ""`},
		{Config{Mode: "acme"}, "needs domains"},
		{Config{Mode: "acme", Domains: []string{"*.example.com"}}, "DNS challenge"},
		{Config{Mode: "acme", Domains: []string{"a.example.com"}, Storage: StorageConfig{Kind: "redis"}}, "want consul or file"},
		{Config{Mode: "files"}, "cert_file and key_file"},
	} {
		_, err := New(c.cfg, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want an error with %q", c.cfg, err, c.want)
		}
	}
	t.Setenv("GWNOMAD_LB_STORAGE_KEY", "")
	_, err := New(Config{Mode: "acme", Domains: []string{"a.example.com"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "Consul client") {
		t.Errorf("consul storage without a client: %v", err)
	}
}

func TestRedirectAndHSTS(t *testing.T) {
	m, err := New(Config{Mode: "acme", Domains: []string{"gw.example.com"}, HTTPSAddr: "127.0.0.1:8443",
		Storage: StorageConfig{Kind: "file", Path: t.TempDir()}, HSTS: 365 * 24 * time.Hour, HSTSIncludeSubdomains: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	h := m.HTTPHandler(nil)
	for _, c := range []struct{ host, target, want string }{
		{"gw.example.com", "/a/b?x=1&y=%20", "https://gw.example.com:8443/a/b?x=1&y=%20"},
		{"gw.example.com:80", "/", "https://gw.example.com:8443/"},
		{"[::1]:80", "/p", "https://[::1]:8443/p"},
	} {
		req := httptest.NewRequest(http.MethodPost, "http://"+c.host+c.target, nil)
		req.Host = c.host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusPermanentRedirect || rec.Header().Get("Location") != c.want {
			t.Errorf("%s%s: %d %q, want 308 %q", c.host, c.target, rec.Code, rec.Header().Get("Location"), c.want)
		}
	}
	req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
	req.Host = "evil.com/@x"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest {
		t.Errorf("bad Host: %d, want 400", rec.Code)
	}
	if got, want := m.HSTSHeader(), "max-age=31536000; includeSubDomains"; got != want {
		t.Errorf("HSTSHeader = %q, want %q", got, want)
	}
	m443, _ := New(Config{Mode: "acme", Domains: []string{"gw.example.com"}, Storage: StorageConfig{Kind: "file", Path: t.TempDir()}}, nil)
	defer m443.Stop()
	if u, _ := m443.RedirectURL("gw.example.com:80", "/x"); u != "https://gw.example.com/x" {
		t.Errorf("redirect with the default port: %q", u)
	}
	if m443.HSTSHeader() != "" {
		t.Error("HSTS on by default")
	}
	if got := m.TLSConfig().NextProtos; strings.Join(got, ",") != "h2,http/1.1,acme-tls/1" {
		t.Errorf("NextProtos = %v", got)
	}
}

// selfSigned writes a certificate for name (with a fresh key) to the files.
func selfSigned(t testing.TB, name, certFile, keyFile string) *big.Int {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	// Write to temporary names and rename, like a careful deploy tool...
	if err := os.WriteFile(certFile+".tmp", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile+".tmp", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	// ...but the certificate first and the key a moment later, so that a
	// check in between sees a mismatched pair.
	if err := os.Rename(certFile+".tmp", certFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(keyFile+".tmp", keyFile); err != nil {
		t.Fatal(err)
	}
	return serial
}

func handshakeSerial(addr, name string) (*big.Int, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, InsecureSkipVerify: true}) //nolint:gosec // test reads the served cert
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

func TestFilesModeReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := selfSigned(t, "gw.example.com", certFile, keyFile)
	m, err := New(Config{Mode: "files", CertFile: certFile, KeyFile: keyFile, FileCheckInterval: 50 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	addr := ln.Addr().String()
	if s, err := handshakeSerial(addr, "gw.example.com"); err != nil || s.Cmp(first) != 0 {
		t.Fatalf("first certificate: %v %v", s, err)
	}

	// A half-replaced pair is not loaded; the old certificate stays.
	key2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kder, _ := x509.MarshalECPrivateKey(key2)
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for counterValue(m.metrics.fileReloads.WithLabelValues("failure")) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("mismatched pair not noticed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s, err := handshakeSerial(addr, "gw.example.com"); err != nil || s.Cmp(first) != 0 {
		t.Fatalf("after a mismatched pair: %v %v, want the first certificate", s, err)
	}

	second := selfSigned(t, "gw.example.com", certFile, keyFile)
	deadline = time.Now().Add(20 * time.Second)
	for {
		s, err := handshakeSerial(addr, "gw.example.com")
		if err != nil {
			t.Fatalf("handshake during reload: %v", err)
		}
		if s.Cmp(second) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("new certificate files not served within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	n, err := countSeries(reg, "gwnomad_lb_cert_file_reloads_total", "gwnomad_lb_cert_not_after_timestamp_seconds")
	if err != nil || n != 3 {
		t.Errorf("metrics: %d series, %v; want reloads success+failure and one expiry", n, err)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

func countSeries(reg *prometheus.Registry, names ...string) (int, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, mf := range mfs {
		for _, name := range names {
			if mf.GetName() == name {
				n += len(mf.GetMetric())
			}
		}
	}
	return n, nil
}
