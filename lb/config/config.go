// Package config is the lb.toml of `gwnomad lb`: its keys, their defaults (all
// in Default, nowhere else) and the checks that reject a bad file before the
// load balancer starts.
//
// Loading is strict: an unknown key is an error, so a typo never silently
// falls back to a default.
//
//	cfg, err := config.Load("lb.toml") // Default() overlaid with the file
//	cfg.Listen.HTTP = ":8080"          // flags override the file
//	err = cfg.Validate()
//
// A minimal file:
//
//	[[routes]]
//	hosts = ["gw.am.wso2.com"]
//
// which sends every request for gw.am.wso2.com to the passing instances of the
// Consul service "apim-gateway", on their passthrough HTTP port, with the
// power-of-two-choices policy.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/gwnomad/gwnomad/internal/contract"
	"github.com/gwnomad/gwnomad/internal/tomlfile"
)

// Config is the whole lb.toml.
type Config struct {
	Listen Listen  `toml:"listen"`
	Consul Consul  `toml:"consul"`
	Proxy  Proxy   `toml:"proxy"`
	Health Health  `toml:"health"`
	TLS    TLS     `toml:"tls"`
	Log    Log     `toml:"log"`
	Routes []Route `toml:"routes"`

	file  string          // the file Load read ("" for none)
	pos   tomlfile.Index  // where each key was written in it
	flags map[string]bool // keys set by SetByFlag
}

// Listen holds the listener addresses. An empty address disables that
// listener (admin cannot be disabled).
type Listen struct {
	HTTP  string `toml:"http"`  // default ":80"
	HTTPS string `toml:"https"` // default ":443"; used only when tls.mode != "off"
	Admin string `toml:"admin"` // default "127.0.0.1:9901": /metrics, /routes, /healthz
}

// Consul is how the balancer reaches Consul. The usual environment
// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT)
// overrides these keys, as it overrides the spec's [consul]; flags
// override both.
type Consul struct {
	Address    string `toml:"address"`    // default "" (127.0.0.1:8500)
	Scheme     string `toml:"scheme"`     // default "" (http)
	Token      string `toml:"token"`      // default "" (none)
	Datacenter string `toml:"datacenter"` // default "" (the agent's)
	CAFile     string `toml:"ca_file"`    // default "" (system roots)

	// WaitTime is how long one blocking query may wait for a change.
	WaitTime Duration `toml:"wait_time"` // default "60s"
	// MaxStaleness bounds how long the last good answer is served while
	// Consul cannot be reached; past it, the route empties (503). 0 means
	// forever.
	MaxStaleness Duration `toml:"max_staleness"` // default "15m"
	// ReconnectGrace: after Consul was unreachable, answers may only add
	// instances during this period; removals wait until it ends. A Consul
	// agent that restarts marks every check critical until it has run once,
	// and that must not empty the routes.
	ReconnectGrace Duration `toml:"reconnect_grace"` // default "15s"

	// Register the balancer itself in Consul as a service with an HTTP
	// check against the admin /healthz; it is deregistered on shutdown.
	Register      bool     `toml:"register"`        // default true
	ServiceName   string   `toml:"service_name"`    // default "gwnomad-lb"
	ServiceID     string   `toml:"service_id"`      // default "<service_name>-<hostname>-<port>"
	ServiceAddr   string   `toml:"service_address"` // default "" (the agent's node address)
	CheckInterval Duration `toml:"check_interval"`  // default "5s"
}

// Proxy is the request path.
type Proxy struct {
	// Tries is the maximum number of attempts for one request, the first
	// one included (the try budget).
	Tries int `toml:"tries"` // default 3
	// RetryBudgetPercent caps retries, over all requests, to this share of
	// the requests of the last second (plus RetryBudgetMin per second), so
	// retries cannot multiply an overload. 0 disables the cap.
	RetryBudgetPercent int `toml:"retry_budget_percent"` // default 20
	RetryBudgetMin     int `toml:"retry_budget_min"`     // default 10

	DialTimeout     Duration `toml:"dial_timeout"`     // default "2s"
	UpstreamTimeout Duration `toml:"upstream_timeout"` // default "60s": whole response from a gateway
	ReadTimeout     Duration `toml:"read_timeout"`     // default "30s": whole request from a client
	WriteTimeout    Duration `toml:"write_timeout"`    // default "60s": whole response to a client
	IdleTimeout     Duration `toml:"idle_timeout"`     // default "120s": keep-alive between requests
	// MaxHeaderBytes limits the request line and headers (431 beyond).
	MaxHeaderBytes int `toml:"max_header_bytes"` // default 16384
	// MaxBodyBytes limits request bodies (413 beyond). Bodies are buffered
	// whole, which is what lets any request be resent to another gateway.
	MaxBodyBytes int `toml:"max_body_bytes"` // default 16777216 (16 MiB)
	// MaxBufferedResponseBytes: a gateway's answer up to this size is
	// buffered whole. A larger answer is streamed to the client as it
	// comes, without being held in memory, fetched once whatever the
	// method: from the start when its Content-Length says so, else (chunked,
	// or ended by the gateway closing) once this many bytes have come.
	// Streamed or not, an answer must arrive within upstream_timeout and
	// reach the client within write_timeout. 0: no limit, every answer is
	// buffered (within the two budgets below).
	MaxBufferedResponseBytes int `toml:"max_buffered_response_bytes"` // default 4194304 (4 MiB)
	// MaxBufferedTotalBytes bounds the answers held in memory at once, all
	// client connections together: an answer is buffered only while this
	// budget can take its bytes (its Content-Length, or as it comes), and
	// streamed as above otherwise. Slow readers keep their answers until
	// write_timeout; past this budget theirs are streamed, which holds a
	// gateway connection rather than the body. The bodies only: the fixed
	// buffers of each connection (some 20 KiB, bounded by max_conns) are
	// beside it. 0: no limit.
	MaxBufferedTotalBytes int `toml:"max_buffered_total_bytes"` // default 268435456 (256 MiB)
	// MaxBufferedPerConnBytes bounds, within the total, the answers the
	// streams of one HTTP/2 connection hold at once (up to 100 streams), so
	// that one client cannot take the whole budget: 4 answers of
	// max_buffered_response_bytes, or many small ones. An HTTP/1.1
	// connection holds one answer at a time. 0: no limit.
	MaxBufferedPerConnBytes int `toml:"max_buffered_per_connection_bytes"` // default 16777216 (16 MiB)
	// MaxConnsPerUpstream bounds the keep-alive pool to one gateway.
	MaxConnsPerUpstream int `toml:"max_conns_per_upstream"` // default 1024
	// MaxConns bounds concurrent client connections (0: 256*1024).
	MaxConns int `toml:"max_conns"` // default 0
	// TunnelIdleTimeout closes an upgraded connection (WebSocket, relayed
	// as raw bytes after the gateway's 101) in which no byte went either
	// way for this long.
	TunnelIdleTimeout Duration `toml:"tunnel_idle_timeout"` // default "5m"
	// MaxTunnels bounds the upgraded connections relayed at once (each
	// holds two sockets, two goroutines and two 16 KiB buffers); an
	// upgrade request beyond gets 503.
	MaxTunnels int `toml:"max_tunnels"` // default 4096
	// TrustedProxies are the client addresses (CIDR or IP) whose
	// X-Forwarded-For/-Proto/-Host are kept and appended to; from anyone
	// else they are replaced.
	TrustedProxies []string `toml:"trusted_proxies"` // default []
	// GracePeriod: on SIGTERM, in-flight requests get this long to finish.
	GracePeriod Duration `toml:"grace_period"` // default "30s"
	// DrainDelay: on SIGTERM, /healthz fails and the Consul registration
	// goes away first; new requests are still served for this long (so that
	// whatever is in front stops sending) before the listeners close.
	DrainDelay Duration `toml:"drain_delay"` // default "0s"
	// Engine serves HTTP/1.1, plain and over TLS after the handshake:
	// "event-loop" (an event loop per processor, Linux only: less CPU per
	// request; it serves bodyless requests and the answers it can hold,
	// and hands any other connection to the goroutines, see
	// lb/proxy/loop_linux.go) or "goroutines" (fasthttp, a goroutine per
	// connection, for everything). TLS handshakes and HTTP/2 are served by
	// goroutines either way.
	Engine string `toml:"engine"` // default "event-loop" on Linux, else "goroutines"
}

// Health is passive health checking: what the request path itself sees.
type Health struct {
	// ConsecutiveFailures (connection failures or 5xx) eject an instance.
	ConsecutiveFailures int `toml:"consecutive_failures"` // default 3
	// FailOn5xx counts 5xx answers as failures (502/503/504 always count).
	FailOn5xx bool `toml:"fail_on_5xx"` // default true
	// BaseEjection is the first ejection; each further one while the
	// instance keeps failing doubles it, up to MaxEjection.
	BaseEjection Duration `toml:"base_ejection"` // default "2s"
	MaxEjection  Duration `toml:"max_ejection"`  // default "60s"
	// MaxEjectedPercent is the panic threshold: ejection never takes more
	// than this share of a route's instances out (at least one stays).
	MaxEjectedPercent int `toml:"max_ejected_percent"` // default 50
	// SlowStart ramps a gateway that joins a route already serving (one
	// added, or restarted by Nomad) from a tenth of its share of the
	// requests to all of it over this long, so that a cold JVM is not
	// handed full traffic at once. Instances present when the balancer (or
	// a reload) starts are not ramped.
	SlowStart Duration `toml:"slow_start"` // default "0s": off
}

// TLS is the client-facing TLS. With mode files or acme, listen.http
// answers ACME HTTP-01 challenges and redirects everything else to https
// (308, path and query kept).
type TLS struct {
	Mode string `toml:"mode"` // default "off": off | files | acme

	// mode = "files": a PEM pair, reloaded when the files change.
	CertFile string `toml:"cert_file"` // default ""
	KeyFile  string `toml:"key_file"`  // default ""

	// mode = "acme": certificates obtained and renewed with certmagic.
	Domains []string `toml:"domains"` // default []: every route host without "*"
	Email   string   `toml:"email"`   // default "": the ACME account's contact
	CA      string   `toml:"ca"`      // default "https://acme-v02.api.letsencrypt.org/directory"
	// CARoot is a PEM file trusted (beside the system roots) for the ACME
	// server's own HTTPS: a private ACME CA.
	CARoot string `toml:"ca_root"` // default ""
	// Profile is the ACME certificate profile to ask for, e.g. "shortlived".
	Profile string `toml:"profile"` // default "" (the CA's default)
	// OnDemand also obtains certificates at the first handshake, only for
	// names a route lists ("*.example.com" included; "*" never).
	OnDemand bool `toml:"on_demand"` // default false

	// Storage of certificates, keys and the ACME account: "consul" (shared by
	// every LB instance, values encrypted with AES-GCM, one instance orders
	// at a time through Consul session locks) or "file".
	Storage       string `toml:"storage"`        // default "consul"
	StoragePrefix string `toml:"storage_prefix"` // default "gwnomad/lb/certmagic"
	// StorageKeyFile holds the 32-byte encryption key, base64 (first line
	// encrypts, every line decrypts: rotation). Empty: the environment
	// variable GWNOMAD_LB_STORAGE_KEY. Neither and no storage_plaintext is
	// an error.
	StorageKeyFile   string   `toml:"storage_key_file"`  // default ""
	StoragePlaintext bool     `toml:"storage_plaintext"` // default false
	StoragePath      string   `toml:"storage_path"`      // default "/var/lib/gwnomad/lb/certmagic" (storage = "file")
	StorageLockTTL   Duration `toml:"storage_lock_ttl"`  // default "15s" (Consul's minimum is 10s)

	// HSTS is the max-age of Strict-Transport-Security on HTTPS answers.
	HSTS                  Duration `toml:"hsts"`                    // default "0s": no header
	HSTSIncludeSubdomains bool     `toml:"hsts_include_subdomains"` // default false
}

// Log is logging.
type Log struct {
	Level string `toml:"level"` // default "info": debug | info | warn | error
	// AccessLog: "" (off), "-" (stdout) or a file path; one JSON object a
	// line. Requests never wait for it: up to 4 MiB of lines wait in memory
	// for a slow file, lines beyond are dropped and counted
	// (gwnomad_lb_access_log_dropped_total).
	AccessLog string `toml:"access_log"` // default ""
	// RedactQuery names the query parameters whose values the access log
	// writes as REDACTED: API keys and tokens that clients send in the URL
	// (WSO2 takes an API key as ?apikey=). Names are compared ignoring case,
	// as the client sent them. A list given replaces the default; [] logs
	// every value.
	RedactQuery []string `toml:"redact_query"` // default ["apikey", "api_key", "access_token", "id_token", "refresh_token", "token", "client_secret", "password"]
}

// Route sends the requests for some hosts to one Consul service.
type Route struct {
	// Hosts to match against the Host header (port ignored, case folded):
	// exact names, "*.example.com" (any subdomain) or "*" (default route).
	Hosts   []string `toml:"hosts"`
	Service string   `toml:"service"` // default "apim-gateway"
	Tag     string   `toml:"tag"`     // default "": optional tag filter
	// Port: a number, or the name of a registered port: meta "port_<name>"
	// of the instance ("http", "https", "passthru_http", "passthru_https").
	// "passthru_http" falls back to the service port; "service" is the
	// service port.
	Port   string `toml:"port"`   // default "passthru_http"
	Scheme string `toml:"scheme"` // default "http": or "https" to the gateway
	// CAFile verifies the gateways' certificates (scheme https); SkipVerify
	// does not verify them; ServerName overrides the name checked.
	CAFile     string `toml:"ca_file"`     // default "" (system roots)
	SkipVerify bool   `toml:"skip_verify"` // default false
	ServerName string `toml:"server_name"` // default "" (the instance address)
	Policy     string `toml:"policy"`      // default "p2c": round_robin | least_conn | p2c
}

// Policies known to the balancer.
var Policies = []string{"round_robin", "least_conn", "p2c"}

// Default is the configuration with every default filled in (and no route).
func Default() *Config {
	return &Config{
		Listen: Listen{HTTP: ":80", HTTPS: ":443", Admin: "127.0.0.1:9901"},
		Consul: Consul{
			WaitTime:       Duration(60 * time.Second),
			MaxStaleness:   Duration(15 * time.Minute),
			ReconnectGrace: Duration(15 * time.Second),
			Register:       true,
			ServiceName:    contract.LBService,
			CheckInterval:  Duration(5 * time.Second),
		},
		Proxy: Proxy{
			Tries:                    3,
			RetryBudgetPercent:       20,
			RetryBudgetMin:           10,
			DialTimeout:              Duration(2 * time.Second),
			UpstreamTimeout:          Duration(60 * time.Second),
			ReadTimeout:              Duration(30 * time.Second),
			WriteTimeout:             Duration(60 * time.Second),
			IdleTimeout:              Duration(120 * time.Second),
			MaxHeaderBytes:           16 << 10,
			MaxBodyBytes:             16 << 20,
			MaxBufferedResponseBytes: 4 << 20,
			MaxBufferedTotalBytes:    256 << 20,
			MaxBufferedPerConnBytes:  16 << 20,
			MaxConnsPerUpstream:      1024,
			TunnelIdleTimeout:        Duration(5 * time.Minute),
			MaxTunnels:               4096,
			GracePeriod:              Duration(30 * time.Second),
			Engine:                   defaultEngine(),
		},
		Health: Health{
			ConsecutiveFailures: 3,
			FailOn5xx:           true,
			BaseEjection:        Duration(2 * time.Second),
			MaxEjection:         Duration(60 * time.Second),
			MaxEjectedPercent:   50,
		},
		TLS: TLS{
			Mode: "off", CA: "https://acme-v02.api.letsencrypt.org/directory",
			Storage: "consul", StoragePrefix: "gwnomad/lb/certmagic",
			StoragePath: "/var/lib/gwnomad/lb/certmagic", StorageLockTTL: Duration(15 * time.Second),
		},
		Log: Log{Level: "info", RedactQuery: []string{"apikey", "api_key", "access_token", "id_token", "refresh_token", "token", "client_secret", "password"}},
	}
}

// RouteDefaults fills a route's empty fields.
func RouteDefaults(r *Route) {
	if r.Service == "" {
		r.Service = "apim-gateway"
	}
	if r.Port == "" {
		r.Port = "passthru_http"
	}
	if r.Scheme == "" {
		r.Scheme = "http"
	}
	if r.Policy == "" {
		r.Policy = "p2c"
	}
}

// Load reads path over Default (strict: unknown keys are errors) and fills
// route defaults. It does not Validate: flags may still override. Errors
// name the file, line, column and key (tomlfile.Errors).
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading lb config: %w", err)
	}
	return Parse(path, b)
}

// Parse is Load from bytes; name stands for the file in errors.
func Parse(name string, b []byte) (*Config, error) {
	cfg := Default()
	pos, err := tomlfile.Decode(name, b, cfg, knownKeys)
	if err != nil {
		return nil, err
	}
	cfg.file, cfg.pos = name, pos
	for i := range cfg.Routes {
		RouteDefaults(&cfg.Routes[i])
	}
	return cfg, nil
}

var knownKeys = tomlfile.Keys(reflect.TypeOf(Config{}))

// SetByFlag records that key (dotted, e.g. "tls.mode", or a table such as
// "routes[2]") now has a value given on the command line: its errors no
// longer point into the file.
func (c *Config) SetByFlag(key string) {
	if c.flags == nil {
		c.flags = map[string]bool{}
	}
	c.flags[key] = true
}

// ByFlag reports whether key, or a table holding it ("routes[2]"), was set
// on the command line.
func (c *Config) ByFlag(key string) bool {
	for k := key; k != ""; {
		if c.flags[k] {
			return true
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return false
}

// problems collects Validate's errors, each placed at its key in the file.
type problems struct {
	c    *Config
	errs tomlfile.Errors
}

func (p *problems) add(key, format string, args ...any) {
	e := &tomlfile.Error{Key: key, Msg: fmt.Sprintf(format, args...)}
	switch {
	case p.c.ByFlag(key):
		e.Msg += " (set on the command line)"
	case p.c.file != "":
		pos := p.c.pos.AtDotted(key)
		e.File, e.Line, e.Column = p.c.file, pos.Line, pos.Column
	}
	p.errs = append(p.errs, e)
}

// Validate checks the whole configuration and returns every problem found
// (tomlfile.Errors, in the file's order).
func defaultEngine() string {
	if runtime.GOOS == "linux" {
		return "event-loop"
	}
	return "goroutines"
}

func (c *Config) Validate() error {
	p := &problems{c: c}
	bad := p.add
	checkAddr := func(name, addr string, required bool) {
		key := "listen." + name
		if addr == "" {
			if required {
				bad(key, "required")
			}
			return
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			msg := err.Error()
			if ae, ok := errors.AsType[*net.AddrError](err); ok {
				msg = ae.Err
			}
			bad(key, "%q: %s", addr, msg)
		}
	}
	checkAddr("http", c.Listen.HTTP, false)
	checkAddr("admin", c.Listen.Admin, true)
	switch c.TLS.Mode {
	case "off":
		if c.Listen.HTTP == "" {
			bad("listen.http", "required when tls.mode is \"off\"")
		}
	case "files":
		checkAddr("https", c.Listen.HTTPS, true)
		if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
			bad("tls.mode", "\"files\" needs cert_file and key_file")
		}
	case "acme":
		checkAddr("https", c.Listen.HTTPS, true)
		if c.TLS.Storage != "consul" && c.TLS.Storage != "file" {
			bad("tls.storage", "%q: want \"consul\" or \"file\"", c.TLS.Storage)
		}
		if c.TLS.StorageLockTTL.D() < 10*time.Second {
			bad("tls.storage_lock_ttl", "must be at least 10s, Consul's minimum session TTL (got %s)", c.TLS.StorageLockTTL)
		}
		for _, d := range c.TLS.Domains {
			if strings.Contains(d, "*") {
				bad("tls.domains", "%q: wildcard certificates need DNS-01, which is not supported; use on_demand", d)
			}
		}
		if len(c.TLS.Domains) == 0 && !c.TLS.OnDemand && len(acmeHosts(c)) == 0 {
			bad("tls.mode", "\"acme\" needs domains, a route host without \"*\", or on_demand")
		}
	default:
		bad("tls.mode", "%q: want \"off\", \"files\" or \"acme\"", c.TLS.Mode)
	}
	atLeast := func(key string, v, least int) {
		if v < least {
			bad(key, "must be at least %d (got %d)", least, v)
		}
	}
	positive := func(key string, d Duration) {
		if d <= 0 {
			bad(key, "must be positive (got %s)", d)
		}
	}
	if c.TLS.HSTS < 0 {
		bad("tls.hsts", "must not be negative (got %s)", c.TLS.HSTS)
	}
	atLeast("proxy.tries", c.Proxy.Tries, 1)
	atLeast("proxy.retry_budget_percent", c.Proxy.RetryBudgetPercent, 0)
	atLeast("proxy.retry_budget_min", c.Proxy.RetryBudgetMin, 0)
	atLeast("proxy.max_header_bytes", c.Proxy.MaxHeaderBytes, 1024)
	atLeast("proxy.max_buffered_response_bytes", c.Proxy.MaxBufferedResponseBytes, 0)
	atLeast("proxy.max_buffered_total_bytes", c.Proxy.MaxBufferedTotalBytes, 0)
	atLeast("proxy.max_buffered_per_connection_bytes", c.Proxy.MaxBufferedPerConnBytes, 0)
	atLeast("proxy.max_body_bytes", c.Proxy.MaxBodyBytes, 0)
	atLeast("proxy.max_conns_per_upstream", c.Proxy.MaxConnsPerUpstream, 0)
	atLeast("proxy.max_conns", c.Proxy.MaxConns, 0)
	atLeast("proxy.max_tunnels", c.Proxy.MaxTunnels, 1)
	positive("proxy.tunnel_idle_timeout", c.Proxy.TunnelIdleTimeout)
	positive("proxy.dial_timeout", c.Proxy.DialTimeout)
	switch c.Proxy.Engine {
	case "goroutines":
	case "event-loop":
		if runtime.GOOS != "linux" {
			bad("proxy.engine", "\"event-loop\" needs Linux (epoll)")
		}
	default:
		bad("proxy.engine", "%q: want \"goroutines\" or \"event-loop\"", c.Proxy.Engine)
	}
	positive("proxy.upstream_timeout", c.Proxy.UpstreamTimeout)
	for _, s := range c.Proxy.TrustedProxies {
		if _, err := parseTrusted(s); err != nil {
			bad("proxy.trusted_proxies", "%v", err)
		}
	}
	atLeast("health.consecutive_failures", c.Health.ConsecutiveFailures, 1)
	if c.Health.MaxEjectedPercent < 0 || c.Health.MaxEjectedPercent > 100 {
		bad("health.max_ejected_percent", "must be 0..100 (got %d)", c.Health.MaxEjectedPercent)
	}
	positive("health.base_ejection", c.Health.BaseEjection)
	if c.Health.SlowStart < 0 {
		bad("health.slow_start", "must not be negative (got %s)", c.Health.SlowStart)
	}
	if c.Health.MaxEjection < c.Health.BaseEjection {
		bad("health.max_ejection", "must be at least base_ejection (%s < %s)", c.Health.MaxEjection, c.Health.BaseEjection)
	}
	if c.Consul.WaitTime < Duration(time.Second) {
		bad("consul.wait_time", "must be at least 1s (got %s)", c.Consul.WaitTime)
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	for _, name := range c.Log.RedactQuery {
		if name == "" || strings.ContainsAny(name, "&=?# ") {
			bad("log.redact_query", "%q: want a query parameter name", name)
		}
	}
	if len(c.Routes) == 0 {
		bad("routes", "at least one [[routes]] is needed (or --route host=service)")
	}
	seen := map[string]int{}
	for i := range c.Routes {
		r := &c.Routes[i]
		RouteDefaults(r)
		key := func(k string) string { return fmt.Sprintf("routes[%d].%s", i, k) }
		if len(r.Hosts) == 0 {
			bad(key("hosts"), "is empty")
		}
		for _, h := range r.Hosts {
			hn := strings.ToLower(h)
			if err := checkHost(hn); err != nil {
				bad(key("hosts"), "%q: %v", h, err)
			}
			if j, dup := seen[hn]; dup {
				bad(key("hosts"), "%q already in routes[%d]", h, j)
			} else {
				seen[hn] = i
			}
		}
		if _, _, err := ParsePort(r.Port); err != nil {
			bad(key("port"), "%v", err)
		}
		if r.Scheme != "http" && r.Scheme != "https" {
			bad(key("scheme"), "%q: want http or https", r.Scheme)
		}
		if !slices.Contains(Policies, r.Policy) {
			bad(key("policy"), "%q: want one of %s", r.Policy, strings.Join(Policies, ", "))
		}
	}
	if len(p.errs) == 0 {
		return nil
	}
	p.errs.Sort()
	return p.errs
}

func checkHost(h string) error {
	if h == "*" {
		return nil
	}
	name := strings.TrimPrefix(h, "*.")
	if name == "" || strings.ContainsAny(name, "*:/ ") {
		return errors.New("want a name, *.name or *")
	}
	return nil
}

// ParsePort reads a route's port: a number (num > 0) or a name.
func ParsePort(s string) (num int, name string, err error) {
	if s == "" {
		return 0, "", errors.New("is empty")
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 65535 {
			return 0, "", fmt.Errorf("%d: out of range (1..65535)", n)
		}
		return n, "", nil
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return 0, "", fmt.Errorf("%q: want a number or a name like passthru_http", s)
		}
	}
	return 0, s, nil
}

// TrustedPrefixes parses TrustedProxies (CIDRs or single addresses).
func (p *Proxy) TrustedPrefixes() ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(p.TrustedProxies))
	for _, s := range p.TrustedProxies {
		pf, err := parseTrusted(s)
		if err != nil {
			return nil, fmt.Errorf("proxy.trusted_proxies: %w", err)
		}
		out = append(out, pf)
	}
	return out, nil
}

func parseTrusted(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q: want a CIDR or an address", s)
		}
		return pf.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q: want a CIDR or an address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Redacted replaces secrets in Marshal's output.
const Redacted = "<redacted>"

// Marshal returns c as lb.toml text, every key with its value (defaults
// included), the Consul token redacted: what `gwnomad lb --check` prints.
func (c *Config) Marshal() ([]byte, error) {
	cp := *c
	if cp.Consul.Token != "" {
		cp.Consul.Token = Redacted
	}
	b, err := toml.Marshal(&cp)
	if err != nil {
		return nil, fmt.Errorf("encoding the configuration: %w", err)
	}
	return b, nil
}

// Duration is a time.Duration written as a string in TOML ("1.5s", "2m").
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: %w", b, err)
	}
	if v < 0 {
		return fmt.Errorf("duration %q: negative", b)
	}
	*d = Duration(v)
	return nil
}

// acmeHosts are the route hosts a certificate can be ordered for (no "*").
func acmeHosts(c *Config) []string {
	var hs []string
	for _, r := range c.Routes {
		for _, h := range r.Hosts {
			if !strings.Contains(h, "*") {
				hs = append(hs, h)
			}
		}
	}
	return hs
}

// CertDomains are the names whose certificates mode acme obtains at start:
// tls.domains, else every route host without "*".
func (c *Config) CertDomains() []string {
	if len(c.TLS.Domains) > 0 {
		return c.TLS.Domains
	}
	return acmeHosts(c)
}

// CertHosts are the names allowed on demand: every route host (patterns
// included) and tls.domains.
func (c *Config) CertHosts() []string {
	var hs []string
	for _, r := range c.Routes {
		hs = append(hs, r.Hosts...)
	}
	return append(hs, c.TLS.Domains...)
}
