package devstack

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// PebbleOptions configures the ACME test server.
type PebbleOptions struct {
	// HTTPPort is where Pebble connects to answer HTTP-01 challenges (the
	// load balancer's :80). Default: 80.
	HTTPPort int
	// TLSPort is where Pebble connects for TLS-ALPN-01 (the load balancer's
	// :443). Default: 443.
	TLSPort int
	// ShortLivedSeconds is the validity of certificates of the "shortlived"
	// ACME profile, for renewal tests. Default: 60.
	ShortLivedSeconds int
}

// Pebble is a running Pebble ACME server and its challenge test server, which
// answers every DNS name with 127.0.0.1.
type Pebble struct {
	DirectoryURL string // ACME directory, https://127.0.0.1:port/dir
	MgmtURL      string // management API, https://127.0.0.1:port
	// CAFile is the PEM of the CA that signed Pebble's own HTTPS certificate:
	// ACME clients must trust it to talk to DirectoryURL. Issued certificates
	// chain to a different root: see RootPEM.
	CAFile   string
	Proc     *Proc
	ChallSrv *Proc
}

func newPebble(cfg *Config, o PebbleOptions) (*Pebble, error) {
	if o.HTTPPort == 0 {
		o.HTTPPort = 80
	}
	if o.TLSPort == 0 {
		o.TLSPort = 443
	}
	if o.ShortLivedSeconds == 0 {
		o.ShortLivedSeconds = 60
	}
	dir := filepath.Join(cfg.Dir, "pebble")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	caFile, certFile, keyFile, err := writeLocalhostCert(dir)
	if err != nil {
		return nil, fmt.Errorf("pebble certificate: %w", err)
	}
	ports, err := FreePorts(3) // acme, mgmt, challtestsrv mgmt
	if err != nil {
		return nil, err
	}
	dnsPort, err := FreeUDPTCPPort()
	if err != nil {
		return nil, err
	}
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", ports[0]),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       o.HTTPPort,
		"tlsPort":                        o.TLSPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles": map[string]any{
			"default":    map[string]any{"description": "90 days", "validityPeriod": 7776000},
			"shortlived": map[string]any{"description": "for renewal tests", "validityPeriod": o.ShortLivedSeconds},
		},
	}}
	confJSON, _ := json.MarshalIndent(conf, "", "  ")
	confPath := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(confPath, confJSON, 0o644); err != nil {
		return nil, err
	}
	p := &Pebble{
		DirectoryURL: fmt.Sprintf("https://127.0.0.1:%d/dir", ports[0]),
		MgmtURL:      fmt.Sprintf("https://127.0.0.1:%d", ports[1]),
		CAFile:       caFile,
	}
	p.ChallSrv = &Proc{
		Name: "pebble-challtestsrv", Path: filepath.Join(cfg.BinDir, "pebble-challtestsrv"),
		Args: []string{"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
			"-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort),
			"-management", fmt.Sprintf("127.0.0.1:%d", ports[2]),
			"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""},
		LogPath: filepath.Join(cfg.Dir, "logs", "pebble-challtestsrv.log"), Detach: cfg.Detach,
	}
	p.Proc = &Proc{
		Name: "pebble", Path: filepath.Join(cfg.BinDir, "pebble"),
		Args:    []string{"-config", confPath, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort)},
		Env:     []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"},
		LogPath: filepath.Join(cfg.Dir, "logs", "pebble.log"), Detach: cfg.Detach,
	}
	return p, nil
}

func (p *Pebble) start(ctx context.Context) error {
	if err := p.ChallSrv.Start(); err != nil {
		return err
	}
	if err := p.Proc.Start(); err != nil {
		return err
	}
	return waitFor(ctx, p.Proc, "pebble", func(ctx context.Context) error {
		_, err := p.RootPEM(ctx)
		return err
	})
}

// HTTPClient returns a client that trusts Pebble's own HTTPS certificate.
func (p *Pebble) HTTPClient() (*http.Client, error) {
	pemBytes, err := os.ReadFile(p.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}, nil
}

// RootPEM fetches the root that Pebble's issued certificates chain to (it is
// made anew each time Pebble starts).
func (p *Pebble) RootPEM(ctx context.Context) ([]byte, error) {
	c, err := p.HTTPClient()
	if err != nil {
		return nil, err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.MgmtURL+"/roots/0", nil)
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching pebble root: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching pebble root: %s", resp.Status)
	}
	return b, nil
}

// RootPool returns a cert pool with Pebble's issuing root.
func (p *Pebble) RootPool(ctx context.Context) (*x509.CertPool, error) {
	b, err := p.RootPEM(ctx)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("pebble root: no certificate in PEM")
	}
	return pool, nil
}

// writeLocalhostCert makes a throwaway CA and a certificate for 127.0.0.1 and
// localhost signed by it, for Pebble's own HTTPS listener.
func writeLocalhostCert(dir string) (caFile, certFile, keyFile string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gwnomad devstack pebble CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		DNSNames: []string{"localhost", "pebble"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return
	}
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for path, b := range map[string][]byte{
		caFile:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	} {
		if err = os.WriteFile(path, b, 0o600); err != nil {
			return
		}
	}
	return
}
