// Command lbbench is `make bench`: it measures `gwnomad lb` side by side with
// HAProxy, Caddy and the gateways reached directly, and writes the tables to
// BENCHMARKS.md.
//
// One run starts, on loopback:
//
//   - a real Consul agent (bin/consul, dev mode, through internal/devstack);
//   - three gateway simulators (bin/gatewaysim), registered in Consul as
//     "apim-gateway" with an HTTP check and meta port_passthru_http;
//   - `bin/gwnomad lb` discovering them through Consul (every feature on:
//     discovery, passive health, retries, forwarded headers, access log to a
//     file, metrics), HAProxy and Caddy with static equivalents of that
//     configuration: same certificate, TLS 1.3, round robin, keep-alive to
//     the gateways.
//
// Then, for every repetition, it loads every target with wrk (64 keep-alive
// connections, 1 KiB answers; plain HTTP and HTTPS) and samples the proxy
// process's user+system CPU time from /proc/<pid>/stat before and after, then
// runs every target at half of gwnomad's median peak rate (wrk with a Lua
// delay() script) for latency. Medians of the repetitions go into the
// table.
//
// A run writes two files to -results (bench/results): <label>.md, the tables
// (the section it puts into BENCHMARKS.md), and <label>.tsv, one line per wrk
// run (the raw figures the medians come from). The configurations of the
// proxies are the templates in this file; they are not stored per run (-keep
// keeps the work directory that holds them).
//
// With -profile FILE it instead runs the balancer in this process (same
// configuration, lb.New) and writes a CPU profile taken under wrk.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	_ "embed"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/gatewaysim"
	"github.com/gwnomad/gwnomad/lb"
	"github.com/gwnomad/gwnomad/lb/config"
)

//go:embed report.lua
var reportLua string

//go:embed rate.lua
var rateLua string

const path = "/pizzashack/1.0.0/menu?size=1024"

type options struct {
	reps        int
	duration    time.Duration
	warmup      time.Duration
	conns       int
	threads     int
	targets     []string
	out         string // BENCHMARKS.md to update ("" : print only)
	resultsDir  string
	label       string
	profile     string
	profileMode string
	keep        bool
	noHalf      bool
	lbEnv       string
	lbBEnv      string
	lbBBin      string
	hapThreads  int
	engine      string
}

func main() {
	var o options
	var targets string
	flag.IntVar(&o.reps, "reps", 3, "repetitions (the table shows medians)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of one wrk run")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "warm-up run per target and mode before the first repetition")
	flag.IntVar(&o.conns, "c", 64, "wrk connections")
	flag.IntVar(&o.threads, "t", 2, "wrk threads")
	flag.StringVar(&targets, "targets", "gwnomad,haproxy,caddy,fasthttp-min,gnet-min,direct", "targets, comma-separated (fasthttp-min: bench/minproxy, the engine alone; gnet-min: bench/gnetmin, the same over plain HTTP on an event loop per core, an experiment; its TLS rows are a fasthttp-min process's)")
	flag.StringVar(&o.out, "out", "BENCHMARKS.md", "file whose generated section is replaced (\"\": none)")
	flag.StringVar(&o.resultsDir, "results", "bench/results", "directory for this run's tables (<label>.md) and raw figures (<label>.tsv)")
	flag.StringVar(&o.label, "label", "", "name of this run in the results directory (default: the time)")
	flag.StringVar(&o.profile, "profile", "", "write a CPU profile of the in-process balancer under wrk to this file, then stop")
	flag.StringVar(&o.profileMode, "profile-mode", "plain", "plain | tls: what the profile run loads")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (the proxies' configurations, logs)")
	flag.BoolVar(&o.noHalf, "no-half", false, "skip the half-load latency runs")
	flag.IntVar(&o.hapThreads, "haproxy-threads", 2, "HAProxy's nbthread (experiments)")
	flag.StringVar(&o.engine, "gwnomad-engine", "event-loop", "gwnomad's [proxy] engine: event-loop or goroutines (TLS handshakes are goroutines' either way)")
	flag.StringVar(&o.lbEnv, "gwnomad-env", "", "extra environment of the gwnomad process, comma-separated (experiments, e.g. GOMAXPROCS=1)")
	flag.StringVar(&o.lbBEnv, "gwnomad-b-env", "", "environment of target gwnomad-b, a second gwnomad side by side (A/B experiments), comma-separated")
	flag.StringVar(&o.lbBBin, "gwnomad-b-bin", "", "gwnomad binary of target gwnomad-b (A/B experiments: another build; default: the same as gwnomad's)")
	flag.Parse()
	o.targets = strings.Split(targets, ",")
	if o.label == "" {
		o.label = time.Now().UTC().Format("20060102-150405")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "lbbench:", err)
		os.Exit(1)
	}
}

// rig is everything one run starts.
type rig struct {
	dir      string
	bin      string
	stack    *devstack.Stack
	backends []*backend
	targets  []*target
	procs    []*exec.Cmd
	certFile string
	keyFile  string
	pemFile  string // cert+key for HAProxy
	lbCfg    string
	inproc   *lb.LB
}

type backend struct {
	cmd   *exec.Cmd
	addrs gatewaysim.Addrs
}

type target struct {
	name      string
	pid       int // the proxy process (0: in this process)
	tlsPid    int // the proxy process of the TLS runs, when not pid
	plain     string
	tls       string
	isDirect  bool
	accessLog string
}

func run(ctx context.Context, o options) error {
	if runtime.GOOS != "linux" {
		return errors.New("needs Linux (/proc)")
	}
	for _, tool := range []string{"wrk", "haproxy", "caddy"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (bench/run.sh installs it): %w", tool, err)
		}
	}
	// Proxies need a descriptor per connection (HAProxy refuses to start
	// if it cannot raise its own limit to 2×maxconn).
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	bin, err := devstack.FindBinDir()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "lbbench-")
	if err != nil {
		return err
	}
	r := &rig{dir: dir, bin: bin}
	defer func() {
		r.stop()
		if !o.keep {
			_ = os.RemoveAll(dir)
		} else {
			fmt.Println("work directory kept:", dir)
		}
	}()
	if err := r.setup(ctx, o); err != nil {
		return err
	}
	if o.profile != "" {
		return r.profile(ctx, o)
	}
	res, err := r.measure(ctx, o)
	if err != nil {
		return err
	}
	return report(o, r, res)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

func (r *rig) setup(ctx context.Context, o options) error {
	logf("work directory %s", r.dir)
	if err := r.writeCert(); err != nil {
		return err
	}
	st, err := devstack.Start(ctx, devstack.Config{Dir: filepath.Join(r.dir, "stack"), BinDir: r.bin, Logf: func(f string, a ...any) { logf(f, a...) }})
	if err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	r.stack = st
	for i := range 3 {
		b, err := r.startBackend(ctx, i)
		if err != nil {
			return err
		}
		r.backends = append(r.backends, b)
	}
	if err := r.register(ctx); err != nil {
		return err
	}
	for _, name := range o.targets {
		var t *target
		var err error
		switch name {
		case "gwnomad", "gwnomad-b":
			bin, envList := filepath.Join(r.bin, "gwnomad"), o.lbEnv
			if name == "gwnomad-b" {
				envList = o.lbBEnv
				if o.lbBBin != "" {
					bin = o.lbBBin
				}
			}
			var env []string
			if envList != "" {
				env = strings.Split(envList, ",")
			}
			t, err = r.startGwnomad(ctx, name, bin, o.profile != "" && name == "gwnomad", env, o.profileMode, o.engine)
		case "haproxy":
			t, err = r.startHAProxy(o.hapThreads)
		case "caddy":
			t, err = r.startCaddy()
		case "fasthttp-min":
			t, err = r.startMinProxy()
		case "gnet-min":
			t, err = r.startGnetMin()
		case "direct":
			b := r.backends[0]
			t = &target{name: "direct", pid: b.cmd.Process.Pid, plain: "http://" + b.addrs.PassthruHTTP, tls: "https://" + b.addrs.PassthruHTTPS, isDirect: true}
		default:
			return fmt.Errorf("unknown target %q", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := waitServing(ctx, t); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r.targets = append(r.targets, t)
		logf("%s serving: %s and %s (pid %d %d)", t.name, t.plain, t.tls, t.pid, t.tlsPid)
	}
	return nil
}

func (r *rig) stop() {
	for i := len(r.procs) - 1; i >= 0; i-- {
		c := r.procs[i]
		if c.Process != nil {
			_ = c.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = c.Process.Kill()
				<-done
			}
		}
	}
	if r.stack != nil {
		r.stack.Stop()
	}
}

func (r *rig) start(name string, env []string, args ...string) (*exec.Cmd, string, error) {
	logPath := filepath.Join(r.dir, filepath.Base(name)+"-"+strconv.Itoa(len(r.procs))+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, "", err
	}
	c := exec.Command(name, args...)
	c.Stdout, c.Stderr = f, f
	c.Env = append(os.Environ(), env...)
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		f.Close()
		return nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	f.Close()
	r.procs = append(r.procs, c)
	return c, logPath, nil
}

var listenRE = regexp.MustCompile(`liveness http://(\S+)/services/Version, readiness https://(\S+?)/api\S*, API traffic http://(\S+) and https://(\S+)`)

func (r *rig) startBackend(ctx context.Context, i int) (*backend, error) {
	home := filepath.Join(r.dir, fmt.Sprintf("gw%d", i+1))
	api := filepath.Join(home, gatewaysim.APIDirRelPath)
	if err := os.MkdirAll(api, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(home, "repository/conf"), 0o755); err != nil {
		return nil, err
	}
	toml := "[server]\nnode_ip = \"127.0.0.1\"\n[transport.http]\nproperties.port = 0\n[transport.https]\nproperties.port = 0\n" +
		"[transport.passthru_http]\nlistener.port = 0\n[transport.passthru_https]\nlistener.port = 0\n"
	if err := os.WriteFile(filepath.Join(home, gatewaysim.ConfigRelPath), []byte(toml), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(api, gatewaysim.SampleAPIFile), gatewaysim.SampleAPI, 0o644); err != nil {
		return nil, err
	}
	c, logPath, err := r.start(filepath.Join(r.bin, "gatewaysim"), nil, "-home", home, "-node", fmt.Sprintf("gw%d", i+1))
	if err != nil {
		return nil, err
	}
	b := &backend{cmd: c}
	err = poll(ctx, 30*time.Second, "gatewaysim listening", func() error {
		data, _ := os.ReadFile(logPath)
		m := listenRE.FindSubmatch(data)
		if m == nil {
			return fmt.Errorf("no listening line in %s yet", logPath)
		}
		b.addrs = gatewaysim.Addrs{HTTP: string(m[1]), HTTPS: string(m[2]), PassthruHTTP: string(m[3]), PassthruHTTPS: string(m[4])}
		return nil
	})
	return b, err
}

// register puts the gateways into Consul the way Nomad does: service
// apim-gateway on the passthrough port, meta port_passthru_http, and an HTTP
// check on the liveness endpoint.
func (r *rig) register(ctx context.Context) error {
	c := r.stack.ConsulAPI()
	for i, b := range r.backends {
		_, ps, _ := net.SplitHostPort(b.addrs.PassthruHTTP)
		port, _ := strconv.Atoi(ps)
		reg := &consulapi.AgentServiceRegistration{
			ID: fmt.Sprintf("apim-gateway-gw%d", i+1), Name: "apim-gateway", Address: "127.0.0.1", Port: port,
			Meta: map[string]string{"port_passthru_http": ps},
			Check: &consulapi.AgentServiceCheck{
				Name: "liveness", HTTP: "http://" + b.addrs.HTTP + gatewaysim.VersionPath, Interval: "2s", Timeout: "1s",
			},
		}
		if err := c.Agent().ServiceRegister(reg); err != nil {
			return fmt.Errorf("register gw%d: %w", i+1, err)
		}
	}
	return poll(ctx, 30*time.Second, "3 passing gateways in Consul", func() error {
		es, _, err := c.Health().Service("apim-gateway", "", true, nil)
		if err != nil {
			return err
		}
		if len(es) != 3 {
			return fmt.Errorf("%d passing", len(es))
		}
		return nil
	})
}

func (r *rig) writeCert() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gw.bench.local"},
		DNSNames: []string{"gw.bench.local", "localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	r.certFile, r.keyFile, r.pemFile = filepath.Join(r.dir, "cert.pem"), filepath.Join(r.dir, "key.pem"), filepath.Join(r.dir, "haproxy.pem")
	for f, b := range map[string][]byte{r.certFile: certPEM, r.keyFile: keyPEM, r.pemFile: append(slices.Clone(certPEM), keyPEM...)} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func freePorts(n int) ([]int, error) { return devstack.FreePorts(n) }

// startGwnomad starts two balancers with one configuration but for
// the listeners: with tls.mode files, gwnomad's HTTP listener only answers
// ACME challenges and redirects to HTTPS (308), so plain HTTP proxying is
// measured on a second process with tls.mode off. In-process (profiling)
// runs one balancer: the plain one, or the TLS one for -profile-mode tls.
func (r *rig) startGwnomad(ctx context.Context, name, bin string, inProcess bool, env []string, profileMode, engine string) (*target, error) {
	accessLog := filepath.Join(r.dir, name+"-access.log")
	t := &target{name: name, accessLog: accessLog}
	for _, mode := range []string{"plain", "tls"} {
		if inProcess && mode != profileMode {
			continue
		}
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		listen := fmt.Sprintf("http = \"127.0.0.1:%d\"\nhttps = \"\"\nadmin = \"127.0.0.1:%d\"", ports[0], ports[1])
		tlsCfg := "mode = \"off\""
		if mode == "tls" {
			listen = fmt.Sprintf("http = \"\"\nhttps = \"127.0.0.1:%d\"\nadmin = \"127.0.0.1:%d\"", ports[0], ports[1])
			tlsCfg = fmt.Sprintf("mode = \"files\"\ncert_file = %q\nkey_file = %q", r.certFile, r.keyFile)
		}
		cfg := fmt.Sprintf(`# gwnomad lb for the benchmark (%s): every feature of the LB on
# (discovery, passive health, retries, forwarded headers, access log, metrics).
[listen]
%s

[consul]
address = %q
register = true
service_id = "%s-lb-bench-%s"

[tls]
%s

[proxy]
engine = %q

[log]
level = "warn"
access_log = %q

[[routes]]
hosts = ["*"]
service = "apim-gateway"
port = "passthru_http"
policy = "round_robin"
`, mode, listen, r.stack.Consul.HTTPAddr, name, mode, tlsCfg, engine, accessLog+"."+mode)
		file := filepath.Join(r.dir, "lb-"+mode+".toml")
		if name != "gwnomad" {
			file = filepath.Join(r.dir, name+"-lb-"+mode+".toml")
		}
		if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		url := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
		if mode == "tls" {
			url = fmt.Sprintf("https://127.0.0.1:%d", ports[0])
		}
		pid := os.Getpid()
		if inProcess {
			c, err := config.Load(file)
			if err != nil {
				return nil, err
			}
			l, err := lb.New(c, lb.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
			if err != nil {
				return nil, err
			}
			if err := l.Start(ctx); err != nil {
				return nil, err
			}
			r.inproc = l
		} else {
			c, _, err := r.start(bin, env, "lb", "--config", file)
			if err != nil {
				return nil, err
			}
			pid = c.Process.Pid
		}
		if mode == "plain" {
			t.plain, t.pid = url, pid
		} else {
			t.tls, t.tlsPid = url, pid
			if t.pid == 0 {
				t.pid = pid
			}
		}
		r.lbCfg = file
	}
	if inProcess { // one mode only: the other URL is the same balancer
		if t.plain == "" {
			t.plain = t.tls
		} else {
			t.tls = t.plain
		}
	}
	return t, nil
}

func (r *rig) servers(sep string) string {
	var s []string
	for i, b := range r.backends {
		if sep == "haproxy" {
			s = append(s, fmt.Sprintf("    server gw%d %s check inter 2s", i+1, b.addrs.PassthruHTTP))
		} else {
			s = append(s, b.addrs.PassthruHTTP)
		}
	}
	if sep == "haproxy" {
		return strings.Join(s, "\n")
	}
	return strings.Join(s, " ")
}

func (r *rig) startHAProxy(threads int) (*target, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`global
    maxconn 8000
    nbthread %d
    ssl-default-bind-options ssl-min-ver TLSv1.3

defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 2s
    timeout client 30s
    timeout server 60s
    timeout http-keep-alive 120s
    retries 2
    option redispatch

frontend fe_http
    bind 127.0.0.1:%d
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %%[req.hdr(host)]
    default_backend gateways

frontend fe_https
    bind 127.0.0.1:%d ssl crt %s ssl-min-ver TLSv1.3 alpn http/1.1
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %%[req.hdr(host)]
    default_backend gateways

backend gateways
    balance roundrobin
    http-reuse always
%s
`, threads, ports[0], ports[1], r.pemFile, r.servers("haproxy"))
	f := filepath.Join(r.dir, "haproxy.cfg")
	if err := os.WriteFile(f, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	c, _, err := r.start("haproxy", nil, "-db", "-f", f)
	if err != nil {
		return nil, err
	}
	return &target{name: "haproxy", pid: c.Process.Pid, plain: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), tls: fmt.Sprintf("https://127.0.0.1:%d", ports[1])}, nil
}

// startMinProxy runs bench/minproxy, the engine-only reference: fasthttp
// server and HostClients, round robin, nothing else.
func (r *rig) startMinProxy() (*target, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	c, _, err := r.start(filepath.Join(r.bin, "minproxy"), nil,
		"-plain", fmt.Sprintf("127.0.0.1:%d", ports[0]), "-tls", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"-cert", r.certFile, "-key", r.keyFile, "-backends", r.backendList())
	if err != nil {
		return nil, err
	}
	return &target{name: "fasthttp-min", pid: c.Process.Pid, plain: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), tls: fmt.Sprintf("https://127.0.0.1:%d", ports[1])}, nil
}

// startGnetMin runs bench/gnetmin, the same minimal proxy on an event loop
// per core (an experiment), for the plain runs; its TLS runs load a
// bench/minproxy process of their own (gnetmin speaks plain HTTP only).
func (r *rig) startGnetMin() (*target, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	plain, _, err := r.start(filepath.Join(r.bin, "gnetmin"), nil,
		"-plain", fmt.Sprintf("127.0.0.1:%d", ports[0]), "-backends", r.backendList())
	if err != nil {
		return nil, err
	}
	tlsProc, _, err := r.start(filepath.Join(r.bin, "minproxy"), nil,
		"-plain", fmt.Sprintf("127.0.0.1:%d", ports[1]), "-tls", fmt.Sprintf("127.0.0.1:%d", ports[2]),
		"-cert", r.certFile, "-key", r.keyFile, "-backends", r.backendList())
	if err != nil {
		return nil, err
	}
	return &target{name: "gnet-min", pid: plain.Process.Pid, tlsPid: tlsProc.Process.Pid,
		plain: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), tls: fmt.Sprintf("https://127.0.0.1:%d", ports[2])}, nil
}

// backendList is the gateways' plain passthrough addresses, comma-separated.
func (r *rig) backendList() string {
	var addrs []string
	for _, b := range r.backends {
		addrs = append(addrs, b.addrs.PassthruHTTP)
	}
	return strings.Join(addrs, ",")
}

func (r *rig) startCaddy() (*target, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	proxy := fmt.Sprintf(`	reverse_proxy %s {
		lb_policy round_robin
		lb_try_duration 2s
		fail_duration 2s
		header_up X-Forwarded-Host {host}
	}`, r.servers("caddy"))
	cfg := fmt.Sprintf(`{
	admin off
	auto_https off
	servers {
		protocols h1 h2
	}
}

http://127.0.0.1:%d {
	bind 127.0.0.1
%s
}

https://127.0.0.1:%d {
	bind 127.0.0.1
	tls %s %s {
		protocols tls1.3
	}
%s
}
`, ports[0], proxy, ports[1], r.certFile, r.keyFile, proxy)
	f := filepath.Join(r.dir, "Caddyfile")
	if err := os.WriteFile(f, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	home := filepath.Join(r.dir, "caddy-home")
	env := []string{"HOME=" + home, "XDG_DATA_HOME=" + home + "/data", "XDG_CONFIG_HOME=" + home + "/config"}
	c, _, err := r.start("caddy", env, "run", "--config", f, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	return &target{name: "caddy", pid: c.Process.Pid, plain: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), tls: fmt.Sprintf("https://127.0.0.1:%d", ports[1])}, nil
}

// waitServing waits until both URLs answer 200 with a 1 KiB body over TLS
// 1.3, and (for the proxies) until all three gateways answered.
func waitServing(ctx context.Context, t *target) error {
	cl := &http.Client{Timeout: 2 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // self-signed benchmark certificate
	}}
	return poll(ctx, 60*time.Second, t.name+" serving", func() error {
		nodes := map[string]bool{}
		for _, u := range []string{t.plain, t.tls} {
			for range 6 {
				resp, err := cl.Get(u + path)
				if err != nil {
					return err
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || len(body) != 1024 {
					return fmt.Errorf("%s: %d, %d bytes", u, resp.StatusCode, len(body))
				}
				if resp.TLS != nil && resp.TLS.Version != tls.VersionTLS13 {
					return fmt.Errorf("%s: TLS version %x", u, resp.TLS.Version)
				}
				nodes[resp.Header.Get(gatewaysim.NodeHeader)] = true
			}
		}
		if !t.isDirect && len(nodes) != 3 {
			return fmt.Errorf("answers from %d gateways", len(nodes))
		}
		return nil
	})
}

func poll(ctx context.Context, timeout time.Duration, what string, f func() error) error {
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: timed out: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// cpuTicks is utime+stime of a process (all its threads), and stime alone
// (the kernel's share), in clock ticks.
func cpuTicks(pid int) (total, sys int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return u + st, st, nil
}

// machineTicks is the whole machine's CPU time (all cores) and the idle part
// of it (idle+iowait), in clock ticks, from the first line of /proc/stat; 0, 0
// when unreadable.
func machineTicks() (total, idle int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0
	}
	// user nice system idle iowait irq softirq steal (guest time is in user).
	for i := 1; i < len(f) && i <= 8; i++ {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		total += v
		if i == 4 || i == 5 {
			idle += v
		}
	}
	return total, idle
}

// ioCalls is the number of read and write system calls of a process
// (syscr+syscw of /proc/<pid>/io; 0 when unreadable).
func ioCalls(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0
	}
	var n int64
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok && (k == "syscr" || k == "syscw") {
			x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			n += x
		}
	}
	return n
}

// clkTck is USER_HZ; 100 on every Linux that Go supports here.
const clkTck = 100

// sample is one wrk run.
type sample struct {
	Target, Mode, Load string
	Requests           int64
	Seconds            float64
	Errors             int64
	P50, P99           float64 // µs
	ProxyCPU           float64 // seconds
	ProxySys           float64 // seconds of ProxyCPU spent in the kernel
	BackendCPU         float64 // seconds, all three gateways
	Rate               float64 // asked rate (half load), req/s
	IOCalls            int64   // read+write system calls of the proxy
	LoadCPU            float64 // seconds, wrk (user+sys)
	MachineCPU         float64 // CPU-seconds of the whole machine over the run (all cores)
	MachineIdle        float64 // of which idle (idle+iowait)
}

// perReq is seconds per request, in µs.
func (s sample) perReq(secs float64) float64 {
	if s.Requests == 0 {
		return math.NaN()
	}
	return secs / float64(s.Requests) * 1e6
}

func (s sample) LoadUS() float64 { return s.perReq(s.LoadCPU) }
func (s sample) IdleUS() float64 { return s.perReq(s.MachineIdle) }

// OtherUS is the busy CPU that is neither the proxy's, the gateways' nor
// wrk's (other processes, interrupts), per request.
func (s sample) OtherUS() float64 {
	return s.perReq(s.MachineCPU - s.MachineIdle - s.ProxyCPU - s.BackendCPU - s.LoadCPU)
}

func (s sample) IOPerReq() float64 { return float64(s.IOCalls) / float64(max(s.Requests, 1)) }

func (s sample) RPS() float64        { return float64(s.Requests) / s.Seconds }
func (s sample) ProxyUS() float64    { return s.perReq(s.ProxyCPU) }
func (s sample) ProxySysUS() float64 { return s.perReq(s.ProxySys) }
func (s sample) BackendUS() float64  { return s.perReq(s.BackendCPU) }

var wrkRE = regexp.MustCompile(`WRKRESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)`)

// wrk runs one load and measures the proxy's CPU around it.
func (r *rig) wrk(ctx context.Context, o options, t *target, mode string, d time.Duration, rate float64) (sample, error) {
	url, pid := t.plain, t.pid
	if mode == "tls" {
		url = t.tls
		if t.tlsPid != 0 {
			pid = t.tlsPid
		}
	}
	script := filepath.Join(r.dir, "report.lua")
	var env []string
	if rate > 0 {
		script = filepath.Join(r.dir, "rate.lua")
		// Each connection waits delay ms between answers; the answer's own
		// latency (well under a millisecond at half load) comes on top.
		env = append(env, fmt.Sprintf("WRK_DELAY_MS=%.4f", float64(o.conns)*1000/rate))
	}
	args := []string{"-t", strconv.Itoa(o.threads), "-c", strconv.Itoa(o.conns), "-d", fmt.Sprintf("%ds", int(d.Seconds())), "--latency", "-s", script, url + path}
	pids := []int{pid}
	for _, b := range r.backends {
		pids = append(pids, b.cmd.Process.Pid)
	}
	before := make([]int64, len(pids))
	var sys0 int64
	for i, p := range pids {
		v, sys, err := cpuTicks(p)
		if err != nil {
			return sample{}, err
		}
		before[i] = v
		if i == 0 {
			sys0 = sys
		}
	}
	io0 := ioCalls(pid)
	mTotal0, mIdle0 := machineTicks()
	cmd := exec.CommandContext(ctx, "wrk", args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	mTotal1, mIdle1 := machineTicks()
	s := sample{Target: t.name, Mode: mode, Load: "peak", Rate: rate, IOCalls: ioCalls(pid) - io0,
		MachineCPU:  float64(mTotal1-mTotal0) / clkTck,
		MachineIdle: float64(mIdle1-mIdle0) / clkTck,
		LoadCPU:     (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds(),
	}
	if rate > 0 {
		s.Load = "half"
	}
	for i, p := range pids {
		v, sys, err := cpuTicks(p)
		if err != nil {
			return sample{}, err
		}
		secs := float64(v-before[i]) / clkTck
		if i == 0 {
			if !t.isDirect {
				s.ProxyCPU = secs
				s.ProxySys = float64(sys-sys0) / clkTck
			}
		} else {
			s.BackendCPU += secs
		}
	}
	m := wrkRE.FindSubmatch(out)
	if m == nil {
		return sample{}, fmt.Errorf("wrk output without result line:\n%s", out)
	}
	n := func(i int) int64 { v, _ := strconv.ParseInt(string(m[i]), 10, 64); return v }
	fl := func(i int) float64 { v, _ := strconv.ParseFloat(string(m[i]), 64); return v }
	s.Requests, s.Seconds = n(1), float64(n(2))/1e6
	s.Errors = n(3) + n(4) + n(5) + n(6) + n(7)
	s.P50, s.P99 = fl(8), fl(9)
	return s, nil
}

type results struct {
	samples []sample
	start   time.Time
	end     time.Time
	halfAt  map[string]float64 // mode -> asked rate
}

func (r *rig) measure(ctx context.Context, o options) (*results, error) {
	res := &results{start: time.Now(), halfAt: map[string]float64{}}
	if err := os.WriteFile(filepath.Join(r.dir, "report.lua"), []byte(reportLua), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(r.dir, "rate.lua"), []byte(rateLua+reportLua), 0o644); err != nil {
		return nil, err
	}
	modes := []string{"plain", "tls"}
	if o.warmup > 0 {
		for _, t := range r.targets {
			for _, m := range modes {
				if _, err := r.wrk(ctx, o, t, m, o.warmup, 0); err != nil {
					return nil, err
				}
			}
		}
	}
	for rep := range o.reps {
		for _, t := range rotate(r.targets, rep) {
			for _, m := range modes {
				s, err := r.wrk(ctx, o, t, m, o.duration, 0)
				if err != nil {
					return nil, err
				}
				logf("rep %d %-8s %-5s peak: %8.0f req/s  p50 %6.0fµs p99 %6.0fµs  proxy %6.1f µs/req  backends %6.1f µs/req  read+write calls/req %.2f  errors %d",
					rep+1, t.name, m, s.RPS(), s.P50, s.P99, s.ProxyUS(), s.BackendUS(), s.IOPerReq(), s.Errors)
				res.samples = append(res.samples, s)
			}
		}
	}
	if !o.noHalf {
		for _, m := range modes {
			peak := median(pick(res.samples, "gwnomad", m, "peak", sample.RPS))
			if math.IsNaN(peak) {
				peak = median(pick(res.samples, "haproxy", m, "peak", sample.RPS))
			}
			res.halfAt[m] = peak / 2
		}
		for rep := range o.reps {
			for _, t := range rotate(r.targets, rep) {
				for _, m := range modes {
					s, err := r.wrk(ctx, o, t, m, o.duration, res.halfAt[m])
					if err != nil {
						return nil, err
					}
					logf("rep %d %-8s %-5s half (%0.f req/s asked): %8.0f req/s  p50 %6.0fµs p99 %6.0fµs  proxy %6.1f µs/req  errors %d",
						rep+1, t.name, m, s.Rate, s.RPS(), s.P50, s.P99, s.ProxyUS(), s.Errors)
					res.samples = append(res.samples, s)
				}
			}
		}
	}
	res.end = time.Now()
	if t := r.find("gwnomad"); t != nil && t.accessLog != "" {
		// Prove the access log was on: it must hold a line per request.
		for _, m := range modes {
			if fi, err := os.Stat(t.accessLog + "." + m); err != nil || fi.Size() == 0 {
				return nil, fmt.Errorf("gwnomad access log %s.%s empty or missing: %v", t.accessLog, m, err)
			}
		}
	}
	return res, nil
}

func (r *rig) find(name string) *target {
	for _, t := range r.targets {
		if t.name == name {
			return t
		}
	}
	return nil
}

// rotate changes the order of the targets from one repetition to the next,
// so that no target always runs right after the same one.
func rotate(ts []*target, k int) []*target {
	if len(ts) == 0 {
		return ts
	}
	k %= len(ts)
	return append(slices.Clone(ts[k:]), ts[:k]...)
}

func pick(ss []sample, target, mode, load string, f func(sample) float64) []float64 {
	var v []float64
	for _, s := range ss {
		if s.Target == target && s.Mode == mode && s.Load == load {
			v = append(v, f(s))
		}
	}
	return v
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// profile runs the in-process balancer under wrk with a CPU profile.
func (r *rig) profile(ctx context.Context, o options) error {
	t := r.find("gwnomad")
	if t == nil || r.inproc == nil {
		return errors.New("-profile needs the gwnomad target")
	}
	if err := os.WriteFile(filepath.Join(r.dir, "report.lua"), []byte(reportLua), 0o644); err != nil {
		return err
	}
	if _, err := r.wrk(ctx, o, t, o.profileMode, o.warmup, 0); err != nil {
		return err
	}
	f, err := os.Create(o.profile)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	s, err := r.wrk(ctx, o, t, o.profileMode, o.duration, 0)
	pprof.StopCPUProfile()
	if err != nil {
		return err
	}
	// This process is the balancer plus this program's own (idle) work.
	logf("profile %s: %.0f req/s, %.1f µs CPU/req (this process), p99 %.0fµs, errors %d; written to %s",
		o.profileMode, s.RPS(), s.ProxyUS(), s.P99, s.Errors, o.profile)
	return nil
}

// ---- report ----

func report(o options, r *rig, res *results) error {
	md := render(o, r, res)
	if err := os.MkdirAll(o.resultsDir, 0o755); err != nil {
		return err
	}
	raw := filepath.Join(o.resultsDir, o.label+".md")
	if err := os.WriteFile(raw, []byte(md), 0o644); err != nil {
		return err
	}
	var tsv strings.Builder
	tsv.WriteString("target\tmode\tload\trate\trequests\tseconds\terrors\tp50_us\tp99_us\tproxy_cpu_s\tbackend_cpu_s\tproxy_sys_s\tload_cpu_s\tmachine_cpu_s\tmachine_idle_s\n")
	for _, s := range res.samples {
		fmt.Fprintf(&tsv, "%s\t%s\t%s\t%.0f\t%d\t%.3f\t%d\t%.0f\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\n", s.Target, s.Mode, s.Load, s.Rate, s.Requests, s.Seconds, s.Errors, s.P50, s.P99, s.ProxyCPU, s.BackendCPU, s.ProxySys, s.LoadCPU, s.MachineCPU, s.MachineIdle)
	}
	if err := os.WriteFile(filepath.Join(o.resultsDir, o.label+".tsv"), []byte(tsv.String()), 0o644); err != nil {
		return err
	}
	// The proxies' configurations are not stored: they come from the
	// templates in this file (startGwnomad, startHAProxy, startCaddy) and
	// the embedded Lua scripts, and differ from run to run only by ports
	// and the work directory; -keep keeps the work directory with them.
	fmt.Println(md)
	logf("results: %s", raw)
	if o.out == "" {
		return nil
	}
	return splice(o.out, md)
}

const (
	beginMark = "<!-- bench:begin (generated by make bench; do not edit by hand) -->"
	endMark   = "<!-- bench:end -->"
)

// splice replaces the generated section of file (or appends it).
func splice(file, md string) error {
	old, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s := string(old)
	section := beginMark + "\n" + md + endMark
	i, j := strings.Index(s, beginMark), strings.Index(s, endMark)
	if i >= 0 && j > i {
		s = s[:i] + section + s[j+len(endMark):]
	} else {
		if s == "" {
			s = "# Benchmarks\n\n"
		}
		s += "\n" + section + "\n"
	}
	return os.WriteFile(file, []byte(s), 0o644)
}

func render(o options, r *rig, res *results) string {
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	w("### Run %s\n\n", o.label)
	w("%s, %d repetitions of %s per cell (medians shown), wrk %d threads / %d connections, 1 KiB answers, keep-alive; took %s.\n\n",
		res.start.UTC().Format("2006-01-02 15:04 UTC"), o.reps, o.duration, o.threads, o.conns, res.end.Sub(res.start).Round(time.Second))
	w("Machine: %s\n\n", machine())
	for _, load := range []string{"peak", "half"} {
		if load == "half" && len(res.halfAt) == 0 {
			continue
		}
		if load == "peak" {
			w("#### Peak load (64 connections, as fast as possible)\n\n")
		} else {
			w("#### Half of gwnomad's peak rate (latency): plain %.0f req/s, TLS %.0f req/s asked\n\n", res.halfAt["plain"], res.halfAt["tls"])
		}
		w("| target | mode | req/s | p50 | p99 | proxy CPU/req | of which kernel | gateways CPU/req | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, m := range []string{"plain", "tls"} {
			for _, t := range r.targets {
				get := func(f func(sample) float64) float64 { return median(pick(res.samples, t.name, m, load, f)) }
				errs := get(func(s sample) float64 { return float64(s.Errors) })
				cpu, sys := "n/a (no proxy)", "n/a"
				if !t.isDirect {
					cpu = fmt.Sprintf("%.1f µs", get(sample.ProxyUS))
					sys = fmt.Sprintf("%.1f µs", get(sample.ProxySysUS))
				}
				w("| %s | %s | %.0f | %s | %s | %s | %s | %.1f µs | %.0f |\n", t.name, m, get(sample.RPS), us(get(func(s sample) float64 { return s.P50 })),
					us(get(func(s sample) float64 { return s.P99 })), cpu, sys, get(sample.BackendUS), errs)
			}
		}
		w("\n")
	}
	// Where the machine's CPU went at peak: requests/s is the machine's
	// CPU divided by the sum of these.
	w("#### Where the machine's CPU went per request at peak load (medians)\n\n")
	w("At peak, requests/s = the machine's CPU-seconds per second / the sum of this row. ")
	w("\"other\" is busy time of no measured process (interrupts, other processes), idle is CPU nobody used; " +
		"each cell is good to about ±1 µs (10 ms clock ticks, and wrk's CPU includes its own start-up, so \"other\" can come out below 0).\n\n")
	w("| target | mode | proxy | gateways | wrk | other | idle | sum |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, m := range []string{"plain", "tls"} {
		for _, t := range r.targets {
			get := func(f func(sample) float64) float64 { return median(pick(res.samples, t.name, m, "peak", f)) }
			proxy := 0.0
			if !t.isDirect {
				proxy = get(sample.ProxyUS)
			}
			sum := get(func(s sample) float64 { return s.perReq(s.MachineCPU) })
			w("| %s | %s | %.1f µs | %.1f µs | %.1f µs | %.1f µs | %.1f µs | %.1f µs |\n", t.name, m, proxy, get(sample.BackendUS), get(sample.LoadUS), get(sample.OtherUS), get(sample.IdleUS), sum)
		}
	}
	w("\n")
	// Ratios.
	g := func(target, mode, load string, f func(sample) float64) float64 {
		return median(pick(res.samples, target, mode, load, f))
	}
	w("#### Ratios (gwnomad / other, medians)\n\n| mode | vs | CPU/req | req/s | p99 at half load |\n|---|---|---:|---:|---:|\n")
	p99 := func(s sample) float64 { return s.P99 }
	for _, m := range []string{"plain", "tls"} {
		for _, other := range []string{"haproxy", "caddy", "fasthttp-min", "gnet-min", "direct"} {
			if r.find(other) == nil || r.find("gwnomad") == nil {
				continue
			}
			cpu := "n/a"
			if other != "direct" {
				cpu = fmt.Sprintf("%.2f×", g("gwnomad", m, "peak", sample.ProxyUS)/g(other, m, "peak", sample.ProxyUS))
			}
			half := "n/a"
			if len(res.halfAt) > 0 {
				half = fmt.Sprintf("%.2f× (%+.2f ms)", g("gwnomad", m, "half", p99)/g(other, m, "half", p99), (g("gwnomad", m, "half", p99)-g(other, m, "half", p99))/1000)
			}
			w("| %s | %s | %s | %.2f× | %s |\n", m, other, cpu, g("gwnomad", m, "peak", sample.RPS)/g(other, m, "peak", sample.RPS), half)
		}
	}
	w("\n#### Targets (issue 8)\n\n")
	if r.find("haproxy") != nil && r.find("gwnomad") != nil {
		for _, m := range []string{"plain", "tls"} {
			c := g("gwnomad", m, "peak", sample.ProxyUS) / g("haproxy", m, "peak", sample.ProxyUS)
			w("- CPU/request %s ≤ 1.0 × HAProxy: **%s** (%.2f×); stretch ≤ 0.7×: **%s**\n", m, met(c <= 1.0), c, met(c <= 0.7))
			q := g("gwnomad", m, "peak", sample.RPS) / g("haproxy", m, "peak", sample.RPS)
			w("- requests/s %s ≥ 1.0 × HAProxy: **%s** (%.2f×)\n", m, met(q >= 1.0), q)
		}
	}
	if r.find("direct") != nil && r.find("gwnomad") != nil && len(res.halfAt) > 0 {
		for _, m := range []string{"plain", "tls"} {
			d := (g("gwnomad", m, "half", p99) - g("direct", m, "half", p99)) / 1000
			w("- p99 at half load %s ≤ direct + 1 ms: **%s** (%+.2f ms)\n", m, met(d <= 1.0), d)
		}
	}
	var totalErr int64
	for _, s := range res.samples {
		totalErr += s.Errors
	}
	w("- errors over all runs: %d\n\n", totalErr)
	w("Commands of this run (ports are free loopback ports picked at start):\n\n```\n")
	for _, t := range r.targets {
		for _, m := range []string{"plain", "tls"} {
			u := t.plain
			if m == "tls" {
				u = t.tls
			}
			w("wrk -t %d -c %d -d %ds --latency -s report.lua %s%s\n", o.threads, o.conns, int(o.duration.Seconds()), u, path)
		}
	}
	if len(res.halfAt) > 0 {
		w("WRK_DELAY_MS=<connections*1000/rate> wrk ... -s rate.lua ...   # half load, same URLs\n")
	}
	w("```\n\n")
	return b.String()
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

func us(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}

func machine() string {
	var parts []string
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				parts = append(parts, strings.TrimSpace(v))
				break
			}
		}
	}
	parts = append(parts, fmt.Sprintf("%d CPUs", runtime.NumCPU()))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0]); len(f) >= 2 {
			kb, _ := strconv.ParseFloat(f[1], 64)
			parts = append(parts, fmt.Sprintf("%.0f GiB RAM", kb/1024/1024))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		parts = append(parts, "Linux "+strings.TrimSpace(string(b)))
	}
	parts = append(parts, runtime.Version())
	ver := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput() // wrk -v exits 1
		if len(out) == 0 {
			return name + " ?"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	parts = append(parts, ver("haproxy", "-v"), "Caddy "+ver("caddy", "version"), ver("wrk", "-v"))
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		parts = append(parts, "gwnomad "+strings.TrimSpace(string(out)))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		parts = append(parts, "load average at the end "+strings.Join(strings.Fields(string(b))[:3], " "))
	}
	return strings.Join(parts, "; ")
}
