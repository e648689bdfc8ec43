// Package lb is `gwnomad lb`: the load balancer in front of the WSO2 API-M
// gateways, with Consul discovery, passive health and retries.
//
// # How a request gets to a gateway
//
// The layout follows the data: Consul → discovery → balancer → proxy.
//
//   - discovery watches, with Consul blocking queries, the passing instances
//     of every service that a route names. It keeps the last good answer when
//     Consul is unreachable (up to consul.max_staleness), and after an outage
//     lets answers only add instances for consul.reconnect_grace, so a Consul
//     restart is not an outage.
//   - balancer turns each discovery update into a new routing table, built
//     whole and swapped atomically; the request path reads it without locks.
//     Each route picks instances with its policy (round_robin, least_conn,
//     p2c) and ejects failing ones for a growing backoff (passive health),
//     never more than health.max_ejected_percent of them.
//   - proxy is the request path: fasthttp for HTTP/1.1, net/http for h2 over
//     TLS, raw relaying for WebSocket; retries within a try budget, forwarded
//     headers, limits and timeouts, metrics and an access log.
//   - admin serves /healthz, /routes (the live table with each instance's
//     state) and /metrics on a listener of its own.
//
// # Running it
//
//	cfg, err := config.Load("lb.toml")
//	cfg.Listen.HTTP = ":8080"            // flags override the file
//	err = lb.Run(ctx, cfg)               // until ctx ends, then drains
//
// or, to learn the bound addresses (tests, ports ":0"):
//
//	l, err := lb.New(cfg, lb.WithLogger(log))
//	err = l.Start(ctx)
//	fmt.Println(l.Addrs().HTTP)
//	err = l.Wait()
//
// l.Reload(ctx, newCfg) applies new routes, [health] and log.level to the
// running balancer without closing a connection (`gwnomad lb` calls it on
// SIGHUP); other changes need a restart and are refused.
//
// l.Upgrade hands the listening sockets to a new process of the balancer
// (`gwnomad lb` on SIGUSR2: a new binary, or a change that needs a restart)
// and returns once it serves; WithInherited(Inherit()) is the new
// process's side, and systemd socket activation's. Not a connection is
// refused meanwhile (handover.go has the rules).
//
// When ctx ends (SIGTERM), the balancer drains: /healthz answers 503 and
// the Consul registration goes away, requests are still served for
// proxy.drain_delay, then the listeners close and requests in flight get
// proxy.grace_period to finish; relayed WebSocket connections are closed
// last.
//
// # TLS
//
// tls.mode = "files" serves cert_file/key_file (reloaded when they change);
// tls.mode = "acme" obtains and renews certificates with certmagic (package
// certs), stored encrypted in Consul KV and shared by every LB instance. With
// either, listen.http answers ACME HTTP-01 challenges and redirects everything
// else to https with a 308. Any other certificate source plugs in with
// WithTLSConfig: the *tls.Config is used as is, with "h2" and "http/1.1"
// added to its NextProtos.
package lb

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/valyala/fasthttp"

	"github.com/gwnomad/gwnomad/lb/balancer"
	"github.com/gwnomad/gwnomad/lb/certs"
	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/discovery"
	"github.com/gwnomad/gwnomad/lb/proxy"
)

// Option changes how New builds the balancer.
type Option func(*LB)

// WithTLSConfig serves HTTPS with c (for instance certmagic's TLSConfig()),
// whatever tls.mode says; listen.https must be set.
func WithTLSConfig(c *tls.Config) Option { return func(l *LB) { l.tlsConfig = c } }

// WithLogger logs to log (default slog.Default()).
func WithLogger(log *slog.Logger) Option { return func(l *LB) { l.log = log } }

// WithConsulClient uses c instead of a client made from the environment
// and the [consul] table.
func WithConsulClient(c *consulapi.Client) Option { return func(l *LB) { l.consul = c } }

// WithLogLevel lets Reload apply log.level to v (the level of the logger
// given with WithLogger).
func WithLogLevel(v *slog.LevelVar) Option { return func(l *LB) { l.level = v } }

// WithInherited makes Start serve on the sockets passed to this process
// (Inherit) instead of binding its own (see handover.go).
func WithInherited(in *Inherited) Option { return func(l *LB) { l.inherited = in } }

// WithAccessLog writes the access log to w, whatever log.access_log says.
func WithAccessLog(w io.Writer) Option { return func(l *LB) { l.accessOut = w } }

func openAccessLog(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening access log: %w", err)
	}
	return f, nil
}

// ReopenAccessLog opens log.access_log's file again and writes to the new
// file from now on, for log rotation (logrotate renames the file, then
// sends SIGHUP); the lines buffered until then go to the old file, which
// is then closed. Nothing to do when the access log is off, on stdout or
// given by WithAccessLog. On an error the old file stays in use.
func (l *LB) ReopenAccessLog() error {
	if l.accessPath == "" {
		return nil
	}
	f, err := openAccessLog(l.accessPath)
	if err != nil {
		return err
	}
	if old, ok := l.accessLog.SetOutput(f).(io.Closer); ok {
		_ = old.Close()
	}
	return nil
}

// Addrs are the bound listener addresses ("" when not listening).
type Addrs struct{ HTTP, HTTPS, Admin string }

// LB is one running load balancer.
type LB struct {
	cfg        *config.Config
	log        *slog.Logger
	consul     *consulapi.Client
	tlsConfig  *tls.Config
	certs      *certs.Manager // tls.mode files or acme: certificates, and :80 (challenges, redirect)
	accessOut  io.Writer
	accessPath string // the file of accessOut, when New opened it
	accessLog  *proxy.AccessLog

	reg      *prometheus.Registry
	table    balancer.Holder
	buildMu  sync.Mutex        // builder swaps (Reload) against table builds
	builder  *balancer.Builder // under buildMu
	reloadMu sync.Mutex        // one Reload at a time
	live     *config.Config    // the configuration in force (under reloadMu)
	level    *slog.LevelVar    // WithLogLevel
	// reregister hands the register loop the routes of a reload that
	// changed the services routed (meta "services").
	reregister chan []config.Route
	proxy      *proxy.Proxy
	watcher    *discovery.Watcher
	draining   atomic.Bool
	lag        prometheus.Histogram

	httpLn, httpsLn, adminLn net.Listener
	inherited                *Inherited  // sockets passed in (handover.go)
	upgrading                atomic.Bool // an Upgrade runs or succeeded
	handedOver               atomic.Bool // a new process serves our sockets
	fast                     *fasthttp.Server
	loop                     *proxy.LoopServer // with [proxy] engine = "event-loop": instead of fast, and for tlsSrv's HTTP/1.1
	redirectSrv              *http.Server      // :80 when TLS is on
	tlsSrv                   *proxy.TLSServer
	adminSrv                 *http.Server

	wg     sync.WaitGroup
	done   chan struct{}
	errMu  sync.Mutex
	runErr error
}

// New checks cfg and prepares a balancer; Start runs it.
func New(cfg *config.Config, opts ...Option) (*LB, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid lb configuration: %w", err)
	}
	l := &LB{cfg: cfg, done: make(chan struct{}), reregister: make(chan []config.Route, 1)}
	for _, o := range opts {
		o(l)
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	if l.consul == nil {
		c, err := ConsulClient(cfg)
		if err != nil {
			return nil, err
		}
		l.consul = c
	}
	switch {
	case l.tlsConfig != nil:
		if cfg.Listen.HTTPS == "" {
			return nil, errors.New("a TLS configuration was given but listen.https is empty")
		}
	case cfg.TLS.Mode == "files" || cfg.TLS.Mode == "acme":
		mgr, err := certs.New(certsConfig(cfg, l.log), l.consul)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		l.certs, l.tlsConfig = mgr, mgr.TLSConfig()
	}
	if l.accessOut == nil {
		switch cfg.Log.AccessLog {
		case "":
		case "-":
			l.accessOut = os.Stdout
		default:
			f, err := openAccessLog(cfg.Log.AccessLog)
			if err != nil {
				return nil, err
			}
			l.accessOut, l.accessPath = f, cfg.Log.AccessLog
		}
	}
	if l.accessOut != nil {
		l.accessLog = proxy.NewAccessLog(l.accessOut, l.log, cfg.Log.RedactQuery...)
	}

	l.reg = prometheus.NewRegistry()
	l.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if al := l.accessLog; al != nil {
		l.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gwnomad_lb_access_log_dropped_total",
			Help: "Access log lines dropped because the log's file did not keep up (4 MiB of lines were waiting for it).",
		}, func() float64 { return float64(al.Dropped()) }))
	}
	popt, err := proxy.OptionsFrom(cfg)
	if err != nil {
		return nil, err
	}
	popt.Logger, popt.AccessLog, popt.Metrics = l.log, l.accessLog, proxy.NewMetrics(l.reg)
	if l.certs != nil {
		popt.HSTS = l.certs.HSTSHeader()
	}
	l.proxy = proxy.New(&l.table, popt)
	l.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gwnomad_lb_buffered_answer_bytes",
		Help: "Bytes of gateways' answers held in memory now, all requests together, within max_buffered_total_bytes.",
	}, func() float64 { return float64(l.proxy.BufferedAnswerBytes()) }))
	l.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "gwnomad_lb_answers_streamed_for_budget_total",
		Help: "Answers streamed rather than buffered because max_buffered_total_bytes, or an HTTP/2 connection's max_buffered_per_connection_bytes, was spent.",
	}, func() float64 { return float64(l.proxy.AnswersStreamedForBudget()) }))
	l.builder = l.newBuilder(cfg)
	l.live = cfg
	l.table.Store(l.builder.Build(nil)) // every route empty (503) until Consul answers
	l.lag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "gwnomad_lb_discovery_update_seconds",
		Help:    "Time from a Consul answer's arrival to the new routing table being live.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
	})
	l.reg.MustRegister(l.lag)
	l.watcher = &discovery.Watcher{
		Fetcher:        &discovery.ConsulFetcher{Client: l.consul, Datacenter: cfg.Consul.Datacenter},
		Queries:        l.builder.Queries(),
		OnUpdate:       l.onUpdate,
		Logger:         l.log.With("component", "discovery"),
		WaitTime:       cfg.Consul.WaitTime.D(),
		MaxStaleness:   cfg.Consul.MaxStaleness.D(),
		ReconnectGrace: cfg.Consul.ReconnectGrace.D(),
	}
	l.reg.MustRegister(&collector{l: l})
	if l.certs != nil {
		l.reg.MustRegister(l.certs)
	}
	return l, nil
}

// certsConfig maps [tls] to the certificate manager's configuration.
func certsConfig(cfg *config.Config, log *slog.Logger) certs.Config {
	t := &cfg.TLS
	return certs.Config{
		Mode: t.Mode, CertFile: t.CertFile, KeyFile: t.KeyFile,
		Domains: cfg.CertDomains(), OnDemand: t.OnDemand, OnDemandHosts: cfg.CertHosts(),
		Email: t.Email, CA: t.CA, CARoot: t.CARoot, Profile: t.Profile,
		HTTPAddr: cfg.Listen.HTTP, HTTPSAddr: cfg.Listen.HTTPS, DisableHTTPChallenge: cfg.Listen.HTTP == "",
		Storage: certs.StorageConfig{
			Kind: t.Storage, Prefix: t.StoragePrefix, KeyFile: t.StorageKeyFile,
			Plaintext: t.StoragePlaintext, LockTTL: t.StorageLockTTL.D(), Path: t.StoragePath,
		},
		HSTS: t.HSTS.D(), HSTSIncludeSubdomains: t.HSTSIncludeSubdomains,
		Logger: log,
	}
}

// ConsulClient makes the balancer's Consul client. The rule is the spec's
// (spec.ConsulConfig) and the Consul CLI's: the environment
// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT)
// overrides the [consul] table, so that one lb.toml serves every cluster
// the process is pointed at; a value given by flag (SetByFlag, e.g.
// --consul) overrides both.
func ConsulClient(cfg *config.Config) (*consulapi.Client, error) {
	cl, err := consulapi.NewClient(consulConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return cl, nil
}

func consulConfig(cfg *config.Config) *consulapi.Config {
	cc := consulapi.DefaultConfig() // reads the environment
	c := &cfg.Consul
	set := func(key, env string, dst *string, v string) {
		if v != "" && (os.Getenv(env) == "" || cfg.ByFlag(key)) {
			*dst = v
		}
	}
	set("consul.address", "CONSUL_HTTP_ADDR", &cc.Address, c.Address)
	set("consul.scheme", "CONSUL_HTTP_SSL", &cc.Scheme, c.Scheme)
	if os.Getenv("CONSUL_HTTP_TOKEN_FILE") == "" {
		set("consul.token", "CONSUL_HTTP_TOKEN", &cc.Token, c.Token)
	}
	if c.Datacenter != "" {
		cc.Datacenter = c.Datacenter
	}
	set("consul.ca_file", "CONSUL_CACERT", &cc.TLSConfig.CAFile, c.CAFile)
	return cc
}

// newBuilder makes the routing table builder of cfg's routes and health.
func (l *LB) newBuilder(cfg *config.Config) *balancer.Builder {
	b := balancer.NewBuilder(cfg.Routes, balancer.Health{
		ConsecutiveFailures: cfg.Health.ConsecutiveFailures, BaseEjection: cfg.Health.BaseEjection.D(),
		MaxEjection: cfg.Health.MaxEjection.D(), MaxEjectedPercent: cfg.Health.MaxEjectedPercent,
		SlowStart: cfg.Health.SlowStart.D(),
	})
	b.OnRoute, b.OnNew, b.OnGone = l.proxy.OnRoute, l.proxy.OnNew, l.proxy.OnGone
	return b
}

func (l *LB) onUpdate(snaps map[discovery.Query]*discovery.Snapshot) {
	l.buildMu.Lock()
	t := l.builder.Build(snaps)
	l.table.Store(t)
	l.buildMu.Unlock()
	var newest time.Time
	for _, s := range snaps {
		if s.Updated.After(newest) {
			newest = s.Updated
		}
	}
	if !newest.IsZero() {
		l.lag.Observe(time.Since(newest).Seconds())
	}
	for _, r := range t.Routes {
		l.log.Debug("routing table updated", "version", t.Version, "route", r.Name, "instances", len(r.Upstreams), "not_passing", len(r.Other))
	}
}

// Table is the live routing table.
func (l *LB) Table() *balancer.Table { return l.table.Load() }

// Registry is the Prometheus registry of the balancer's metrics.
func (l *LB) Registry() *prometheus.Registry { return l.reg }

// Addrs returns the bound addresses (after Start).
func (l *LB) Addrs() Addrs {
	var a Addrs
	if l.httpLn != nil {
		a.HTTP = l.httpLn.Addr().String()
	}
	if l.httpsLn != nil {
		a.HTTPS = l.httpsLn.Addr().String()
	}
	if l.adminLn != nil {
		a.Admin = l.adminLn.Addr().String()
	}
	return a
}

// Run is New, Start and Wait.
func Run(ctx context.Context, cfg *config.Config, opts ...Option) error {
	l, err := New(cfg, opts...)
	if err != nil {
		return err
	}
	if err := l.Start(ctx); err != nil {
		return err
	}
	return l.Wait()
}
