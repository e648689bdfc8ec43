package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// ServerOptions are the limits against slow or abusive clients.
type ServerOptions struct {
	ReadTimeout    time.Duration // whole request (headers and body)
	WriteTimeout   time.Duration // whole answer
	IdleTimeout    time.Duration // keep-alive between requests
	MaxHeaderBytes int           // request line and headers: 431 beyond
	MaxBodyBytes   int           // request body: 413 beyond
	MaxConns       int           // concurrent connections (0: fasthttp's 256k)
}

// NewFastServer returns the fasthttp server of the HTTP/1.1 path.
func (p *Proxy) NewFastServer(o ServerOptions) *fasthttp.Server {
	p.maxBody = o.MaxBodyBytes
	return &fasthttp.Server{
		Handler:                      p.ServeFast,
		NoDefaultServerHeader:        true,
		NoDefaultDate:                true,
		NoDefaultContentType:         true,
		DisablePreParseMultipartForm: true,
		CloseOnShutdown:              true,
		ReadTimeout:                  o.ReadTimeout,
		WriteTimeout:                 o.WriteTimeout,
		IdleTimeout:                  o.IdleTimeout,
		ReadBufferSize:               o.MaxHeaderBytes,
		MaxRequestBodySize:           o.MaxBodyBytes,
		Concurrency:                  o.MaxConns,
		TCPKeepalive:                 true,
		ReduceMemoryUsage:            true,
		Logger:                       fastLogger{p.log},
		// Its errors then leave out the buffer dump; what else they quote
		// (a URI, a header value) fastLogger and logRejected scrub.
		SecureErrorLogMessage: true,
		// A request refused before the handler gets its answer here, and
		// its access log line (logRejected), as any other request.
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			var big *fasthttp.ErrSmallBuffer
			var ne net.Error
			switch {
			case errors.As(err, &big):
				ctx.Error("gwnomad-lb: request header too large\n", fasthttp.StatusRequestHeaderFieldsTooLarge)
			case errors.Is(err, fasthttp.ErrBodyTooLarge):
				ctx.Error("gwnomad-lb: request body too large\n", fasthttp.StatusRequestEntityTooLarge)
			case errors.As(err, &ne) && ne.Timeout():
				ctx.Error("gwnomad-lb: request timeout\n", fasthttp.StatusRequestTimeout)
			default:
				ctx.Error("gwnomad-lb: bad request\n", fasthttp.StatusBadRequest)
			}
			p.logRejected(ctx, err)
		},
	}
}

// fastLogger takes fasthttp's log lines (at level debug). They quote what
// a client sent (the request buffer, a URI, a header value: credentials
// among them), which never goes to the log: scrubClientBytes removes it.
type fastLogger struct{ l *slog.Logger }

func (f fastLogger) Printf(format string, args ...any) {
	if !f.l.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	f.l.Debug("http server", "msg", scrubClientBytes(fmt.Sprintf(format, args...)))
}

// TLSServer is the one TLS listener: it completes the handshake, then
// hands connections that negotiated h2 (ALPN) to net/http's HTTP/2 server
// and all others to the fasthttp server, each through a listener of
// handshaken connections (chanListener). net/http then owns its h2
// connections, so its Shutdown sends each a GOAWAY and waits for their
// streams: x/net/http2's ServeConn, since Go 1.27 a wrapper around
// net/http's server, serves each connection by a copy of the server that
// no Shutdown reaches.
type TLSServer struct {
	Fast    *fasthttp.Server
	Handler http.Handler // for HTTP/2 (Proxy.ServeHTTP)
	// Config is the client-facing TLS; its GetCertificate (or
	// Certificates) may come from anywhere, e.g. certmagic. "h2" and
	// "http/1.1" are added to NextProtos; ALPN "acme-tls/1" handshakes are
	// closed right after the handshake (the config answered the challenge).
	Config           *tls.Config
	HandshakeTimeout time.Duration // default 10s
	IdleTimeout      time.Duration
	// WriteTimeout is, on h2 connections, what the fasthttp server's is
	// on the others ([proxy] write_timeout): each answer must be written
	// within it, or its stream is reset (ServeHTTP), and a connection whose
	// socket takes no byte for that long is closed (WriteByteTimeout;
	// crypto/tls's Close may then wait up to 5 s more for its close_notify
	// alert). It also paces the pings: a connection that received nothing
	// for WriteTimeout is pinged, and closed without an answer within
	// min(WriteTimeout, 15s). 0: none of these.
	WriteTimeout time.Duration
	Logger       *slog.Logger
	// Loop, when set (the event-loop engine), serves the HTTP/1.1
	// connections after their handshake (rule L8 of loop_linux.go); Fast
	// then serves only what the loops hand over. Its Serve must be
	// running (with or without a listener of its own) and its Shutdown is
	// the caller's. Default nil: Fast serves them.
	Loop *LoopServer

	mu   sync.Mutex
	ln   net.Listener
	ch   *chanListener // to fasthttp
	h2ch *chanListener // to h2
	h2   *http.Server
	wg   sync.WaitGroup // handshakes
}

// Serve accepts on ln until Shutdown.
func (s *TLSServer) Serve(ln net.Listener) error {
	if s.HandshakeTimeout <= 0 {
		s.HandshakeTimeout = 10 * time.Second
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	cfg := s.Config.Clone()
	for _, proto := range []string{"h2", "http/1.1"} {
		if !slices.Contains(cfg.NextProtos, proto) {
			cfg.NextProtos = append(cfg.NextProtos, proto)
		}
	}
	var protos http.Protocols
	protos.SetHTTP1(true) // not used: only h2 connections come to it
	protos.SetHTTP2(true)
	s.mu.Lock()
	s.ln = ln
	s.ch, s.h2ch = newChanListener(ln.Addr()), newChanListener(ln.Addr())
	// 100 streams at once per connection: RFC 9113's recommended floor,
	// what Envoy advises at the edge (nginx: 128). Each stream may hold an
	// answer until WriteTimeout; the answers a connection holds are
	// bounded together as well (Options.MaxBufferedPerConn).
	h2c := &http.HTTP2Config{MaxConcurrentStreams: 100}
	if wt := s.WriteTimeout; wt > 0 {
		h2c.WriteByteTimeout = wt
		h2c.SendPingTimeout, h2c.PingTimeout = wt, min(wt, 15*time.Second)
	}
	s.h2 = &http.Server{
		Handler: s.Handler, IdleTimeout: s.IdleTimeout, Protocols: &protos,
		HTTP2:    h2c,
		ErrorLog: slog.NewLogLogger(s.Logger.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, h2ConnKey{}, &h2Conn{writeTimeout: s.WriteTimeout})
		},
	}
	s.mu.Unlock()

	fastDone, h2Done := make(chan error, 1), make(chan error, 1)
	go func() { fastDone <- s.Fast.Serve(s.ch) }()
	go func() { h2Done <- s.h2.Serve(s.h2ch) }()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.ch.Close()
			s.h2ch.Close()
			<-fastDone
			<-h2Done
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("tls listener: %w", err)
		}
		s.wg.Add(1)
		if s.Loop != nil {
			go s.handshake(tls.Server(newTLSLink(wrap(c)), cfg))
		} else {
			go s.handshake(tls.Server(wrap(c), cfg))
		}
	}
}

func (s *TLSServer) handshake(tc *tls.Conn) {
	defer s.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), s.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.Logger.Debug("tls handshake", "remote", tc.RemoteAddr().String(), "err", err)
		tc.Close()
		return
	}
	switch tc.ConnectionState().NegotiatedProtocol {
	case "h2":
		if !s.h2ch.deliver(tc) {
			tc.Close()
		}
	case "acme-tls/1":
		tc.Close()
	default:
		if s.Loop != nil && s.Loop.adoptTLS(tc, s.ch) {
			return
		}
		if !s.ch.deliver(tc) {
			tc.Close()
		}
	}
}

// Shutdown stops accepting, lets HTTP/1.1 and HTTP/2 requests in flight
// finish until ctx ends (each h2 connection gets a GOAWAY at once, so its
// client opens new streams elsewhere), then closes what is left.
func (s *TLSServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	ln, h2 := s.ln, s.h2
	s.mu.Unlock()
	if ln == nil {
		return nil
	}
	ln.Close()
	h2Done := make(chan error, 1)
	go func() { h2Done <- h2.Shutdown(ctx) }()
	errFast := s.Fast.ShutdownWithContext(ctx)
	if err := <-h2Done; err != nil {
		_ = h2.Close() // the grace period is over
		if errFast == nil {
			errFast = fmt.Errorf("http/2: %w", err)
		}
	}
	s.wg.Wait() // handshakes end within HandshakeTimeout
	return errFast
}

// chanListener is a net.Listener fed with connections already accepted
// (and handshaken) elsewhere.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
