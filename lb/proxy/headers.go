package proxy

import (
	"bytes"
	"net/netip"

	"github.com/valyala/fasthttp"
)

// Hop-by-hop headers (RFC 9110 7.6.1) and the ones that only make sense
// between the client and the balancer. Connection itself is handled by
// fasthttp (and cleared below); Transfer-Encoding too (bodies are
// buffered, so the gateway gets a Content-Length).
var hopHeaders = []string{
	"Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Upgrade", "Expect",
}

// stripHopRequest drops hop-by-hop headers; keepUpgrade keeps Connection:
// Upgrade and Upgrade (for an upgrade that is forwarded as such).
func stripHopRequest(h *fasthttp.RequestHeader, keepUpgrade bool) {
	if conn := h.Peek("Connection"); len(conn) > 0 {
		forEachToken(conn, func(tok []byte) {
			if !keepUpgrade || !bytes.EqualFold(tok, []byte("upgrade")) {
				h.DelBytes(tok)
			}
		})
		if !keepUpgrade {
			h.Del("Connection")
		}
	}
	h.ResetConnectionClose()
	for _, k := range hopHeaders {
		if keepUpgrade && k == "Upgrade" {
			continue
		}
		if len(h.Peek(k)) > 0 {
			h.Del(k)
		}
	}
}

// stripHopResponse drops hop-by-hop headers from a gateway's answer.
func stripHopResponse(h *fasthttp.ResponseHeader) {
	if conn := h.Peek("Connection"); len(conn) > 0 {
		forEachToken(conn, func(tok []byte) { h.DelBytes(tok) })
		h.Del("Connection")
	}
	h.ResetConnectionClose()
	for _, k := range hopHeaders {
		if len(h.Peek(k)) > 0 {
			h.Del(k)
		}
	}
}

// forEachToken calls f for each comma-separated token of v, trimmed; it
// skips "close" and "keep-alive", which fasthttp handles.
func forEachToken(v []byte, f func([]byte)) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var tok []byte
		if i < 0 {
			tok, v = v, nil
		} else {
			tok, v = v[:i], v[i+1:]
		}
		tok = bytes.TrimSpace(tok)
		if len(tok) == 0 || bytes.EqualFold(tok, []byte("close")) || bytes.EqualFold(tok, []byte("keep-alive")) {
			continue
		}
		f(tok)
	}
}

// setForwarded sets X-Forwarded-For/-Proto/-Host. A trusted client's values
// are kept (For is appended to); anyone else's are replaced.
func (p *Proxy) setForwarded(h *fasthttp.RequestHeader, client netip.Addr, isTLS bool) {
	trusted := p.trusted(client)
	var arr [128]byte
	b := arr[:0]
	if trusted {
		if prior := h.Peek("X-Forwarded-For"); len(prior) > 0 {
			b = append(b, prior...)
			b = append(b, ", "...)
		}
	}
	if client.IsValid() {
		b = client.AppendTo(b)
	}
	h.SetBytesV("X-Forwarded-For", b)
	if !trusted || len(h.Peek("X-Forwarded-Proto")) == 0 {
		if isTLS {
			h.Set("X-Forwarded-Proto", "https")
		} else {
			h.Set("X-Forwarded-Proto", "http")
		}
	}
	if !trusted || len(h.Peek("X-Forwarded-Host")) == 0 {
		h.SetBytesV("X-Forwarded-Host", h.Host())
	}
}

func (p *Proxy) trusted(a netip.Addr) bool {
	for _, pf := range p.opt.Trusted {
		if pf.Contains(a) {
			return true
		}
	}
	return false
}
