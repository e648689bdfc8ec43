// Package certs gives the gwnomad load balancer its certificates: from an
// ACME CA (Let's Encrypt, or a private one) with certmagic, shared by every
// instance through Consul, or from files on disk.
//
// # ACME
//
//	mgr, err := certs.New(certs.Config{
//		Mode:    "acme",
//		Domains: []string{"gw.example.com"},
//		Email:   "sre@example.com",
//		Storage: certs.StorageConfig{KeyFile: "/secrets/lb-storage.key"},
//		HTTPAddr: ":80", HTTPSAddr: ":443",
//	}, consulClient)
//	tlsConf := mgr.TLSConfig()                       // for the :443 listener
//	httpHandler := mgr.HTTPHandler(nil)              // for :80
//	// bind both listeners, then:
//	err = mgr.Start(ctx)                              // obtain and keep renewed
//	defer mgr.Stop()
//
// Start loads each domain's certificate from storage or orders one, in the
// background, and certmagic renews them when a third of their lifetime is
// left (or when the CA's renewal information says so). A failed order or
// renewal is retried with backoff and never stops the certificate already
// loaded from being served. Handshakes for a name without a certificate
// fail until one is there.
//
// HTTP-01 challenges are answered by HTTPHandler on :80, TLS-ALPN-01 by
// TLSConfig's GetCertificate on :443 (it offers "acme-tls/1" beside "h2" and
// "http/1.1"; close such connections after the handshake). Every other
// request on :80 gets a 308 to the same host, path and query on https.
// Bind :80 and :443 before Start: certmagic starts its own challenge
// listener on an address that is free, which must not be the LB's.
//
// # Several instances
//
// With the default Consul storage (package consulstorage) every instance
// sees the same certificates, ACME account and challenge answers: one
// instance takes the Consul lock for a name and orders it, the others wait
// for the lock and then find the certificate in storage. A challenge
// request that reaches an instance which did not start the order is
// answered from the challenge data that the ordering instance stored in
// Consul. A lock whose holder died frees itself when its Consul session
// expires (storage_lock_ttl .. 2× that).
//
// # On demand
//
// With OnDemand, a handshake for a name that has no certificate yet orders
// one during the handshake, but only for names that OnDemandHosts allows:
// exact names, or "*.example.com" for any name under example.com ("*"
// allows nothing). That is for routes with wildcard hosts, where the names
// are not known in advance.
//
// # Files
//
// Mode "files" serves CertFile and KeyFile and reloads them when they
// change (checked every FileCheckInterval); a pair that does not load (a
// half-written renewal, say) is logged, counted and ignored until it does,
// and the previous certificate keeps being served.
//
// # HSTS
//
// HSTSHeader is the Strict-Transport-Security value to add to HTTPS
// responses ("" when off).
//
// # Metrics
//
// Manager is a prometheus.Collector: register it with the LB's registry.
package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/mholt/acmez/v3"

	"github.com/gwnomad/gwnomad/lb/certs/consulstorage"
)

// Config configures a Manager. Zero values are defaulted in one place,
// Config.withDefaults.
type Config struct {
	// Mode is "acme" or "files". Required.
	Mode string

	// Domains are the names whose certificates are obtained at Start and
	// kept renewed (mode acme). Default none; then OnDemand is required.
	Domains []string
	// OnDemand also obtains certificates during the first handshake for
	// names that OnDemandHosts allows. Default false.
	OnDemand bool
	// OnDemandHosts are the names allowed on demand: exact names or
	// "*.example.com" (any name under example.com); "*" allows nothing.
	// Default: Domains.
	OnDemandHosts []string
	// Email is the ACME account's contact. Default "" (no contact).
	Email string
	// CA is the ACME directory URL. Default Let's Encrypt production
	// (https://acme-v02.api.letsencrypt.org/directory).
	CA string
	// CARoot is a PEM file of CA certificates trusted, beside the system
	// roots, for the ACME server's HTTPS (a private ACME CA). Default "".
	CARoot string
	// Profile is the ACME certificate profile to ask for (draft ACME
	// profiles), e.g. "shortlived". Default "" (the CA's default).
	Profile string
	// HTTPAddr and HTTPSAddr are where the LB listens for HTTP and HTTPS,
	// where challenges are answered (an LB without an HTTP listener sets
	// DisableHTTPChallenge). Defaults ":80" and ":443".
	HTTPAddr, HTTPSAddr string
	// DisableHTTPChallenge and DisableTLSALPNChallenge turn off one
	// challenge type. Default false: both are offered.
	DisableHTTPChallenge, DisableTLSALPNChallenge bool
	// RedirectPort is the HTTPS port written into :80 redirects (443 is
	// left out of the URL). Default: HTTPSAddr's port.
	RedirectPort int
	// Storage is where certificates, keys and the ACME account are kept.
	Storage StorageConfig
	// RenewalWindowRatio: renew when this share of the lifetime is left.
	// Default 1/3 (certmagic's).
	RenewalWindowRatio float64
	// RenewCheckInterval is how often certificates are checked for
	// renewal. Default 10m (certmagic's).
	RenewCheckInterval time.Duration
	// DisableARI ignores the CA's renewal information (ACME ARI). Default
	// false.
	DisableARI bool

	// CertFile and KeyFile are the PEM pair of mode files.
	CertFile, KeyFile string
	// FileCheckInterval is how often mode files looks for changed files.
	// Default 5s.
	FileCheckInterval time.Duration

	// HSTS is the max-age of the Strict-Transport-Security header. Default
	// 0: no header.
	HSTS time.Duration
	// HSTSIncludeSubdomains adds includeSubDomains. Default false.
	HSTSIncludeSubdomains bool

	// Logger gets issuance, renewal and failure events (certmagic's own
	// chatter at debug level). Default slog.Default().
	Logger *slog.Logger

	// onEvent, when set (tests), sees every certmagic event first.
	onEvent func(event string, data map[string]any)
}

// StorageConfig says where ACME state is kept.
type StorageConfig struct {
	// Kind is "consul" (shared by every LB instance) or "file" (this
	// instance only). Default "consul".
	Kind string
	// Prefix is the Consul KV prefix. Default "gwnomad/lb/certmagic".
	Prefix string
	// KeyFile holds the AES-256 key that encrypts every value in Consul
	// (see consulstorage.ParseKeys). Default "": the environment variable
	// GWNOMAD_LB_STORAGE_KEY; without either, New fails unless Plaintext.
	KeyFile string
	// Plaintext stores values in Consul unencrypted. Default false.
	Plaintext bool
	// LockTTL is the Consul session TTL of a lock. Default 15s (min 10s).
	LockTTL time.Duration
	// Path is the directory of kind "file". Default
	// "/var/lib/gwnomad/lb/certmagic".
	Path string
}

func (c Config) withDefaults() (Config, error) {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = ":80"
	}
	if c.HTTPSAddr == "" {
		c.HTTPSAddr = ":443"
	}
	if c.RedirectPort == 0 {
		c.RedirectPort = 443
		if _, p, err := net.SplitHostPort(c.HTTPSAddr); err == nil {
			if n, err := strconv.Atoi(p); err == nil && n > 0 {
				c.RedirectPort = n
			}
		}
	}
	if c.CA == "" {
		c.CA = certmagic.LetsEncryptProductionCA
	}
	if c.RenewalWindowRatio == 0 {
		c.RenewalWindowRatio = certmagic.DefaultRenewalWindowRatio
	}
	if c.RenewCheckInterval == 0 {
		c.RenewCheckInterval = certmagic.DefaultRenewCheckInterval
	}
	if c.FileCheckInterval == 0 {
		c.FileCheckInterval = 5 * time.Second
	}
	if c.Storage.Kind == "" {
		c.Storage.Kind = "consul"
	}
	if c.Storage.Path == "" {
		c.Storage.Path = "/var/lib/gwnomad/lb/certmagic"
	}
	var domains []string
	for _, d := range c.Domains {
		d = strings.ToLower(strings.TrimSpace(d))
		if d == "" {
			continue
		}
		if strings.Contains(d, "*") {
			return c, fmt.Errorf("tls.domains: %q: wildcard certificates need the DNS challenge, which is not supported; use on_demand", d)
		}
		domains = append(domains, d)
	}
	c.Domains = domains
	if len(c.OnDemandHosts) == 0 {
		c.OnDemandHosts = c.Domains
	}
	switch c.Mode {
	case "acme":
		if len(c.Domains) == 0 && !c.OnDemand {
			return c, errors.New(`tls: mode "acme" needs domains (or on_demand)`)
		}
		if c.Storage.Kind != "consul" && c.Storage.Kind != "file" {
			return c, fmt.Errorf("tls.storage %q: want consul or file", c.Storage.Kind)
		}
		if c.RenewalWindowRatio <= 0 || c.RenewalWindowRatio >= 1 {
			return c, fmt.Errorf("renewal window ratio %v: want between 0 and 1", c.RenewalWindowRatio)
		}
	case "files":
		if c.CertFile == "" || c.KeyFile == "" {
			return c, errors.New(`tls: mode "files" needs cert_file and key_file`)
		}
	default:
		return c, fmt.Errorf("tls.mode %q: want acme or files", c.Mode)
	}
	if c.HSTS < 0 {
		return c, errors.New("tls.hsts: negative")
	}
	return c, nil
}

// Manager serves certificates to the LB's TLS listener.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	// mode acme
	cache    *certmagic.Cache
	magic    *certmagic.Config // Domains: managed, renewed in the background
	onDemand *certmagic.Config // nil unless OnDemand
	issuer   *certmagic.ACMEIssuer
	storage  certmagic.Storage
	domains  map[string]bool

	// mode files
	files *fileCert

	mu      sync.Mutex
	started bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// New checks cfg and builds the Manager; Start begins obtaining (acme) or
// watching (files). consul is needed for storage kind "consul" only.
func New(cfg Config, consul *consulapi.Client) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Logger.With("component", "certs"), metrics: newMetrics()}
	if cfg.Mode == "files" {
		fc, err := loadFileCert(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, err
		}
		m.files = fc
		return m, nil
	}
	if err := m.setupACME(consul); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Manager) setupACME(consul *consulapi.Client) error {
	cfg := m.cfg
	switch cfg.Storage.Kind {
	case "consul":
		if consul == nil {
			return errors.New("tls.storage \"consul\": no Consul client")
		}
		st, err := consulstorage.New(consul, consulstorage.Options{
			Prefix: cfg.Storage.Prefix, KeyFile: cfg.Storage.KeyFile, Plaintext: cfg.Storage.Plaintext,
			LockTTL: cfg.Storage.LockTTL, Logger: m.log,
		})
		if err != nil {
			return fmt.Errorf("tls storage: %w", err)
		}
		if cfg.Storage.Plaintext {
			m.log.Warn("certificate storage in Consul is NOT encrypted (storage_plaintext = true): private keys are readable by anyone with KV read access", "prefix", cfg.Storage.Prefix)
		}
		m.storage = st
	case "file":
		if err := os.MkdirAll(cfg.Storage.Path, 0o700); err != nil {
			return fmt.Errorf("tls storage directory: %w", err)
		}
		m.storage = &certmagic.FileStorage{Path: cfg.Storage.Path}
	}
	var roots *x509.CertPool
	if cfg.CARoot != "" {
		pemBytes, err := os.ReadFile(cfg.CARoot)
		if err != nil {
			return fmt.Errorf("tls.ca_root: %w", err)
		}
		roots, err = x509.SystemCertPool()
		if err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pemBytes) {
			return fmt.Errorf("tls.ca_root %s: no PEM certificate", cfg.CARoot)
		}
	}
	m.domains = map[string]bool{}
	for _, d := range cfg.Domains {
		m.domains[d] = true
	}
	zl := zapToSlog(m.log)
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(c certmagic.Certificate) (*certmagic.Config, error) {
			// Certificates of Domains are renewed by background
			// maintenance; on-demand ones during handshakes (certmagic
			// skips configs with OnDemand in its maintenance).
			for _, n := range c.Names {
				if m.domains[n] || m.onDemand == nil {
					return m.magic, nil
				}
			}
			return m.onDemand, nil
		},
		RenewCheckInterval: cfg.RenewCheckInterval,
		Logger:             zl,
	})
	base := certmagic.Config{
		RenewalWindowRatio: cfg.RenewalWindowRatio,
		Storage:            m.storage,
		DisableARI:         cfg.DisableARI,
		Logger:             zl,
		OnEvent:            m.onEvent,
	}
	m.magic = certmagic.New(m.cache, base)
	m.issuer = m.newIssuer(m.magic, roots)
	m.magic.Issuers = []certmagic.Issuer{m.issuer}
	if cfg.OnDemand {
		od := base
		od.OnDemand = &certmagic.OnDemandConfig{DecisionFunc: m.allowOnDemand}
		m.onDemand = certmagic.New(m.cache, od)
		m.onDemand.Issuers = []certmagic.Issuer{m.newIssuer(m.onDemand, roots)}
	}
	return nil
}

func (m *Manager) newIssuer(c *certmagic.Config, roots *x509.CertPool) *certmagic.ACMEIssuer {
	cfg := m.cfg
	tmpl := certmagic.ACMEIssuer{
		CA:                      cfg.CA,
		TestCA:                  cfg.CA, // never fall back to a staging CA
		Email:                   cfg.Email,
		Agreed:                  true,
		Profile:                 cfg.Profile,
		TrustedRoots:            roots,
		DisableHTTPChallenge:    cfg.DisableHTTPChallenge,
		DisableTLSALPNChallenge: cfg.DisableTLSALPNChallenge,
		Logger:                  c.Logger,
	}
	// certmagic starts a challenge listener of its own when the address is
	// free; pointing it at the LB's listeners makes it see them taken and
	// leave the answering to HTTPHandler and TLSConfig.
	if host, port, err := net.SplitHostPort(cfg.HTTPAddr); err == nil {
		tmpl.ListenHost = host
		tmpl.AltHTTPPort, _ = strconv.Atoi(port)
	}
	if _, port, err := net.SplitHostPort(cfg.HTTPSAddr); err == nil {
		tmpl.AltTLSALPNPort, _ = strconv.Atoi(port)
	}
	return certmagic.NewACMEIssuer(c, tmpl)
}

// allowOnDemand is the on-demand decision: only names a route lists.
func (m *Manager) allowOnDemand(_ context.Context, name string) error {
	if HostAllowed(m.cfg.OnDemandHosts, name) {
		return nil
	}
	m.metrics.onDemandDenied.Inc()
	return fmt.Errorf("%q is not a host of any route", name)
}

// HostAllowed reports whether name matches one of patterns: an exact name
// or "*.example.com" (any name ending in .example.com). "*" matches nothing:
// a default route does not allow certificates for any name.
func HostAllowed(patterns []string, name string) bool {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if name == "" {
		return false
	}
	for _, p := range patterns {
		p = strings.ToLower(p)
		switch {
		case p == "*":
		case strings.HasPrefix(p, "*."):
			if suffix := p[1:]; strings.HasSuffix(name, suffix) && len(name) > len(suffix) {
				return true
			}
		case p == name:
			return true
		}
	}
	return false
}

// onEvent turns certmagic's events into logs and metrics.
func (m *Manager) onEvent(_ context.Context, event string, data map[string]any) error {
	if m.cfg.onEvent != nil {
		m.cfg.onEvent(event, data)
	}
	name, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	kind := "obtain"
	if renewal {
		kind = "renew"
	}
	switch event {
	case "cert_obtaining":
		m.log.Info("certificate: ordering from the CA", "name", name, "kind", kind, "ca", m.cfg.CA)
	case "cert_obtained":
		m.metrics.issued.WithLabelValues(kind, "success").Inc()
		attrs := []any{"name", name, "kind", kind}
		if r, ok := data["remaining"].(time.Duration); ok {
			attrs = append(attrs, "previous_remaining", r.Round(time.Second).String())
		}
		m.log.Info("certificate: issued", attrs...)
	case "cert_failed":
		m.metrics.issued.WithLabelValues(kind, "failure").Inc()
		attrs := []any{"name", name, "kind", kind}
		if err, ok := data["error"].(error); ok {
			attrs = append(attrs, "err", err.Error())
		}
		if r, ok := data["remaining"].(time.Duration); ok {
			attrs = append(attrs, "remaining", r.Round(time.Second).String())
		}
		m.log.Error("certificate: issuance failed; still serving the current certificate if there is one, retrying with backoff", attrs...)
	case "cached_managed_cert":
		if sans, ok := data["sans"].([]string); ok {
			m.log.Info("certificate: loaded", "names", sans)
		}
	case "cert_ocsp_revoked":
		m.log.Error("certificate: revoked according to OCSP; replacing it", "data", fmt.Sprint(data["identifier"]))
	}
	return nil
}

// Start obtains (from storage or the CA) and then renews the Domains'
// certificates in the background (mode acme), or watches the files (mode
// files), until ctx ends or Stop. Bind the LB's :80 and :443 first.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		return errors.New("certificate manager already started")
	}
	m.started = true
	ctx, m.cancel = context.WithCancel(ctx)
	if m.files != nil {
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.files.watch(ctx, m.cfg.FileCheckInterval, m.log, m.metrics) }()
		return nil
	}
	if len(m.cfg.Domains) == 0 {
		return nil
	}
	m.log.Info("certificate management started", "domains", m.cfg.Domains, "on_demand", m.cfg.OnDemand, "ca", m.cfg.CA, "storage", fmt.Sprint(m.storage))
	if err := m.magic.ManageAsync(ctx, m.cfg.Domains); err != nil {
		return fmt.Errorf("managing certificates: %w", err)
	}
	return nil
}

// ManageSync obtains the Domains' certificates (or loads them from storage)
// before it returns, without retries: for a command that must fail when the
// CA cannot be reached. Background renewal runs as after Start.
func (m *Manager) ManageSync(ctx context.Context) error {
	if m.magic == nil {
		return errors.New(`ManageSync: only for mode "acme"`)
	}
	if err := m.magic.ManageSync(ctx, m.cfg.Domains); err != nil {
		return fmt.Errorf("obtaining certificates: %w", err)
	}
	return nil
}

// Renew renews name's certificate now, whether it is due or not (for
// operators and tests).
func (m *Manager) Renew(ctx context.Context, name string) error {
	if m.magic == nil {
		return errors.New(`Renew: only for mode "acme"`)
	}
	if err := m.magic.RenewCertSync(ctx, name, true); err != nil {
		return fmt.Errorf("renewing %s: %w", name, err)
	}
	return nil
}

// Stop ends background work and releases the storage locks this instance
// holds. Certificates stay in storage.
func (m *Manager) Stop() {
	m.mu.Lock()
	cancel := m.cancel
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	m.wg.Wait()
	if m.cache != nil {
		m.cache.Stop()
	}
	if cs, ok := m.storage.(*consulstorage.Storage); ok {
		ctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		if err := cs.Close(ctx); err != nil {
			m.log.Warn("releasing certificate locks", "err", err)
		}
	}
}

// Storage is the certmagic storage in use (nil in mode files).
func (m *Manager) Storage() certmagic.Storage { return m.storage }

// TLSConfig is the :443 configuration: certificates by SNI, the TLS-ALPN-01
// answers, ALPN "h2", "http/1.1" and "acme-tls/1" (close connections that
// negotiated acme-tls/1 right after the handshake).
func (m *Manager) TLSConfig() *tls.Config {
	return &tls.Config{
		GetCertificate: m.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1", acmez.ACMETLS1Protocol},
		MinVersion:     tls.VersionTLS12,
	}
}

// GetCertificate is a tls.Config.GetCertificate.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if m.files != nil {
		return m.files.get(), nil
	}
	c := m.magic
	if m.onDemand != nil && !m.domains[strings.ToLower(hello.ServerName)] {
		c = m.onDemand
	}
	cert, err := c.GetCertificate(hello)
	if err != nil {
		m.metrics.handshakeNoCert.Inc()
		return nil, err
	}
	return cert, nil
}

// HSTSHeader is the Strict-Transport-Security value for HTTPS responses, ""
// when HSTS is off.
func (m *Manager) HSTSHeader() string {
	if m.cfg.HSTS <= 0 {
		return ""
	}
	v := "max-age=" + strconv.FormatInt(int64(m.cfg.HSTS/time.Second), 10)
	if m.cfg.HSTSIncludeSubdomains {
		v += "; includeSubDomains"
	}
	return v
}
