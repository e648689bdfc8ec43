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
//
// A request goes on with the headers the client gave it and no others:
// fasthttp would add a Content-Type to one with a body.
func stripHopRequest(h *fasthttp.RequestHeader, keepUpgrade bool) {
	h.SetNoDefaultContentType(true)
	if hop, _ := present(h.RawHeaders()); !hop {
		h.ResetConnectionClose()
		return
	}
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
// skips "close" and "keep-alive", which fasthttp handles, and the fields
// that route and frame a message (Host, Content-Length,
// Transfer-Encoding): a client naming them in Connection must not strip
// them on their way to the gateway (RFC 9110 §7.6.1 lets a sender list
// only hop-by-hop fields).
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
		if len(tok) == 0 || bytes.EqualFold(tok, []byte("close")) || bytes.EqualFold(tok, []byte("keep-alive")) ||
			bytes.EqualFold(tok, []byte("host")) || bytes.EqualFold(tok, []byte("content-length")) || bytes.EqualFold(tok, []byte("transfer-encoding")) {
			continue
		}
		f(tok)
	}
}

// setForwarded sets X-Forwarded-For/-Proto/-Host. A trusted client's values
// are kept (For is appended to, its copies joined in order; one Proto and
// one Host are kept, several are replaced); anyone else's are removed,
// every copy (fasthttp's Set replaces only the first), with Forwarded and
// X-Real-IP, which the balancer does not set but a gateway may believe.
func (p *Proxy) setForwarded(h *fasthttp.RequestHeader, client netip.Addr, isTLS bool) {
	trusted := p.trusted(client)
	var arr [256]byte
	b := arr[:0]
	protoAt, hostAt := -1, -1 // a trusted client's values, copied into b
	if trusted {
		if v := h.PeekAll("X-Forwarded-Proto"); len(v) == 1 && len(v[0]) > 0 {
			protoAt = len(b)
			b = append(b, v[0]...)
		}
		pEnd := len(b)
		if v := h.PeekAll("X-Forwarded-Host"); len(v) == 1 && len(v[0]) > 0 {
			hostAt = len(b)
			b = append(b, v[0]...)
		}
		hEnd := len(b)
		forAt := len(b)
		for _, prior := range h.PeekAll("X-Forwarded-For") {
			if len(prior) > 0 {
				b = append(b, prior...)
				b = append(b, ", "...)
			}
		}
		if client.IsValid() {
			b = client.AppendTo(b)
		}
		h.Del("X-Forwarded-For")
		h.Del("X-Forwarded-Proto")
		h.Del("X-Forwarded-Host")
		h.SetBytesV("X-Forwarded-For", b[forAt:])
		if protoAt >= 0 {
			h.SetBytesV("X-Forwarded-Proto", b[protoAt:pEnd])
		}
		if hostAt >= 0 {
			h.SetBytesV("X-Forwarded-Host", b[hostAt:hEnd])
		}
	} else {
		if _, spoof := present(h.RawHeaders()); spoof {
			for _, k := range spoofable {
				h.Del(k)
			}
		}
		if client.IsValid() {
			b = client.AppendTo(b)
		}
		h.SetBytesV("X-Forwarded-For", b)
	}
	if protoAt < 0 {
		if isTLS {
			h.Set("X-Forwarded-Proto", "https")
		} else {
			h.Set("X-Forwarded-Proto", "http")
		}
	}
	if hostAt < 0 {
		h.SetBytesV("X-Forwarded-Host", h.Host())
	}
}

// spoofable are the headers that say who the client is or how it came:
// from an untrusted client, none of its copies goes on.
var spoofable = []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded", "X-Real-Ip"}

func (p *Proxy) trusted(a netip.Addr) bool {
	for _, pf := range p.opt.Trusted {
		if pf.Contains(a) {
			return true
		}
	}
	return false
}

// present reports whether the request came with any field the hop-by-hop
// rule (hop) or the forwarding rule (spoof) acts on, from its header block
// as it came: one pass over the block costs less than a lookup for each
// name, and most requests have none. Both are true for a header not read
// from the wire (h2, or built), whose rules then look for each name.
func present(raw []byte) (hop, spoof bool) {
	if len(raw) == 0 {
		return true, true
	}
	for len(raw) > 0 {
		i := bytes.IndexByte(raw, '\n')
		if i < 0 {
			i = len(raw) - 1
		}
		line := raw[:i+1]
		raw = raw[i+1:]
		c := bytes.IndexByte(line, ':')
		if c <= 0 {
			continue
		}
		name := line[:c]
		switch len(name) {
		case 2:
			hop = hop || bytes.EqualFold(name, []byte("Te"))
		case 6:
			hop = hop || bytes.EqualFold(name, []byte("Expect"))
		case 7:
			hop = hop || bytes.EqualFold(name, []byte("Trailer")) || bytes.EqualFold(name, []byte("Upgrade"))
		case 9:
			spoof = spoof || bytes.EqualFold(name, []byte("Forwarded")) || bytes.EqualFold(name, []byte("X-Real-Ip"))
		case 10:
			hop = hop || bytes.EqualFold(name, []byte("Connection")) || bytes.EqualFold(name, []byte("Keep-Alive"))
		case 15:
			spoof = spoof || bytes.EqualFold(name, []byte("X-Forwarded-For"))
		case 16:
			hop = hop || bytes.EqualFold(name, []byte("Proxy-Connection"))
			spoof = spoof || bytes.EqualFold(name, []byte("X-Forwarded-Host"))
		case 17:
			spoof = spoof || bytes.EqualFold(name, []byte("X-Forwarded-Proto"))
		case 18:
			hop = hop || bytes.EqualFold(name, []byte("Proxy-Authenticate"))
		case 19:
			hop = hop || bytes.EqualFold(name, []byte("Proxy-Authorization"))
		}
	}
	return hop, spoof
}
