package lb

import (
	"testing"

	"github.com/gwnomad/gwnomad/lb/config"
)

// TestConsulEnvOverridesFile: the environment overrides lb.toml's [consul]
// (the spec's rule, spec.TestClientConfigsEnvOverridesFile), and a flag
// overrides both.
func TestConsulEnvOverridesFile(t *testing.T) {
	for _, k := range []string{"CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_SSL", "CONSUL_CACERT"} {
		t.Setenv(k, "")
	}
	cfg, err := config.Parse("lb.toml", []byte(`
[consul]
address = "consul.example:8501"
scheme = "https"
token = "ctok"
datacenter = "eu"
ca_file = "/etc/consul/ca.pem"
`))
	if err != nil {
		t.Fatal(err)
	}
	c := consulConfig(cfg)
	if c.Address != "consul.example:8501" || c.Scheme != "https" || c.Token != "ctok" || c.Datacenter != "eu" || c.TLSConfig.CAFile != "/etc/consul/ca.pem" {
		t.Errorf("from the file: %q %q %q %q %q", c.Address, c.Scheme, c.Token, c.Datacenter, c.TLSConfig.CAFile)
	}

	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.9:8500")
	t.Setenv("CONSUL_HTTP_TOKEN", "envtok")
	t.Setenv("CONSUL_CACERT", "/env/ca.pem")
	c = consulConfig(cfg)
	if c.Address != "127.0.0.9:8500" || c.Token != "envtok" || c.TLSConfig.CAFile != "/env/ca.pem" {
		t.Errorf("the environment did not override the file: %q %q %q", c.Address, c.Token, c.TLSConfig.CAFile)
	}
	if c.Datacenter != "eu" {
		t.Errorf("datacenter %q: no environment variable names it, the file's stays", c.Datacenter)
	}

	cfg.Consul.Address = "127.0.0.7:8500" // gwnomad lb --consul 127.0.0.7:8500
	cfg.SetByFlag("consul.address")
	if c := consulConfig(cfg); c.Address != "127.0.0.7:8500" || c.Token != "envtok" {
		t.Errorf("the flag did not override the environment: %q %q", c.Address, c.Token)
	}
}
