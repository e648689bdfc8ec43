//lint:file-ignore SA1019 net/http serves HTTP/2 only from its own listeners; one TLS listener that
// hands h2 connections to x/net/http2 and HTTP/1.1 ones to fasthttp needs ServeConn.

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
	"golang.org/x/net/http2"
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
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			var big *fasthttp.ErrSmallBuffer
			switch {
			case errors.As(err, &big):
				ctx.Error("gwnomad-lb: request header too large\n", fasthttp.StatusRequestHeaderFieldsTooLarge)
			case errors.Is(err, fasthttp.ErrBodyTooLarge):
				ctx.Error("gwnomad-lb: request body too large\n", fasthttp.StatusRequestEntityTooLarge)
			default:
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					ctx.Error("gwnomad-lb: request timeout\n", fasthttp.StatusRequestTimeout)
					return
				}
				ctx.Error("gwnomad-lb: bad request\n", fasthttp.StatusBadRequest)
			}
		},
	}
}

type fastLogger struct{ l *slog.Logger }

func (f fastLogger) Printf(format string, args ...any) {
	f.l.Debug("http server", "msg", fmt.Sprintf(format, args...))
}

// TLSServer is the one TLS listener: it completes the handshake, then
// hands connections that negotiated h2 (ALPN) to an HTTP/2 server and all
// others to the fasthttp server.
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
	Logger           *slog.Logger

	mu     sync.Mutex
	ln     net.Listener
	ch     *chanListener
	h2     *http2.Server
	h2base *http.Server
	conns  map[net.Conn]struct{} // h2 connections
	wg     sync.WaitGroup
	closed bool
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
	s.mu.Lock()
	s.ln = ln
	s.ch = newChanListener(ln.Addr())
	s.h2base = &http.Server{Handler: s.Handler, IdleTimeout: s.IdleTimeout, ErrorLog: slog.NewLogLogger(s.Logger.Handler(), slog.LevelDebug)}
	s.h2 = &http2.Server{IdleTimeout: s.IdleTimeout, MaxConcurrentStreams: 250}
	_ = http2.ConfigureServer(s.h2base, s.h2) // registers graceful shutdown on h2base
	s.conns = map[net.Conn]struct{}{}
	s.mu.Unlock()

	fastDone := make(chan error, 1)
	go func() { fastDone <- s.Fast.Serve(s.ch) }()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.ch.Close()
			if errors.Is(err, net.ErrClosed) {
				<-fastDone
				return nil
			}
			<-fastDone
			return fmt.Errorf("tls listener: %w", err)
		}
		s.wg.Add(1)
		go s.handshake(tls.Server(Wrap(c), cfg))
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
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			tc.Close()
			return
		}
		s.conns[tc] = struct{}{}
		s.mu.Unlock()
		s.h2.ServeConn(tc, &http2.ServeConnOpts{BaseConfig: s.h2base, Handler: s.Handler})
		s.mu.Lock()
		delete(s.conns, tc)
		s.mu.Unlock()
	case "acme-tls/1":
		tc.Close()
	default:
		if !s.ch.deliver(tc) {
			tc.Close()
		}
	}
}

// Shutdown stops accepting, lets HTTP/1.1 and HTTP/2 requests in flight
// finish until ctx ends, then closes what is left.
func (s *TLSServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	ln, base := s.ln, s.h2base
	s.mu.Unlock()
	if ln == nil {
		return nil
	}
	ln.Close()
	_ = base.Shutdown(ctx) // sends GOAWAY on every h2 connection
	errFast := s.Fast.ShutdownWithContext(ctx)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		<-done
	}
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
