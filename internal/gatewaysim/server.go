package gatewaysim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint paths of a WSO2 API-M gateway node.
const (
	VersionPath   = "/services/Version"
	ReadinessPath = "/api/am/gateway/v2/server-startup-healthcheck"
	// NodeHeader names the node on every answer of every port.
	NodeHeader = "X-Gateway-Node"
)

// Defaults of Options.
const (
	DefaultScanInterval   = 500 * time.Millisecond
	DefaultGrace          = 10 * time.Second
	DefaultProductVersion = "4.2.0"
	// CrashExitCode is what Options.Exit is called with by -crash-after.
	CrashExitCode = 3
	// MaxPadSize bounds ?size=N.
	MaxPadSize = 64 << 20
)

// ErrCrashed is returned by Run when Options.CrashAfter was reached and
// Options.Exit is nil: the listeners were closed abruptly, in-flight requests
// cut, no graceful shutdown.
var ErrCrashed = errors.New("gatewaysim: crash-after limit reached")

// Options configure a Server. Only Config is required.
type Options struct {
	// Config from LoadConfig (ports, node_ip, home).
	Config *Config
	// Node names this node in the X-Gateway-Node header and in every answer.
	// Empty means os.Hostname().
	Node string
	// ScanInterval is the artifact directory poll period (0: 500ms).
	ScanInterval time.Duration
	// Grace bounds the graceful shutdown when Run's context ends (0: 10s).
	// In-flight requests still running after it are cut.
	Grace time.Duration
	// FailReadiness makes the readiness endpoint always answer 503.
	FailReadiness bool
	// Delay is added to every answer of the passthrough (API) ports.
	Delay time.Duration
	// CrashAfter > 0 makes the node crash after that many requests on the
	// passthrough ports: the CrashAfter-th is answered, later ones are cut,
	// then Exit(3) is called (or, with a nil Exit, Run returns ErrCrashed
	// at once, closing the listeners without a graceful shutdown).
	CrashAfter int64
	// Exit is called with CrashExitCode when CrashAfter is reached; the
	// command passes os.Exit. Nil: see CrashAfter.
	Exit func(code int)
	// Log receives plain log lines (nil: os.Stderr).
	Log io.Writer
	// ProductVersion is the WSO2 API-M version that GET /services/Version
	// names (""= 4.2.0).
	ProductVersion string
}

// Addrs are the dialable host:port addresses of the four listeners. When
// node_ip is empty (all interfaces) they name 127.0.0.1.
type Addrs struct {
	HTTP          string // HTTP servlet: GET /services/Version
	HTTPS         string // HTTPS servlet (self-signed): readiness
	PassthruHTTP  string // API traffic, plain
	PassthruHTTPS string // API traffic, TLS (self-signed)
}

// listener indexes.
const (
	lnHTTP = iota
	lnHTTPS
	lnPassthruHTTP
	lnPassthruHTTPS
	numListeners
)

var listenerNames = [numListeners]string{"http", "https", "passthru_http", "passthru_https"}

// Server is one simulated gateway node. New binds its listeners; Run serves
// until its context ends.
type Server struct {
	opts    Options
	cfg     *Config
	node    string
	log     *log.Logger
	lns     [numListeners]net.Listener
	srvs    [numListeners]*http.Server
	addrs   Addrs
	cert    tls.Certificate
	started atomic.Bool

	tbl   atomic.Pointer[table]
	ready atomic.Bool
	// artifactsErr is the reason the artifact directory cannot be read at
	// the last scan (readiness fails while it is set), or nil.
	artifactsErr atomic.Pointer[string]
	requests     atomic.Int64

	crashOnce sync.Once
	crashed   chan struct{}

	// scanGate, when non-nil, holds the first artifact scan until it is
	// closed (tests use it to observe readiness before the first scan).
	scanGate chan struct{}

	nodeHdr     []string
	versionBody []byte
}

var (
	jsonCT  = []string{"application/json"}
	textCT  = []string{"text/plain; charset=utf-8"}
	bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}
	padding = func() []byte {
		b := make([]byte, 32<<10)
		for i := range b {
			b[i] = 'x'
		}
		return b
	}()
)

// New validates the options, generates the self-signed certificate and binds
// the four listeners (so Addrs is valid at once). Call Run to serve, or Close
// to release the listeners without serving.
func New(opts Options) (*Server, error) {
	if opts.Config == nil {
		return nil, errors.New("gatewaysim: options: Config is required")
	}
	if opts.ScanInterval < 0 || opts.Grace < 0 || opts.Delay < 0 || opts.CrashAfter < 0 {
		return nil, errors.New("gatewaysim: options: negative scan interval, grace, delay or crash-after")
	}
	if opts.ScanInterval == 0 {
		opts.ScanInterval = DefaultScanInterval
	}
	if opts.Grace == 0 {
		opts.Grace = DefaultGrace
	}
	if opts.ProductVersion == "" {
		opts.ProductVersion = DefaultProductVersion
	}
	if opts.Log == nil {
		opts.Log = os.Stderr
	}
	if opts.Node == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("gatewaysim: node name: %w", err)
		}
		opts.Node = h
	}
	s := &Server{
		opts:        opts,
		cfg:         opts.Config,
		node:        opts.Node,
		log:         log.New(opts.Log, "gatewaysim: ", log.LstdFlags|log.Lmicroseconds|log.Lmsgprefix),
		crashed:     make(chan struct{}),
		nodeHdr:     []string{opts.Node},
		versionBody: []byte("WSO2 API Manager-" + opts.ProductVersion + " (gatewaysim)\n"),
	}
	s.tbl.Store(newTable(nil))

	names := []string{"localhost"}
	for _, n := range []string{s.cfg.Hostname, s.node} {
		if n != "" && n != "localhost" {
			names = append(names, n)
		}
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if ip := net.ParseIP(s.cfg.NodeIP); ip != nil && !ip.IsLoopback() && !ip.IsUnspecified() {
		ips = append(ips, ip)
	}
	cert, err := selfSignedCert(names, ips)
	if err != nil {
		return nil, fmt.Errorf("gatewaysim: self-signed certificate: %w", err)
	}
	s.cert = cert

	ports := [numListeners]int{s.cfg.HTTPPort, s.cfg.HTTPSPort, s.cfg.PassthruHTTPPort, s.cfg.PassthruHTTPSPort}
	errLog := log.New(opts.Log, "gatewaysim: http: ", log.LstdFlags|log.Lmicroseconds|log.Lmsgprefix)
	for i := range numListeners {
		addr := s.cfg.BindAddr(ports[i])
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("gatewaysim: listen %s (%s): %w", listenerNames[i], addr, err)
		}
		s.lns[i] = ln
		var h http.Handler = http.HandlerFunc(s.servlet)
		if i == lnPassthruHTTP || i == lnPassthruHTTPS {
			h = http.HandlerFunc(s.passthru)
		}
		srv := &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       120 * time.Second,
			ErrorLog:          errLog,
		}
		if i == lnHTTPS || i == lnPassthruHTTPS {
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
		s.srvs[i] = srv
	}
	s.addrs = Addrs{
		HTTP:          dialable(s.lns[lnHTTP].Addr()),
		HTTPS:         dialable(s.lns[lnHTTPS].Addr()),
		PassthruHTTP:  dialable(s.lns[lnPassthruHTTP].Addr()),
		PassthruHTTPS: dialable(s.lns[lnPassthruHTTPS].Addr()),
	}
	return s, nil
}

func dialable(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	ip := ta.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(ta.Port))
}

// Addrs returns the listeners' addresses (valid from New on).
func (s *Server) Addrs() Addrs { return s.addrs }

// Node returns the node name the server answers with.
func (s *Server) Node() string { return s.node }

// Certificate returns the self-signed certificate of the TLS ports, e.g. for
// a test client that wants to verify it.
func (s *Server) Certificate() tls.Certificate { return s.cert }

// Ready reports whether the readiness endpoint answers 200.
func (s *Server) Ready() bool {
	return s.ready.Load() && !s.opts.FailReadiness && s.artifactsErr.Load() == nil
}

// Close releases the listeners of a Server whose Run was never called. It is
// a no-op after Run started (cancel Run's context instead).
func (s *Server) Close() error {
	if s.started.Load() {
		return nil
	}
	var errs []error
	for _, ln := range s.lns {
		if ln != nil {
			if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Run serves until ctx ends, then shuts down gracefully: the listeners stop
// accepting at once and in-flight requests may finish within Options.Grace.
// It returns nil after a graceful (or grace-bounded) shutdown, ErrCrashed
// when CrashAfter was reached without an Exit function, or the error of a
// listener that failed.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("gatewaysim: Run called more than once")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	errc := make(chan error, numListeners)
	var wg sync.WaitGroup
	for i := range numListeners {
		srv, ln, name := s.srvs[i], s.lns[i], listenerNames[i]
		tlsOn := srv.TLSConfig != nil
		wg.Go(func() {
			var err error
			if tlsOn {
				err = srv.ServeTLS(ln, "", "")
			} else {
				err = srv.Serve(ln)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s on %s: %w", name, ln.Addr(), err)
			}
		})
	}
	wg.Go(func() { s.scanLoop(ctx) })

	a := s.addrs
	s.log.Printf("node %s (WSO2 API Manager-%s, role %q) home %s", s.node, s.opts.ProductVersion, s.cfg.ServerRole, s.cfg.Home)
	s.log.Printf("listening: liveness http://%s%s, readiness https://%s%s, API traffic http://%s and https://%s",
		a.HTTP, VersionPath, a.HTTPS, ReadinessPath, a.PassthruHTTP, a.PassthruHTTPS)
	s.log.Printf("artifacts %s, polled every %s; switches: fail-readiness=%t delay=%s crash-after=%d",
		s.cfg.APIDir(), s.opts.ScanInterval, s.opts.FailReadiness, s.opts.Delay, s.opts.CrashAfter)

	var runErr error
	select {
	case <-ctx.Done():
		s.log.Printf("stopping: no new connections, finishing in-flight requests (grace %s)", s.opts.Grace)
	case runErr = <-errc:
		s.log.Printf("stopping: %v", runErr)
	case <-s.crashed:
		s.log.Printf("crash-after %d reached: closing every connection abruptly", s.opts.CrashAfter)
		cancel()
		for _, srv := range s.srvs {
			srv.Close()
		}
		wg.Wait()
		return ErrCrashed
	}
	cancel()
	shutCtx, shutCancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.Grace)
	defer shutCancel()
	var swg sync.WaitGroup
	var forced atomic.Bool
	for _, srv := range s.srvs {
		swg.Go(func() {
			if err := srv.Shutdown(shutCtx); err != nil {
				forced.Store(true)
				srv.Close()
			}
		})
	}
	swg.Wait()
	wg.Wait()
	if forced.Load() {
		s.log.Printf("grace period %s exceeded: remaining connections closed", s.opts.Grace)
	}
	s.log.Printf("stopped")
	return runErr
}

// scanLoop scans the artifact directory at once, marks the node ready, then
// rescans every ScanInterval until ctx ends.
func (s *Server) scanLoop(ctx context.Context) {
	if s.scanGate != nil {
		select {
		case <-s.scanGate:
		case <-ctx.Done():
			return
		}
	}
	sc := newScanner(s.cfg.APIDir(), s.node, s.log)
	scan := func() {
		if t := sc.scan(); t != nil {
			s.tbl.Store(t)
		}
		if sc.unreadable != nil {
			msg := sc.unreadable.Error()
			s.artifactsErr.Store(&msg)
		} else {
			s.artifactsErr.Store(nil)
		}
	}
	scan()
	s.ready.Store(true)
	ready := "ready"
	if s.opts.FailReadiness {
		ready = "readiness forced to fail by -fail-readiness"
	}
	s.log.Printf("first artifact scan done: %d API(s) deployed; %s", s.tbl.Load().count, ready)
	tk := time.NewTicker(s.opts.ScanInterval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			scan()
		}
	}
}

// servlet serves the HTTP and HTTPS servlet ports: liveness and readiness.
func (s *Server) servlet(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h[NodeHeader] = s.nodeHdr
	switch r.URL.Path {
	case VersionPath:
		h["Content-Type"] = textCT
		w.WriteHeader(http.StatusOK)
		w.Write(s.versionBody)
	case ReadinessPath:
		h["Content-Type"] = jsonCT
		bp := bufPool.Get().(*[]byte)
		b := (*bp)[:0]
		status := http.StatusOK
		switch {
		case s.opts.FailReadiness:
			status = http.StatusServiceUnavailable
			b = append(b, `{"status":"not ready","reason":"forced by -fail-readiness","node":`...)
		case !s.ready.Load():
			status = http.StatusServiceUnavailable
			b = append(b, `{"status":"not ready","reason":"first artifact scan not completed","node":`...)
		case s.artifactsErr.Load() != nil:
			status = http.StatusServiceUnavailable
			b = append(b, `{"status":"not ready","reason":`...)
			b = appendJSONString(b, "artifact directory unreadable: "+*s.artifactsErr.Load())
			b = append(b, `,"node":`...)
		default:
			b = append(b, `{"status":"ready","apis":`...)
			b = strconv.AppendInt(b, int64(s.tbl.Load().count), 10)
			b = append(b, `,"node":`...)
		}
		b = appendJSONString(b, s.node)
		b = append(b, "}\n"...)
		w.WriteHeader(status)
		w.Write(b)
		putBuf(bp, b)
	default:
		s.writeNotFound(w, r, "no such servlet endpoint")
	}
}

func (s *Server) writeNotFound(w http.ResponseWriter, r *http.Request, msg string) {
	w.Header()["Content-Type"] = jsonCT
	bp := bufPool.Get().(*[]byte)
	b := append((*bp)[:0], `{"code":404,"message":`...)
	b = appendJSONString(b, msg)
	b = append(b, `,"node":`...)
	b = appendJSONString(b, s.node)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, r.Method)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, r.URL.Path)
	b = append(b, "}\n"...)
	w.WriteHeader(http.StatusNotFound)
	w.Write(b)
	putBuf(bp, b)
}

func putBuf(bp *[]byte, b []byte) {
	if cap(b) > 256<<10 {
		return // do not keep huge padded buffers
	}
	*bp = b[:0]
	bufPool.Put(bp)
}

// passthru serves the API traffic ports from the current routing table.
func (s *Server) passthru(w http.ResponseWriter, r *http.Request) {
	n := s.requests.Add(1)
	if s.opts.CrashAfter > 0 && n > s.opts.CrashAfter {
		s.crash()
		panic(http.ErrAbortHandler) // crashed: cut the connection, no answer
	}
	h := w.Header()
	h[NodeHeader] = s.nodeHdr
	h["Content-Type"] = jsonCT
	if s.opts.Delay > 0 {
		t := time.NewTimer(s.opts.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return // client gone
		}
	}
	path := r.URL.Path
	res, rt, i, sub := s.tbl.Load().lookup(r.Method, path)
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	status := http.StatusOK
	switch res {
	case lookupOK:
		b = append(b, rt.head...)
		b = append(b, rt.tmpl[i]...)
		b = append(b, `"method":`...)
		b = appendJSONString(b, r.Method)
		b = append(b, `,"path":`...)
		b = appendJSONString(b, path)
		b = append(b, `,"resource":`...)
		b = appendJSONString(b, sub)
	case lookupMethodNotAllowed:
		status = http.StatusMethodNotAllowed
		h["Allow"] = []string{rt.allowFor(sub)}
		b = append(b, `{"code":405,"message":"Method not allowed for given API resource","api":`...)
		b = appendJSONString(b, rt.api.Name)
		b = append(b, `,"node":`...)
		b = appendJSONString(b, s.node)
		b = append(b, `,"method":`...)
		b = appendJSONString(b, r.Method)
		b = append(b, `,"path":`...)
		b = appendJSONString(b, path)
	default:
		status = http.StatusNotFound
		b = append(b, `{"code":404,"message":"No matching resource found for given API Request","node":`...)
		b = appendJSONString(b, s.node)
		b = append(b, `,"method":`...)
		b = appendJSONString(b, r.Method)
		b = append(b, `,"path":`...)
		b = appendJSONString(b, path)
	}
	b = pad(b, querySize(r.URL.RawQuery))
	if len(b) > 2000 {
		h["Content-Length"] = []string{strconv.Itoa(len(b))}
	}
	w.WriteHeader(status)
	w.Write(b)
	putBuf(bp, b)
	if s.opts.CrashAfter > 0 && n == s.opts.CrashAfter {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		s.crash()
	}
}

// pad closes the JSON object in b. When size is larger than the unpadded
// body, the body is padded to exactly size bytes: with a "pad" member of x's,
// or with spaces when the gap is too small for that member.
func pad(b []byte, size int) []byte {
	const open, closing = `,"pad":"`, "\"}\n"
	if n := size - len(b) - len(open) - len(closing); n > 0 {
		b = append(b, open...)
		for n > 0 {
			k := min(n, len(padding))
			b = append(b, padding[:k]...)
			n -= k
		}
		return append(b, closing...)
	}
	for len(b)+2 < size {
		b = append(b, ' ')
	}
	return append(b, "}\n"...)
}

// querySize returns N of a "size=N" query parameter (0 when absent or
// invalid), bounded by MaxPadSize. It does not allocate.
func querySize(q string) int {
	for q != "" {
		kv := q
		if i := indexAny2(q, '&', ';'); i >= 0 {
			kv, q = q[:i], q[i+1:]
		} else {
			q = ""
		}
		if len(kv) > 5 && kv[:5] == "size=" {
			n, err := strconv.Atoi(kv[5:])
			if err != nil || n < 0 {
				return 0
			}
			return min(n, MaxPadSize)
		}
	}
	return 0
}

func indexAny2(s string, a, b byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == a || s[i] == b {
			return i
		}
	}
	return -1
}

// crash triggers the crash-after behaviour once.
func (s *Server) crash() {
	s.crashOnce.Do(func() {
		if s.opts.Exit != nil {
			s.log.Printf("crash-after %d reached: exiting with code %d", s.opts.CrashAfter, CrashExitCode)
			s.opts.Exit(CrashExitCode)
			return
		}
		close(s.crashed)
	})
}
