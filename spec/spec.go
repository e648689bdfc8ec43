package spec

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gwnomad/gwnomad/internal/tomlfile"
)

// Spec is a parsed gwnomad.toml. Every field has a default: a key absent from
// the file takes it (see Canonicalize). A key explicitly set to a zero value
// keeps it (`count = 0` is then reported by Validate, `http = 0` means a
// dynamic port).
type Spec struct {
	Cluster      Cluster        `toml:"cluster"`
	Gateway      Gateway        `toml:"gateway"`
	SharedVolume SharedVolume   `toml:"shared_volume"`
	Clustering   Clustering     `toml:"clustering"`
	Update       Update         `toml:"update"`
	Config       map[string]any `toml:"config"` // further deployment.toml keys, stored in Consul KV
	Nomad        Nomad          `toml:"nomad"`
	Consul       Consul         `toml:"consul"`

	// File is the name the spec was parsed under (for messages). Not a TOML key.
	File string `toml:"-"`

	pos       tomlfile.Index // where each key was written (nil for a Spec built in Go)
	canonical bool           // Canonicalize ran (boolean defaults are not applied twice)
}

// Cluster names the gateway cluster and where it runs.
type Cluster struct {
	// Name is the Nomad job ID, the prefix of the Consul KV path
	// (gwnomad/<name>/config/<id>/) and a tag of every service instance.
	// Default "apim-gw". Letters, digits, '-' and '_'.
	Name string `toml:"name"`
	// Datacenters the job may run in. Default ["dc1"].
	Datacenters []string `toml:"datacenters"`
	// Region of the job (and of the Nomad API calls). Default "global".
	Region string `toml:"region"`
	// Namespace of the job (and of the Nomad API calls). Default "default".
	Namespace string `toml:"namespace"`
}

// Gateway describes one gateway node; Count of them run.
type Gateway struct {
	// Count of gateway nodes, never two on one Nomad client. Default 3;
	// at least 1 (below 2 is warned about: no high availability).
	Count int `toml:"count"`
	// Driver is the Nomad task driver: "docker" or "exec". Default "docker".
	Driver string `toml:"driver"`
	// Image is the docker image. Default "wso2/wso2am:4.2.0" (docker only).
	Image string `toml:"image"`
	// Command is the program to run: required for exec; for docker it
	// overrides the image's command. Default "".
	Command string `toml:"command"`
	// Args are the program's arguments (Nomad interpolation such as
	// ${node.unique.name} works). Default [].
	Args []string `toml:"args"`
	// Home is <API-M_HOME>, inside the container (docker) or the task's
	// chroot (exec). Default "/home/wso2carbon/wso2am-4.2.0".
	Home string `toml:"home"`
	// Hostname is [server] hostname: what clients use to reach the load
	// balancer. Default "gw.am.wso2.com".
	Hostname string `toml:"hostname"`
	// Offset is [server] offset, added to every port. Default 0 (0..10000).
	Offset int `toml:"offset"`
	// CPU in MHz. Default 2000.
	CPU int `toml:"cpu"`
	// Memory in MiB. Default 4096.
	Memory int `toml:"memory"`
	// Service is the Consul service name of the gateway nodes. Default
	// "apim-gateway".
	Service string `toml:"service"`
	// ProductVersion is shown in Consul service meta and tags. Default "4.2.0".
	ProductVersion string `toml:"product_version"`
	// ShutdownDelay between deregistering from Consul and stopping the
	// task, so the load balancer stops sending first. Default "5s".
	ShutdownDelay Duration `toml:"shutdown_delay"`
	// KillTimeout between the stop signal and SIGKILL. Default "30s".
	KillTimeout Duration `toml:"kill_timeout"`

	Ports      Ports      `toml:"ports"`
	ProxyPorts ProxyPorts `toml:"proxy_ports"`
	Checks     Checks     `toml:"checks"`
}

// Ports are the servlet and passthrough ports before the offset. 0 means a
// dynamic port allocated by Nomad (the rendered deployment.toml then holds
// the allocated port minus the offset, so that port + offset is the port
// Nomad allocated).
type Ports struct {
	HTTP          int `toml:"http"`           // default 9763 (liveness check)
	HTTPS         int `toml:"https"`          // default 9443 (readiness check)
	PassthruHTTP  int `toml:"passthru_http"`  // default 8280 (API traffic)
	PassthruHTTPS int `toml:"passthru_https"` // default 8243 (API traffic, TLS)
}

// ProxyPorts are what clients see at the load balancer (proxyPort).
type ProxyPorts struct {
	HTTP  int `toml:"http"`  // default 80
	HTTPS int `toml:"https"` // default 443
}

// Checks tunes the Consul health checks of every node.
type Checks struct {
	// Interval between checks. Default "10s".
	Interval Duration `toml:"interval"`
	// Timeout of one check. Default "5s".
	Timeout Duration `toml:"timeout"`
	// TLSSkipVerify skips certificate verification of the readiness check
	// (WSO2's default certificate is self-signed). Default true.
	TLSSkipVerify bool `toml:"tls_skip_verify"`
	// RestartLimit is how many consecutive failed liveness checks restart
	// the task. Default 3.
	RestartLimit int `toml:"restart_limit"`
	// RestartGrace is the time after a (re)start before liveness failures
	// count. Default "120s" (a WSO2 node takes a while to start).
	RestartGrace Duration `toml:"restart_grace"`
}

// SharedVolume is the Nomad host volume (an NFS mount on every client) that
// holds the artifacts every node serves.
type SharedVolume struct {
	// Name of the client host_volume. Default "apim-shared".
	Name string `toml:"name"`
	// Mount point relative to home. Default "repository/deployment/server"
	// (the guide's; WSO2 4.x advises against mounting all of it: warned).
	Mount string `toml:"mount"`
	// ReadOnly mounts the volume read-only. Default false.
	ReadOnly bool `toml:"read_only"`
}

// Clustering is the guide's optional Hazelcast step.
type Clustering struct {
	// Enabled renders a [clustering] block (well-known-address membership,
	// members found in Consul). Default false.
	Enabled bool `toml:"enabled"`
	// Port of Hazelcast membership; 0 = dynamic. Default 4000.
	Port int `toml:"port"`
}

// Update is Nomad's update block: how a new version rolls out.
type Update struct {
	MaxParallel      int      `toml:"max_parallel"`      // default 1
	Canary           int      `toml:"canary"`            // default 0
	AutoRevert       bool     `toml:"auto_revert"`       // default true
	AutoPromote      bool     `toml:"auto_promote"`      // default false
	MinHealthyTime   Duration `toml:"min_healthy_time"`  // default "10s"
	HealthyDeadline  Duration `toml:"healthy_deadline"`  // default "5m"
	ProgressDeadline Duration `toml:"progress_deadline"` // default "10m"
}

// Nomad is how gwnomad reaches Nomad. The environment (NOMAD_ADDR,
// NOMAD_TOKEN, NOMAD_CACERT, NOMAD_CAPATH, NOMAD_CLIENT_CERT,
// NOMAD_CLIENT_KEY, NOMAD_TLS_SERVER_NAME, NOMAD_SKIP_VERIFY) overrides
// these keys. Region and namespace come from [cluster].
type Nomad struct {
	Address       string `toml:"address"`         // default "http://127.0.0.1:4646"
	Token         Secret `toml:"token"`           // default "" (no ACL token)
	CACert        string `toml:"ca_cert"`         // default ""
	CAPath        string `toml:"ca_path"`         // default ""
	ClientCert    string `toml:"client_cert"`     // default ""
	ClientKey     string `toml:"client_key"`      // default ""
	TLSServerName string `toml:"tls_server_name"` // default ""
	TLSSkipVerify bool   `toml:"tls_skip_verify"` // default false
}

// Consul is how gwnomad reaches Consul. The environment (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CAPATH,
// CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME,
// CONSUL_HTTP_SSL_VERIFY) overrides these keys.
type Consul struct {
	Address       string `toml:"address"`         // default "127.0.0.1:8500" (http); "https://host:port" for TLS
	Token         Secret `toml:"token"`           // default ""
	Datacenter    string `toml:"datacenter"`      // default "" (the agent's)
	CACert        string `toml:"ca_cert"`         // default ""
	CAPath        string `toml:"ca_path"`         // default ""
	ClientCert    string `toml:"client_cert"`     // default ""
	ClientKey     string `toml:"client_key"`      // default ""
	TLSServerName string `toml:"tls_server_name"` // default ""
	TLSSkipVerify bool   `toml:"tls_skip_verify"` // default false
}

// Defaults of the keys (the production values; see spec/default.toml for
// the embedded demo spec).
const (
	DefaultClusterName    = "apim-gw"
	DefaultRegion         = "global"
	DefaultNamespace      = "default"
	DefaultCount          = 3
	DefaultDriver         = "docker"
	DefaultImage          = "wso2/wso2am:4.2.0"
	DefaultHome           = "/home/wso2carbon/wso2am-4.2.0"
	DefaultHostname       = "gw.am.wso2.com"
	DefaultCPU            = 2000
	DefaultMemory         = 4096
	DefaultService        = "apim-gateway"
	DefaultProductVersion = "4.2.0"
	DefaultVolumeName     = "apim-shared"
	DefaultVolumeMount    = "repository/deployment/server"
	DefaultClusteringPort = 4000
	DefaultNomadAddress   = "http://127.0.0.1:4646"
	DefaultConsulAddress  = "127.0.0.1:8500"
)

// Driver names.
const (
	DriverDocker = "docker"
	DriverExec   = "exec"
)

// Canonicalize fills every key absent from the file with its default. It is
// the one place defaults live. For a Spec built in Go (not parsed), zero
// values count as absent. Parse calls it; calling it twice is harmless.
func (s *Spec) Canonicalize() {
	def := func(key string, zero bool) bool { return zero && !s.pos.Has(key) }
	str := func(key string, p *string, v string) {
		if def(key, *p == "") {
			*p = v
		}
	}
	num := func(key string, p *int, v int) {
		if def(key, *p == 0) {
			*p = v
		}
	}
	dur := func(key string, p *Duration, v time.Duration) {
		if def(key, p.Duration == 0) {
			p.Duration = v
		}
	}
	boolean := func(key string, p *bool, v bool) {
		if !s.canonical && !s.pos.Has(key) {
			*p = v
		}
	}

	str("cluster.name", &s.Cluster.Name, DefaultClusterName)
	if def("cluster.datacenters", len(s.Cluster.Datacenters) == 0) {
		s.Cluster.Datacenters = []string{"dc1"}
	}
	str("cluster.region", &s.Cluster.Region, DefaultRegion)
	str("cluster.namespace", &s.Cluster.Namespace, DefaultNamespace)

	g := &s.Gateway
	num("gateway.count", &g.Count, DefaultCount)
	str("gateway.driver", &g.Driver, DefaultDriver)
	if g.Driver == DriverDocker {
		str("gateway.image", &g.Image, DefaultImage)
	}
	if g.Args == nil {
		g.Args = []string{}
	}
	str("gateway.home", &g.Home, DefaultHome)
	str("gateway.hostname", &g.Hostname, DefaultHostname)
	num("gateway.cpu", &g.CPU, DefaultCPU)
	num("gateway.memory", &g.Memory, DefaultMemory)
	str("gateway.service", &g.Service, DefaultService)
	str("gateway.product_version", &g.ProductVersion, DefaultProductVersion)
	dur("gateway.shutdown_delay", &g.ShutdownDelay, 5*time.Second)
	dur("gateway.kill_timeout", &g.KillTimeout, 30*time.Second)
	num("gateway.ports.http", &g.Ports.HTTP, 9763)
	num("gateway.ports.https", &g.Ports.HTTPS, 9443)
	num("gateway.ports.passthru_http", &g.Ports.PassthruHTTP, 8280)
	num("gateway.ports.passthru_https", &g.Ports.PassthruHTTPS, 8243)
	num("gateway.proxy_ports.http", &g.ProxyPorts.HTTP, 80)
	num("gateway.proxy_ports.https", &g.ProxyPorts.HTTPS, 443)
	dur("gateway.checks.interval", &g.Checks.Interval, 10*time.Second)
	dur("gateway.checks.timeout", &g.Checks.Timeout, 5*time.Second)
	boolean("gateway.checks.tls_skip_verify", &g.Checks.TLSSkipVerify, true)
	num("gateway.checks.restart_limit", &g.Checks.RestartLimit, 3)
	dur("gateway.checks.restart_grace", &g.Checks.RestartGrace, 120*time.Second)

	str("shared_volume.name", &s.SharedVolume.Name, DefaultVolumeName)
	str("shared_volume.mount", &s.SharedVolume.Mount, DefaultVolumeMount)

	num("clustering.port", &s.Clustering.Port, DefaultClusteringPort)

	u := &s.Update
	num("update.max_parallel", &u.MaxParallel, 1)
	boolean("update.auto_revert", &u.AutoRevert, true)
	dur("update.min_healthy_time", &u.MinHealthyTime, 10*time.Second)
	dur("update.healthy_deadline", &u.HealthyDeadline, 5*time.Minute)
	dur("update.progress_deadline", &u.ProgressDeadline, 10*time.Minute)

	if s.Config == nil {
		s.Config = map[string]any{}
	}
	str("nomad.address", &s.Nomad.Address, DefaultNomadAddress)
	str("consul.address", &s.Consul.Address, DefaultConsulAddress)
	s.canonical = true
}

// Duration is a TOML string such as "10s", "5m" or "1h30m".
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration ("10s").
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("not a duration (e.g. \"10s\", \"5m\"): %q", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as "10s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Secret is a string never printed: String, GoString, MarshalText and
// MarshalJSON all give "<redacted>" (or "" when empty). Use Reveal to read it.
type Secret string

// Redacted is what a secret prints as.
const Redacted = "<redacted>"

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return Redacted
}

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// MarshalText keeps encoders from writing the value.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// MarshalJSON keeps encoding/json from writing the value.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(s.String())), nil }

// String describes the spec in one line. It never prints [config] values
// (they may hold secrets) nor tokens.
func (s *Spec) String() string {
	if s == nil {
		return "<nil spec>"
	}
	g := s.Gateway
	what := g.Image
	if g.Driver == DriverExec {
		what = g.Command
	}
	return fmt.Sprintf("spec %s: %d x %s %s, hostname %s, %d [config] key(s)",
		s.Cluster.Name, g.Count, g.Driver, what, g.Hostname, countLeaves(s.Config))
}

// GoString keeps %#v from printing [config] values and tokens.
func (s *Spec) GoString() string { return strconv.Quote(s.String()) }

func countLeaves(m map[string]any) int {
	n := 0
	for _, v := range m {
		if sub, ok := v.(map[string]any); ok {
			n += countLeaves(sub)
		} else {
			n++
		}
	}
	return n
}

// SharedPath returns where a path under the gateway home (such as
// "repository/deployment/server/synapse-configs/default/api") lies inside
// the shared volume, relative to its root, and false when the path is not on
// the shared volume.
func (s *Spec) SharedPath(homeRel string) (string, bool) {
	mount := strings.Trim(s.SharedVolume.Mount, "/")
	rel := strings.Trim(homeRel, "/")
	if rel == mount {
		return ".", true
	}
	if r, ok := strings.CutPrefix(rel, mount+"/"); ok {
		return r, true
	}
	return "", false
}
