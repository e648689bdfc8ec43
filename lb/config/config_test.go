package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseDefaultsAndOverrides(t *testing.T) {
	cfg, err := Parse("lb.toml", []byte(`
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

// Every problem names the file, the line and column, and the key, in the
// file's order; values given on the command line say so instead.
func TestErrorsNameFileLineAndKey(t *testing.T) {
	for _, c := range []struct{ name, file, want string }{
		{"unknown key", "[listen]\nhtpp = \":80\"\n", `lb.toml:2:1: listen.htpp: unknown key (did you mean "listen.http"?)`},
		{"unknown key in the second route", "[[routes]]\nhosts = [\"a\"]\n[[routes]]\nhostz = [\"b\"]\n",
			`lb.toml:4:1: routes[1].hostz: unknown key (did you mean "routes[1].hosts"?)`},
		{"wrong type", "[proxy]\ntries = \"3\"\n", `lb.toml:2:9: proxy.tries: wrong type: want integer, got string`},
		{"bad duration", "[consul]\nwait_time = \"soon\"\n", `lb.toml:2:13: consul.wait_time: `},
		{"syntax", "[proxy\n", `lb.toml:1:`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("lb.toml", []byte(c.file))
			if err == nil || !strings.HasPrefix(err.Error(), c.want) {
				t.Errorf("got %v\nwant %s...", err, c.want)
			}
		})
	}

	cfg, err := Parse("lb.toml", []byte(`[tls]
mode = "files"
[proxy]
tries = 0
trusted_proxies = ["10.0.0.0/8", "nope"]
engine = "epoll"
[[routes]]
hosts = ["a"]
[[routes]]
hosts = ["A"]
policy = "random"
port = "99999"
scheme = "ftp"
[log]
redact_query = ["apikey", "a=b"]
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Routes = append(cfg.Routes, Route{Hosts: []string{"a"}})
	cfg.SetByFlag("routes[2]")
	cfg.Listen.Admin = "nope"
	cfg.SetByFlag("listen.admin")
	want := []string{
		`listen.admin: "nope": missing port in address (set on the command line)`,
		`routes[2].hosts: "a" already in routes[0] (set on the command line)`,
		`lb.toml:2:1: tls.mode: "files" needs cert_file and key_file`,
		`lb.toml:4:1: proxy.tries: must be at least 1 (got 0)`,
		`lb.toml:5:1: proxy.trusted_proxies: "nope": want a CIDR or an address`,
		`lb.toml:6:1: proxy.engine: "epoll": want "goroutines" or "event-loop"`,
		`lb.toml:10:1: routes[1].hosts: "A" already in routes[0]`,
		`lb.toml:11:1: routes[1].policy: "random": want one of round_robin, least_conn, p2c`,
		`lb.toml:12:1: routes[1].port: 99999: out of range (1..65535)`,
		`lb.toml:13:1: routes[1].scheme: "ftp": want http or https`,
		`lb.toml:15:1: log.redact_query: "a=b": want a query parameter name`,
	}
	err = cfg.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", err, strings.Join(want, "\n"))
	}
	if err := Default().Validate(); err == nil || !strings.Contains(err.Error(), "routes: at least one [[routes]]") {
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
	c, err := Parse("lb.toml", []byte(`
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
	back, err := Parse("printed.toml", text)
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
