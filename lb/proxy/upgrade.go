package proxy

import (
	"bufio"
	"io"
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/gwnomad/gwnomad/lb/balancer"
)

// serveUpgrade forwards an upgrade request (WebSocket) and then relays raw
// bytes both ways until either side closes. Rules:
//   - the connection to a gateway is made before the client's connection is
//     taken over, so a gateway that cannot be reached is retried on another
//     instance (and the client gets a normal 502/503 if none can);
//   - the gateway's answer (101, or a refusal) reaches the client verbatim;
//   - relayed connections are closed at the end of a graceful shutdown.
func (p *Proxy) serveUpgrade(ctx *fasthttp.RequestCtx, r *balancer.Route, start time.Time) {
	req := &ctx.Request
	req.UseHostHeader = true
	stripHopRequest(&req.Header, true)
	p.setForwarded(&req.Header, remoteAddr(ctx.RemoteAddr()), ctx.IsTLS())
	var o outcome
	var tried balancer.Tried
	var up net.Conn
	for attempt := 0; attempt < p.opt.Tries; attempt++ {
		u := r.Pick(&tried, time.Now().UnixNano())
		if u == nil {
			o.none = attempt == 0
			break
		}
		tried.Add(u)
		o.up, o.tries = u, attempt+1
		ux := u.Ext.(*upstreamExt)
		c, err := ux.dial()
		o.err = err
		if err != nil {
			p.failure(r, u, ux)
			continue
		}
		up = c
		break
	}
	if up == nil {
		p.writeError(&ctx.Response, &o)
		p.done(ctx, r, &o, start)
		return
	}
	o.err = nil
	bw := bufio.NewWriter(up)
	_ = up.SetWriteDeadline(time.Now().Add(p.opt.UpstreamTimeout))
	if err := req.Write(bw); err == nil {
		err = bw.Flush()
		o.err = err
	} else {
		o.err = err
	}
	_ = up.SetWriteDeadline(time.Time{})
	if o.err != nil {
		up.Close()
		p.failure(r, o.up, o.up.Ext.(*upstreamExt))
		p.writeError(&ctx.Response, &o)
		p.done(ctx, r, &o, start)
		return
	}
	r.ReportSuccess(o.up, time.Now().UnixNano())
	// 101: the status of a switch; the gateway's actual answer is relayed.
	ctx.Response.SetStatusCode(fasthttp.StatusSwitchingProtocols)
	p.done(ctx, r, &o, start)
	u := o.up
	u.Acquire()
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		defer u.Release()
		p.relay(c, up)
	})
}

// relay copies both ways until one side is done, then closes both.
func (p *Proxy) relay(client, gw net.Conn) {
	p.hijackMu.Lock()
	p.hijacked[client], p.hijacked[gw] = struct{}{}, struct{}{}
	p.hijackMu.Unlock()
	defer func() {
		p.hijackMu.Lock()
		delete(p.hijacked, client)
		delete(p.hijacked, gw)
		p.hijackMu.Unlock()
	}()
	// No deadlines from the HTTP exchange apply to the relayed stream.
	_ = client.SetDeadline(time.Time{})
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		// Half-close if possible so the other direction can finish; else
		// close both.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() == nil {
				return
			}
		}
		dst.Close()
		src.Close()
	}
	wg.Add(2)
	go cp(gw, client)
	go cp(client, gw)
	wg.Wait()
	client.Close()
	gw.Close()
}
