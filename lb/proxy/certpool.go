package proxy

import (
	"crypto/x509"
	"fmt"
	"os"
)

// loadCertPool reads a PEM file of CA certificates (a route's ca_file, to
// verify gateways reached over https).
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
