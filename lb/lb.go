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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/valyala/fasthttp"

	"github.com/gwnomad/gwnomad/internal/contract"
	"github.com/gwnomad/gwnomad/lb/admin"
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
		c, err := ConsulClient(&cfg.Consul)
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

// ConsulClient makes a Consul client from the environment (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...) overridden by the [consul] table.
func ConsulClient(c *config.Consul) (*consulapi.Client, error) {
	cc := consulapi.DefaultConfig()
	if c.Address != "" {
		cc.Address = c.Address
	}
	if c.Scheme != "" {
		cc.Scheme = c.Scheme
	}
	if c.Token != "" {
		cc.Token = c.Token
	}
	if c.Datacenter != "" {
		cc.Datacenter = c.Datacenter
	}
	if c.CAFile != "" {
		cc.TLSConfig.CAFile = c.CAFile
	}
	cl, err := consulapi.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return cl, nil
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

// Start binds the listeners (an error if one cannot be bound) and runs the
// balancer until ctx ends; then it drains (see the package doc). Wait
// returns when it is done.
func (l *LB) Start(ctx context.Context) error {
	cfg := l.cfg
	var err error
	closeAll := func() {
		for _, ln := range []net.Listener{l.httpLn, l.httpsLn, l.adminLn} {
			if ln != nil {
				ln.Close()
			}
		}
	}
	took := 0
	listen := func(name, addr string) (net.Listener, error) {
		if ln := l.inherited.take(name, addr); ln != nil {
			took++
			return ln, nil
		}
		return net.Listen("tcp", addr)
	}
	if l.adminLn, err = listen("admin", cfg.Listen.Admin); err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	if cfg.Listen.HTTP != "" {
		if l.httpLn, err = listen("http", cfg.Listen.HTTP); err != nil {
			closeAll()
			return fmt.Errorf("http listener: %w", err)
		}
	}
	if l.tlsConfig != nil {
		if l.httpsLn, err = listen("https", cfg.Listen.HTTPS); err != nil {
			closeAll()
			return fmt.Errorf("https listener: %w", err)
		}
	}
	l.inherited.closeRest(l.log)
	sopt := proxy.ServerOptions{
		ReadTimeout: cfg.Proxy.ReadTimeout.D(), WriteTimeout: cfg.Proxy.WriteTimeout.D(), IdleTimeout: cfg.Proxy.IdleTimeout.D(),
		MaxHeaderBytes: cfg.Proxy.MaxHeaderBytes, MaxBodyBytes: cfg.Proxy.MaxBodyBytes, MaxConns: cfg.Proxy.MaxConns,
	}

	// Discovery lives until the servers are drained: an instance that goes
	// critical during the drain still stops getting requests.
	dctx, stopDiscovery := context.WithCancel(context.WithoutCancel(ctx))
	l.wg.Go(func() { _ = l.watcher.Run(dctx) })
	if l.accessLog != nil {
		l.wg.Go(func() { l.accessLog.Run(dctx) })
	}

	l.adminSrv = &http.Server{
		Handler:           &admin.Handler{Table: &l.table, Gatherer: l.reg, Draining: &l.draining},
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(l.log.Handler(), slog.LevelDebug),
	}
	l.wg.Go(func() { l.serveErr("admin", l.adminSrv.Serve(l.adminLn)) })
	if took > 0 {
		// Another process may be serving these sockets: answer from them
		// only with every route's instances known.
		l.log.Info("serving inherited sockets once every route's first Consul answer is in", "sockets", took)
		if missing := l.waitReady(ctx, l.builder.Queries(), handoverReadyTimeout); len(missing) > 0 {
			l.log.Warn("serving without a first Consul answer for some routes", "queries", missing)
		}
	}
	switch {
	case l.httpLn != nil && l.certs != nil:
		// With TLS, :80 answers ACME HTTP-01 challenges and redirects the
		// rest to https (308); it proxies nothing.
		l.redirectSrv = &http.Server{
			Handler: l.certs.HTTPHandler(nil), ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout: cfg.Proxy.IdleTimeout.D(), MaxHeaderBytes: cfg.Proxy.MaxHeaderBytes,
			ErrorLog: slog.NewLogLogger(l.log.Handler(), slog.LevelDebug),
		}
		l.wg.Go(func() { l.serveErr("http", l.redirectSrv.Serve(l.httpLn)) })
	case l.httpLn != nil && cfg.Proxy.Engine == "event-loop":
		l.loop = l.proxy.NewLoopServer(sopt)
		l.wg.Go(func() { l.serveErr("http", l.loop.Serve(l.httpLn)) })
	case l.httpLn != nil:
		l.fast = l.proxy.NewFastServer(sopt)
		l.wg.Go(func() { l.serveErr("http", l.fast.Serve(proxy.Listener{Listener: l.httpLn})) })
	}
	if l.httpsLn != nil {
		if l.loop == nil && cfg.Proxy.Engine == "event-loop" {
			// The loops serve the HTTPS listener's HTTP/1.1 connections
			// after their handshake, and no plain listener.
			l.loop = l.proxy.NewLoopServer(sopt)
			l.wg.Go(func() { l.serveErr("https", l.loop.Serve(nil)) })
		}
		l.tlsSrv = &proxy.TLSServer{
			Fast: l.proxy.NewFastServer(sopt), Handler: l.proxy, Config: l.tlsConfig,
			IdleTimeout: cfg.Proxy.IdleTimeout.D(), WriteTimeout: cfg.Proxy.WriteTimeout.D(), Logger: l.log, Loop: l.loop,
		}
		l.wg.Go(func() { l.serveErr("https", l.tlsSrv.Serve(l.httpsLn)) })
	}
	if l.certs != nil {
		// After the listeners: challenges are answered on them.
		if err := l.certs.Start(dctx); err != nil {
			stopDiscovery()
			closeAll()
			return err
		}
	}
	regCtx, stopRegister := context.WithCancel(ctx)
	regDone := make(chan struct{})
	if cfg.Consul.Register {
		go func() { defer close(regDone); l.registerLoop(regCtx) }()
	} else {
		close(regDone)
	}
	l.log.Info("load balancer started", "http", l.Addrs().HTTP, "https", l.Addrs().HTTPS, "admin", l.Addrs().Admin,
		"routes", len(cfg.Routes))

	go func() {
		<-ctx.Done()
		l.drain(stopRegister, regDone)
		stopDiscovery()
		l.wg.Wait()
		close(l.done)
	}()
	return nil
}

func (l *LB) serveErr(name string, err error) {
	if err == nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return
	}
	l.errMu.Lock()
	if l.runErr == nil {
		l.runErr = fmt.Errorf("%s listener: %w", name, err)
	}
	l.errMu.Unlock()
	l.log.Error("listener failed", "listener", name, "err", err)
}

// Wait blocks until the balancer stopped and drained; it returns the first
// serving error, if any.
func (l *LB) Wait() error {
	<-l.done
	l.errMu.Lock()
	defer l.errMu.Unlock()
	return l.runErr
}

// drain is the graceful shutdown. After a handover (Upgrade) the new
// process serves the same sockets and holds the same registration: this
// one stays registered and healthy, and only finishes its requests.
func (l *LB) drain(stopRegister context.CancelFunc, regDone <-chan struct{}) {
	cfg := l.cfg
	handedOver := l.handedOver.Load()
	if handedOver {
		l.log.Info("handed over: finishing the requests in flight", "grace_period", cfg.Proxy.GracePeriod)
	} else {
		l.draining.Store(true)
		l.log.Info("draining", "drain_delay", cfg.Proxy.DrainDelay, "grace_period", cfg.Proxy.GracePeriod)
	}
	stopRegister()
	<-regDone // the register loop deregisters on its way out (not after a handover)
	if d := cfg.Proxy.DrainDelay.D(); d > 0 && !handedOver {
		time.Sleep(d)
	}
	grace, cancel := context.WithTimeout(context.Background(), cfg.Proxy.GracePeriod.D())
	defer cancel()
	var wg sync.WaitGroup
	if l.fast != nil {
		wg.Go(func() {
			if err := l.fast.ShutdownWithContext(grace); err != nil {
				l.log.Warn("http: requests still in flight at the end of the grace period", "err", err)
			}
		})
	}
	if l.loop != nil {
		wg.Go(func() {
			if err := l.loop.Shutdown(grace); err != nil {
				l.log.Warn("http: requests still in flight at the end of the grace period", "err", err)
			}
		})
	}
	if l.redirectSrv != nil {
		wg.Go(func() { _ = l.redirectSrv.Shutdown(grace) })
	}
	if l.tlsSrv != nil {
		wg.Go(func() {
			if err := l.tlsSrv.Shutdown(grace); err != nil {
				l.log.Warn("https: requests still in flight at the end of the grace period", "err", err)
			}
		})
	}
	wg.Wait()
	if n := l.proxy.Upgraded(); n > 0 {
		l.log.Info("closing relayed (WebSocket) connections", "count", n)
	}
	l.proxy.Drain()
	if l.certs != nil {
		l.certs.Stop() // releases this instance's storage locks, stops renewal
	}
	actx, acancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = l.adminSrv.Shutdown(actx)
	acancel()
	l.log.Info("drained")
}

// registerLoop registers the balancer in Consul (retrying until it
// succeeds), re-registers it if the agent lost it, and deregisters it when
// ctx ends.
func (l *LB) registerLoop(ctx context.Context) {
	cfg := &l.cfg.Consul
	reg := l.registration(l.cfg.Routes)
	log := l.log.With("component", "register", "service_id", reg.ID)
	registered := false
	failures := 0
	for {
		wait := 30 * time.Second
		if ctx.Err() == nil {
			if registered {
				if s, _, err := l.consul.Agent().Service(reg.ID, (&consulapi.QueryOptions{}).WithContext(ctx)); err != nil || s == nil {
					registered = false
				}
			}
			if !registered {
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := l.consul.Agent().ServiceRegisterOpts(reg, consulapi.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(rctx))
				cancel()
				if err != nil {
					failures++
					if failures == 1 || failures%20 == 0 {
						log.Warn("registering in consul failed; retrying", "err", err)
					}
					wait = min(time.Duration(failures)*500*time.Millisecond, 10*time.Second)
				} else {
					registered, failures = true, 0
					log.Info("registered in consul", "service", cfg.ServiceName, "check", reg.Check.HTTP)
				}
			}
		}
		t := time.NewTimer(wait)
		select {
		case routes := <-l.reregister: // a reload changed the services routed
			t.Stop()
			reg, registered = l.registration(routes), false
			continue
		case <-ctx.Done():
			t.Stop()
			if l.handedOver.Load() {
				log.Info("leaving the registration in consul to the process handed over to")
				return
			}
			dctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err := l.consul.Agent().ServiceDeregisterOpts(reg.ID, (&consulapi.QueryOptions{}).WithContext(dctx))
			cancel()
			if err != nil {
				log.Warn("deregistering from consul failed", "err", err)
			} else {
				log.Info("deregistered from consul")
			}
			return
		case <-t.C:
		}
	}
}

// registration is the balancer's service in Consul; its meta "services"
// lists the services its routes send to (what `gwnomad status` matches).
func (l *LB) registration(routes []config.Route) *consulapi.AgentServiceRegistration {
	cfg := &l.cfg.Consul
	a := l.Addrs()
	front := a.HTTP
	if front == "" {
		front = a.HTTPS
	}
	host, portS, _ := net.SplitHostPort(front)
	port, _ := strconv.Atoi(portS)
	addr := cfg.ServiceAddr
	if addr == "" && host != "" && !net.ParseIP(host).IsUnspecified() {
		addr = host
	}
	id := cfg.ServiceID
	if id == "" {
		hn, _ := os.Hostname()
		id = fmt.Sprintf("%s-%s-%d", cfg.ServiceName, hn, port)
	}
	ahost, aport, _ := net.SplitHostPort(a.Admin)
	if ip := net.ParseIP(ahost); ahost == "" || (ip != nil && ip.IsUnspecified()) {
		ahost = "127.0.0.1"
	}
	meta := map[string]string{contract.MetaAdmin: a.Admin, contract.MetaServices: routedServices(routes)}
	if a.HTTPS != "" {
		_, p, _ := net.SplitHostPort(a.HTTPS)
		meta[contract.MetaPortPrefix+"https"] = p
	}
	if a.HTTP != "" {
		_, p, _ := net.SplitHostPort(a.HTTP)
		meta[contract.MetaPortPrefix+"http"] = p
	}
	return &consulapi.AgentServiceRegistration{
		ID: id, Name: cfg.ServiceName, Address: addr, Port: port, Tags: []string{contract.TagLB}, Meta: meta,
		Check: &consulapi.AgentServiceCheck{
			CheckID:                        id + ":healthz",
			Name:                           "gwnomad lb /healthz",
			HTTP:                           "http://" + net.JoinHostPort(ahost, aport) + "/healthz",
			Interval:                       cfg.CheckInterval.String(),
			Timeout:                        "2s",
			DeregisterCriticalServiceAfter: "30m",
		},
	}
}

// routedServices is the sorted, comma-separated list of the Consul services
// that routes (validated: defaults filled) send to.
func routedServices(routes []config.Route) string {
	var out []string
	for _, r := range routes {
		if !slices.Contains(out, r.Service) {
			out = append(out, r.Service)
		}
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

// collector exports discovery and table state at scrape time.
type collector struct{ l *LB }

var (
	descAge = prometheus.NewDesc("gwnomad_lb_discovery_snapshot_age_seconds",
		"How long the served instances of a service have been stale (0 while the Consul watch is live).", []string{"service"}, nil)
	descUp = prometheus.NewDesc("gwnomad_lb_discovery_up",
		"1 when the last Consul query for the service succeeded.", []string{"service"}, nil)
	descErrs = prometheus.NewDesc("gwnomad_lb_discovery_errors_total",
		"Failed Consul queries by service.", []string{"service"}, nil)
	descInst = prometheus.NewDesc("gwnomad_lb_route_instances",
		"Instances in the routing table by route and state (healthy, ejected, held).", []string{"route", "state"}, nil)
	descVersion = prometheus.NewDesc("gwnomad_lb_table_version", "Version of the live routing table.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAge, descUp, descErrs, descInst, descVersion} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for q, s := range c.l.watcher.Snapshots() {
		up := 1.0
		if !s.StaleSince.IsZero() {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, s.Age(now).Seconds(), q.String())
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, q.String())
		ch <- prometheus.MustNewConstMetric(descErrs, prometheus.CounterValue, float64(s.Errors), q.String())
	}
	t := c.l.table.Load()
	if t == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descVersion, prometheus.GaugeValue, float64(t.Version))
	nowN := now.UnixNano()
	for _, r := range t.Routes {
		var healthy, ejected, held int
		for i, u := range r.Upstreams {
			switch {
			case u.Ejected(nowN):
				ejected++
			case r.Members[i].Held:
				held++
			default:
				healthy++
			}
		}
		ch <- prometheus.MustNewConstMetric(descInst, prometheus.GaugeValue, float64(healthy), r.Name, "healthy")
		ch <- prometheus.MustNewConstMetric(descInst, prometheus.GaugeValue, float64(ejected), r.Name, "ejected")
		ch <- prometheus.MustNewConstMetric(descInst, prometheus.GaugeValue, float64(held), r.Name, "held")
	}
}
