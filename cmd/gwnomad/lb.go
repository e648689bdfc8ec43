package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/gwnomad/gwnomad/internal/tomlfile"
	"github.com/gwnomad/gwnomad/lb"
	"github.com/gwnomad/gwnomad/lb/config"
)

func init() {
	register(&command{name: "lb", summary: "run the load balancer in front of the gateways", run: runLB})
}

const lbHelp = `Usage: gwnomad lb [--config lb.toml] [flags]

Runs the load balancer: it discovers the passing gateway instances in Consul
(blocking queries), balances requests over them with passive health checks
and retries, and drains gracefully on SIGTERM. On SIGHUP it reads the file
again and applies [[routes]], [health] and log.level without closing a
connection; a change to anything else, or an invalid file, is logged and
the running configuration stays (restart for those). SIGHUP also opens the
access log's file again (log rotation: rename it, then SIGHUP).

On SIGUSR2 it upgrades itself without refusing a connection: it starts the
program file it runs from again (replace the binary first to change
version; the new process reads the configuration file anew, so this is also
how to apply a change that needs a restart), hands it its listening sockets,
and once the new process serves (every route's instances known), stops
accepting, finishes its requests in flight and exits 0, leaving its Consul
registration to the new process. If the new process fails (a bad
configuration, say), it exits and this one serves on; the log says why.
Under systemd use Type=notify and NotifyAccess=all (the new process tells
systemd it is the main process now); systemd socket activation
(LISTEN_FDS, FileDescriptorName=http, https or admin) works too. Under
Nomad (NOMAD_ALLOC_ID set) SIGUSR2 is refused, as the task's process must
stay: run two allocations there and let Nomad roll them. Flags
override the file. Consul is reached as the spec reaches it: the usual
environment (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL,
CONSUL_CACERT) overrides lb.toml's [consul], and --consul overrides both.

A minimal lb.toml:

  [[routes]]
  hosts = ["gw.am.wso2.com"]    # Host header to match; "*" for a default route
  service = "apim-gateway"      # Consul service (default)
  port = "passthru_http"        # registered port name (meta port_<name>) or a number
  policy = "p2c"                # round_robin | least_conn | p2c

Admin endpoints (listen.admin, default 127.0.0.1:9901): /healthz, /routes
(the live table as JSON), /metrics (Prometheus).

Examples:
  gwnomad lb --config /etc/gwnomad/lb.toml
  gwnomad lb --config lb.toml --http :8080 --admin 127.0.0.1:9902
  gwnomad lb --route gw.am.wso2.com=apim-gateway --http :8080 --access-log -
  gwnomad lb --config lb.toml --tls-mode files --cert gw.crt --key gw.key --https :8443
  gwnomad lb --config lb.toml --check     # validate; print every key with its value, defaults included
  gwnomad lb --config lb.toml --pid-file /run/gwnomad-lb.pid   # then: kill -USR2 $(cat /run/gwnomad-lb.pid)
  GWNOMAD_LB_STORAGE_KEY=$(cat /etc/gwnomad/storage.key) \
    gwnomad lb --config lb.toml --tls-mode acme --acme-email sre@example.com

TLS: with tls.mode = "acme" the balancer obtains and renews certificates for
the route hosts (or tls.domains) itself, answering HTTP-01 on listen.http and
TLS-ALPN-01 on listen.https; every LB instance shares them through Consul KV
(tls.storage = "consul", values encrypted with the key in tls.storage_key_file
or GWNOMAD_LB_STORAGE_KEY: 32 bytes, base64; make one with
'head -c 32 /dev/urandom | base64'), and one instance orders at a time. With
files or acme, listen.http redirects everything else to https (308).

Flags:
`

func runLB(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lb", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, lbHelp)
		fs.PrintDefaults()
	}
	var (
		cfgPath   = fs.String("config", "", "lb.toml `path` (default: built-in defaults; routes then come from --route)")
		httpAddr  = fs.String("http", "", "plain HTTP listen `address` (overrides listen.http; \"off\" disables)")
		httpsAddr = fs.String("https", "", "HTTPS listen `address` (overrides listen.https)")
		adminAddr = fs.String("admin", "", "admin listen `address` (overrides listen.admin)")
		consul    = fs.String("consul", "", "Consul HTTP `address` (overrides consul.address and CONSUL_HTTP_ADDR)")
		tlsMode   = fs.String("tls-mode", "", "`mode`: off | files | acme (overrides tls.mode)")
		acmeCA    = fs.String("acme-ca", "", "ACME directory `URL` for --tls-mode acme (overrides tls.ca)")
		acmeEmail = fs.String("acme-email", "", "ACME account contact `address` (overrides tls.email)")
		certFile  = fs.String("cert", "", "certificate `file` for --tls-mode files")
		keyFile   = fs.String("key", "", "key `file` for --tls-mode files")
		accessLog = fs.String("access-log", "", "access log: `path`, \"-\" for stdout, \"off\"")
		logLevel  = fs.String("log-level", "", "`level`: debug | info | warn | error")
		noReg     = fs.Bool("no-register", false, "do not register the balancer itself in Consul")
		check     = fs.Bool("check", false, "validate the configuration, print it, and exit")
		pidFile   = fs.String("pid-file", "", "write the process id to `path` once serving (an upgrade's new process writes its own)")
		routes    routeFlags
	)
	fs.Var(&routes, "route", "add a route `host=service` (repeatable; port passthru_http, policy p2c)")
	if probed(stdout, fs) { // shell completion asks for the flags
		return exitOK
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitInvalid
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "gwnomad lb: unexpected arguments %q\n", fs.Args())
		return exitInvalid
	}
	// load reads the file and applies the flags: at start, and on SIGHUP.
	load := func() (*config.Config, error) {
		cfg := config.Default()
		if *cfgPath != "" {
			var err error
			if cfg, err = config.Load(*cfgPath); err != nil {
				return nil, err
			}
		}
		set := func(key string, dst *string, v string) {
			if v != "" {
				*dst = v
				cfg.SetByFlag(key)
			}
		}
		set("listen.http", &cfg.Listen.HTTP, *httpAddr)
		if cfg.Listen.HTTP == "off" {
			cfg.Listen.HTTP = ""
		}
		set("listen.https", &cfg.Listen.HTTPS, *httpsAddr)
		set("listen.admin", &cfg.Listen.Admin, *adminAddr)
		set("consul.address", &cfg.Consul.Address, *consul)
		set("tls.mode", &cfg.TLS.Mode, *tlsMode)
		set("tls.cert_file", &cfg.TLS.CertFile, *certFile)
		set("tls.key_file", &cfg.TLS.KeyFile, *keyFile)
		set("tls.ca", &cfg.TLS.CA, *acmeCA)
		set("tls.email", &cfg.TLS.Email, *acmeEmail)
		set("log.access_log", &cfg.Log.AccessLog, *accessLog)
		if cfg.Log.AccessLog == "off" {
			cfg.Log.AccessLog = ""
		}
		set("log.level", &cfg.Log.Level, *logLevel)
		if *noReg {
			cfg.Consul.Register = false
		}
		for _, r := range routes {
			cfg.SetByFlag(fmt.Sprintf("routes[%d]", len(cfg.Routes)))
			cfg.Routes = append(cfg.Routes, r)
		}
		return cfg, cfg.Validate()
	}
	cfg, err := load()
	if err != nil {
		if _, ok := errors.AsType[tomlfile.Errors](err); ok {
			printInvalid(stderr, err)
		} else {
			fmt.Fprintf(stderr, "gwnomad lb: %v\n", err)
		}
		return exitInvalid
	}
	if *check {
		text, err := cfg.Marshal()
		if err != nil {
			fmt.Fprintf(stderr, "gwnomad lb: %v\n", err)
			return exitFailed
		}
		fmt.Fprintf(stdout, "# configuration ok: %d route(s), http %q, https %q (tls %s), admin %q\n# every key as the balancer would use it, defaults included\n%s",
			len(cfg.Routes), cfg.Listen.HTTP, cfg.Listen.HTTPS, cfg.TLS.Mode, cfg.Listen.Admin, text)
		return exitOK
	}
	in, err := lb.Inherit()
	if err != nil {
		fmt.Fprintf(stderr, "gwnomad lb: %v\n", err)
		return exitFailed
	}
	defer in.Close() // the sockets no listener took
	level := new(slog.LevelVar)
	_ = level.UnmarshalText([]byte(cfg.Log.Level))
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	l, err := lb.New(cfg, lb.WithLogger(log), lb.WithLogLevel(level), lb.WithInherited(in))
	if err != nil {
		fmt.Fprintf(stderr, "gwnomad lb: %v\n", err)
		return exitInvalid
	}
	// SIGHUP and SIGUSR2 are caught from here on: one that comes while the
	// balancer starts waits for it.
	hup, usr2 := make(chan os.Signal, 1), make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(hup)
	defer signal.Stop(usr2)
	runCtx, stopRun := context.WithCancel(ctx) // ends with SIGTERM or a handover
	defer stopRun()
	if err := l.Start(runCtx); err != nil {
		fmt.Fprintf(stderr, "gwnomad lb: %v\n", err)
		return exitFailed
	}
	// The pid file first: a balancer handing over exits once it hears
	// ready, and the file must name this process by then.
	if *pidFile != "" {
		if err := writePidFile(*pidFile); err != nil {
			log.Error("writing the pid file", "err", err)
		}
		defer removePidFile(*pidFile)
	}
	if err := lb.Ready(in); err != nil {
		log.Warn("could not report ready", "err", err)
	}
	go func() {
		for {
			select {
			case <-runCtx.Done():
				return
			case <-usr2:
				if os.Getenv("NOMAD_ALLOC_ID") != "" {
					log.Error("SIGUSR2: no upgrade in place under Nomad (the task's process must stay); run two allocations and let Nomad roll them")
					continue
				}
				exe, err := os.Executable()
				if err != nil {
					log.Error("upgrade: cannot find this program's file; this process serves on", "err", err)
					continue
				}
				log.Info("SIGUSR2: upgrading: starting a new process and handing it the listening sockets", "exe", exe)
				pid, err := l.Upgrade(runCtx, exe, os.Args, lb.UpgradeTimeout)
				if err != nil {
					log.Error("upgrade failed; this process serves on", "err", err)
					continue
				}
				log.Info("upgrade: the new process serves; this one stops accepting and finishes its requests", "new_pid", pid)
				stopRun()
				return
			case <-hup:
				log.Info("SIGHUP: reopening the access log and reloading the configuration", "file", *cfgPath)
				if err := l.ReopenAccessLog(); err != nil {
					log.Error("the access log stays on its old file", "err", err)
				}
				cfg, err := load()
				if err == nil {
					err = l.Reload(ctx, cfg)
				}
				if err != nil {
					log.Error("reload refused; the running configuration stays", "err", err)
				}
			}
		}
	}()
	if err := l.Wait(); err != nil {
		fmt.Fprintf(stderr, "gwnomad lb: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// writePidFile writes this process's id to path (through a temporary file,
// so a reader never sees it half-written).
func writePidFile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// removePidFile removes path if it still names this process (after an
// upgrade it names the new one).
func removePidFile(path string) {
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
		_ = os.Remove(path)
	}
}

// routeFlags collects --route host=service.
type routeFlags []config.Route

func (r *routeFlags) String() string { return "" }

func (r *routeFlags) Set(v string) error {
	host, svc, ok := strings.Cut(v, "=")
	if !ok || host == "" || svc == "" {
		return fmt.Errorf("want host=service, got %q", v)
	}
	rt := config.Route{Hosts: strings.Split(host, ","), Service: svc}
	config.RouteDefaults(&rt)
	*r = append(*r, rt)
	return nil
}

// printInvalid prints every problem of the configuration, one a line.
func printInvalid(w io.Writer, err error) {
	fmt.Fprintf(w, "gwnomad lb: invalid configuration:\n  %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  "))
}
