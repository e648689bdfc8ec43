package lb

// Serving: the listeners, the drain on SIGTERM, the end.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gwnomad/gwnomad/lb/admin"
	"github.com/gwnomad/gwnomad/lb/proxy"
)

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
