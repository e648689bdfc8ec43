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
