//go:build !linux

package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
)

// LoopServer is the event-loop engine, which needs Linux (epoll); the
// configuration refuses it elsewhere (proxy.engine).
type LoopServer struct{}

// NewLoopServer returns a server whose Serve fails.
func (p *Proxy) NewLoopServer(ServerOptions) *LoopServer { return &LoopServer{} }

// Serve fails: there is no event loop here.
func (*LoopServer) Serve(net.Listener) error {
	return errors.New("event loop: needs Linux (epoll)")
}

// Shutdown does nothing.
func (*LoopServer) Shutdown(context.Context) error { return nil }

// adoptTLS takes nothing.
func (*LoopServer) adoptTLS(*tls.Conn, *chanListener) bool { return false }

// newTLSLink returns c.
func newTLSLink(c net.Conn) net.Conn { return c }
