package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseDefaultsAndOverrides(t *testing.T) {
	cfg, err := Parse([]byte(`
[listen]
http = ":8080"

[consul]
max_staleness = "1h"

[[routes]]
hosts = ["gw.am.wso2.com"]

[[routes]]
hosts = ["*"]
service = "other"
port = "9763"
policy = "least_conn"
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.HTTP != ":8080" || cfg.Listen.Admin != "127.0.0.1:9901" || cfg.Consul.MaxStaleness.D() != time.Hour ||
		cfg.Consul.WaitTime.D() != time.Minute || cfg.Proxy.Tries != 3 {
		t.Errorf("defaults/overrides: %+v", cfg)
	}
	r := cfg.Routes[0]
	if r.Service != "apim-gateway" || r.Port != "passthru_http" || r.Scheme != "http" || r.Policy != "p2c" {
		t.Errorf("route defaults: %+v", r)
	}
}

func TestStrictAndValidation(t *testing.T) {
	if _, err := Parse([]byte("[listen]\nhtpp = \":80\"\n")); err == nil || !strings.Contains(err.Error(), "htpp") {
		t.Errorf("unknown key: %v", err)
	}
	if _, err := Parse([]byte("[consul]\nwait_time = \"soon\"\n")); err == nil {
		t.Error("bad duration accepted")
	}
	cfg, err := Parse([]byte(`
[tls]
mode = "files"
[[routes]]
hosts = ["a", "A"]
policy = "random"
port = "99999"
scheme = "ftp"
`))
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Validate()
	for _, want := range []string{"cert_file", "already in routes[0]", "policy \"random\"", "out of range", "scheme \"ftp\""} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validation error %v lacks %q", err, want)
		}
	}
	if err := Default().Validate(); err == nil || !strings.Contains(err.Error(), "at least one [[routes]]") {
		t.Errorf("no routes: %v", err)
	}
}

func TestTrustedPrefixes(t *testing.T) {
	p := Proxy{TrustedProxies: []string{"10.0.0.0/8", "192.168.1.1", "::ffff:10.1.1.1"}}
	pf, err := p.TrustedPrefixes()
	if err != nil || len(pf) != 3 || pf[1].Bits() != 32 || pf[2].Addr().Is6() {
		t.Errorf("%v %v", pf, err)
	}
	p.TrustedProxies = []string{"nope"}
	if _, err := p.TrustedPrefixes(); err == nil {
		t.Error("bad address accepted")
	}
}

// Marshal (what `gwnomad lb --check` prints) lists every key, reads back as
// the same configuration, and never shows the Consul token.
func TestMarshalRoundTripsWithoutTheToken(t *testing.T) {
	c, err := Parse([]byte(`
[consul]
token = "s3cr3t-token"
[proxy]
tries = 2
max_buffered_response_bytes = 1048576
[[routes]]
hosts = ["gw.am.wso2.com", "*.example.com"]
policy = "least_conn"
`))
	if err != nil {
		t.Fatal(err)
	}
	text, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(text), "s3cr3t-token") || !strings.Contains(string(text), Redacted) {
		t.Errorf("the token is not redacted:\n%s", text)
	}
	for _, key := range []string{"max_body_bytes = ", "upstream_timeout = ", "consecutive_failures = ", "storage_lock_ttl = ", "policy = 'least_conn'"} {
		if !strings.Contains(string(text), key) {
			t.Errorf("Marshal lacks %q:\n%s", key, text)
		}
	}
	back, err := Parse(text)
	if err != nil {
		t.Fatalf("the printed configuration does not load: %v\n%s", err, text)
	}
	again, err := back.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(text) {
		t.Errorf("round trip changed the configuration:\n%s\n---\n%s", text, again)
	}
	if back.Proxy.Tries != 2 || back.Proxy.MaxBufferedResponseBytes != 1<<20 || len(back.Routes) != 1 || back.Routes[0].Policy != "least_conn" {
		t.Errorf("values lost: %+v", back)
	}
}
