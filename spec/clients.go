package spec

import (
	"os"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
)

// NomadConfig returns the Nomad API configuration: the [nomad] table with
// the environment on top (NOMAD_ADDR, NOMAD_TOKEN, NOMAD_CACERT,
// NOMAD_CAPATH, NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY, NOMAD_TLS_SERVER_NAME,
// NOMAD_SKIP_VERIFY, NOMAD_HTTP_AUTH). Region and namespace are always the
// job's ([cluster] region and namespace), so that every call looks where
// the job lives; NOMAD_REGION and NOMAD_NAMESPACE are not used.
func (s *Spec) NomadConfig() *nomadapi.Config {
	cfg := nomadapi.DefaultConfig() // reads the environment
	n := s.Nomad
	set := func(env string, dst *string, v string) {
		if os.Getenv(env) == "" && v != "" {
			*dst = v
		}
	}
	set("NOMAD_ADDR", &cfg.Address, n.Address)
	set("NOMAD_TOKEN", &cfg.SecretID, n.Token.Reveal())
	set("NOMAD_CACERT", &cfg.TLSConfig.CACert, n.CACert)
	set("NOMAD_CAPATH", &cfg.TLSConfig.CAPath, n.CAPath)
	set("NOMAD_CLIENT_CERT", &cfg.TLSConfig.ClientCert, n.ClientCert)
	set("NOMAD_CLIENT_KEY", &cfg.TLSConfig.ClientKey, n.ClientKey)
	set("NOMAD_TLS_SERVER_NAME", &cfg.TLSConfig.TLSServerName, n.TLSServerName)
	if os.Getenv("NOMAD_SKIP_VERIFY") == "" && n.TLSSkipVerify {
		cfg.TLSConfig.Insecure = true
	}
	if !strings.Contains(cfg.Address, "://") {
		cfg.Address = "http://" + cfg.Address
	}
	cfg.Region = s.Cluster.Region
	cfg.Namespace = s.Cluster.Namespace
	return cfg
}

// ConsulConfig returns the Consul API configuration: the [consul] table
// with the environment on top (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
// CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CAPATH,
// CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME,
// CONSUL_HTTP_SSL_VERIFY, CONSUL_HTTP_AUTH). An address "https://host:port"
// selects TLS.
func (s *Spec) ConsulConfig() *consulapi.Config {
	cfg := consulapi.DefaultConfig() // reads the environment
	c := s.Consul
	set := func(env string, dst *string, v string) {
		if os.Getenv(env) == "" && v != "" {
			*dst = v
		}
	}
	if os.Getenv("CONSUL_HTTP_ADDR") == "" && c.Address != "" {
		addr := c.Address
		if rest, ok := strings.CutPrefix(addr, "https://"); ok {
			cfg.Scheme, addr = "https", rest
		} else {
			addr = strings.TrimPrefix(addr, "http://")
		}
		cfg.Address = addr
	}
	if os.Getenv("CONSUL_HTTP_TOKEN_FILE") == "" {
		set("CONSUL_HTTP_TOKEN", &cfg.Token, c.Token.Reveal())
	}
	if c.Datacenter != "" {
		cfg.Datacenter = c.Datacenter
	}
	set("CONSUL_CACERT", &cfg.TLSConfig.CAFile, c.CACert)
	set("CONSUL_CAPATH", &cfg.TLSConfig.CAPath, c.CAPath)
	set("CONSUL_CLIENT_CERT", &cfg.TLSConfig.CertFile, c.ClientCert)
	set("CONSUL_CLIENT_KEY", &cfg.TLSConfig.KeyFile, c.ClientKey)
	set("CONSUL_TLS_SERVER_NAME", &cfg.TLSConfig.Address, c.TLSServerName)
	if os.Getenv("CONSUL_HTTP_SSL_VERIFY") == "" && c.TLSSkipVerify {
		cfg.TLSConfig.InsecureSkipVerify = true
	}
	return cfg
}
