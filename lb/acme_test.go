package lb_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb"
	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/lbtest"
)

// TestACMEThroughTheBalancer is `gwnomad lb` with tls.mode = "acme" against a
// real Pebble: the LB obtains a certificate for the route host (challenges
// answered on its own listeners), a client that trusts Pebble's root gets a
// gateway's answer over TLS, and plain HTTP is redirected with 308.
func TestACMEThroughTheBalancer(t *testing.T) {
	ports, err := devstack.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	httpAddr, httpsAddr := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	// Consul denies by default, and the LB's token has only the policy an
	// SRE would give it (deploy/acl/consul-lb.policy.hcl): discovery,
	// self-registration, certificate storage and its locks all work with it.
	st := testenv.Start(t, devstack.Config{Pebble: &devstack.PebbleOptions{HTTPPort: ports[0], TLSPort: ports[1]}, ACL: true})
	register(t, st.ConsulAPI(), inProcessGateway(t, "gw-1"), true)
	token := lbToken(t, st.ConsulAPI())
	var logs testenv.SyncBuffer

	keyFile := filepath.Join(t.TempDir(), "storage.key")
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i * 7)
	}
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, _ := startLBWith(t, st, "round_robin", func(cfg *config.Config) {
		cfg.Listen.HTTP, cfg.Listen.HTTPS = httpAddr, httpsAddr
		cfg.TLS.Mode = "acme"
		cfg.TLS.CA = st.Pebble.DirectoryURL
		cfg.TLS.CARoot = st.Pebble.CAFile
		cfg.TLS.Email = "sre@example.com"
		cfg.TLS.StorageKeyFile = keyFile
		cfg.Consul.Token = token
	}, lb.WithLogger(lbtest.Logger(t, &logs)))
	waitInstances(t, l, 30*time.Second, "gw-1")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	roots, err := st.Pebble.RootPool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
		},
	}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var body string
	testenv.WaitFor(t, 90*time.Second, "a certificate from Pebble served by the LB", func() error {
		resp, err := cl.Get("https://" + host + "/api")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
		body = string(b)
		return nil
	})
	if body != "gw-1" {
		t.Errorf("answer %q, want the gateway's", body)
	}

	// :80 redirects, path and query kept.
	nc := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", "http://"+httpAddr+"/pizzashack/1.0.0/menu?x=1", nil)
	req.Host = host
	resp, err := nc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect {
		t.Errorf(":80 answered %s, want 308", resp.Status)
	}
	if loc := resp.Header.Get("Location"); loc != fmt.Sprintf("https://%s:%d/pizzashack/1.0.0/menu?x=1", host, ports[1]) {
		t.Errorf("redirect to %q", loc)
	}

	// The certificate and key are in Consul KV, encrypted.
	pairs, _, err := st.ConsulAPI().KV().List("gwnomad/lb/certmagic/", nil)
	if err != nil || len(pairs) == 0 {
		t.Fatalf("no certificate storage in Consul KV: %v", err)
	}
	for _, p := range pairs {
		if len(p.Value) > 0 && (bytes.Contains(p.Value, []byte("BEGIN")) || bytes.Contains(p.Value, []byte(host))) {
			t.Errorf("KV %s holds plaintext", p.Key)
		}
	}

	// The LB registered itself, and its check passes.
	testenv.WaitFor(t, 30*time.Second, "gwnomad-lb passing in Consul", func() error {
		e, _, err := st.ConsulAPI().Health().Service("gwnomad-lb", "", true, nil)
		if err != nil {
			return err
		}
		if len(e) != 1 {
			return fmt.Errorf("%d passing gwnomad-lb instances", len(e))
		}
		return nil
	})
	if strings.Contains(logs.String(), "Permission denied") || strings.Contains(logs.String(), "403") {
		t.Errorf("the LB was refused something with the deploy/acl policy:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), token) {
		t.Error("the LB logged its Consul token")
	}
}

// lbToken creates a Consul token with the policy of deploy/acl for the LB.
func lbToken(t *testing.T, c *consulapi.Client) string {
	t.Helper()
	rules, err := os.ReadFile("../deploy/acl/consul-lb.policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ACL().PolicyCreate(&consulapi.ACLPolicy{Name: "gwnomad-lb", Rules: string(rules)}, nil); err != nil {
		t.Fatal(err)
	}
	tok, _, err := c.ACL().TokenCreate(&consulapi.ACLToken{Policies: []*consulapi.ACLTokenPolicyLink{{Name: "gwnomad-lb"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok.SecretID
}
