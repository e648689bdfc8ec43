// Package spec reads gwnomad.toml, the one file in which an SRE describes a
// WSO2 API Manager gateway cluster.
//
// # A spec in five lines
//
// Every key has a default, so a spec can be almost empty:
//
//	[cluster]
//	name = "apim-gw"
//	[gateway]
//	count = 3
//	hostname = "gw.am.wso2.com"
//
// gives three docker gateways (wso2/wso2am:4.2.0) on three distinct Nomad
// clients, ports 9763/9443/8280/8243, the shared host volume "apim-shared"
// mounted at <home>/repository/deployment/server. The field comments of
// Spec list every key and its default; Canonicalize is the one place the
// defaults are applied. DefaultTOML is the embedded demo spec that
// `gwnomad deploy` uses without -f and `gwnomad init` writes out.
//
// # Reading a spec
//
//	s, warnings, err := spec.Load("gwnomad.toml")
//	for _, w := range warnings {
//		fmt.Fprintln(os.Stderr, w) // warning: gwnomad.toml:5:1: gateway.count: count 1: no high availability ...
//	}
//	if err != nil {
//		return err // every problem, one per line: gwnomad.toml:7:9: gateway.count: must be at least 1 (got 0)
//	}
//
// Parsing is strict: an unknown key, a wrong type or a value out of range is
// an error that names the file, the line and column, and the dotted key
// (the error is an Errors; errors.As gives each *Error). Warnings are things
// that work but that an SRE should know: a count below 2 (no HA), a WSO2 4.x
// spec that mounts all of repository/deployment/server.
//
// A key explicitly set to a zero value keeps it: `http = 0` is a dynamic
// port, `auto_revert = false` disables auto-revert, `count = 0` is an error.
// A Spec built in Go (not parsed) has no such distinction: Canonicalize
// treats its zero values as absent.
//
// # [config]: the rest of deployment.toml
//
// gwnomad writes the deployment.toml keys it owns ([server] hostname,
// node_ip, offset; transport ports and proxy ports; [clustering] when
// enabled) from the spec. Every other key goes into [config], which is
// stored in Consul KV (see package templates) and rendered on every node:
//
//	[config]
//	"apim.key_manager".service_url = "https://km:9443/services/"
//	[config.apim.throttling]
//	service_url = "https://tm:9443/services/"
//
// A first-level key with dots names a table the way a deployment.toml header
// does; see Spec.ConfigLeaves.
//
// # Reaching Nomad and Consul
//
// [nomad] and [consul] hold addresses, tokens and TLS files; the usual
// environment variables override them (NOMAD_ADDR, NOMAD_TOKEN,
// NOMAD_CACERT..., CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT...).
// NomadConfig and ConsulConfig return ready API configurations. Tokens are
// of type Secret, which prints as "<redacted>".
package spec
