package proxy

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// A request head is checked before anything of it reaches a gateway, by
// both engines (the event loop on the bytes it read, the goroutine engine
// on the request line fasthttp parsed and the header block as it came).
// What passes is what Go's net/http server would accept and read the same
// way; the balancer also refuses some heads net/http accepts, because a
// gateway behind it may read them differently (request smuggling). The
// differential fuzzer (FuzzDifferential) holds the engines to this.
//
// Refused, as net/http refuses them:
//   - a method that is not a token; a request target with a space or a
//     control byte; a target that is none of origin form (/path), absolute
//     form (http://host/path) and asterisk form: 400
//   - a version other than HTTP/1.0 and HTTP/1.1: 505 (net/http serves
//     HTTP/1.2 as 1.1 and refuses 2.0)
//   - a header line without a colon, a field name that is not a token
//     (a space before the colon included), a value with a control byte
//     other than tab: 400
//   - HTTP/1.1 without Host, more than one Host, a Host that is not a
//     host[:port]: 400
//   - a Content-Length that is not digits, several different ones: 400
//   - a Transfer-Encoding other than one "chunked": 501
//   - an Expect other than 100-continue: 417
//   - empty lines before the request line: 400
//
// Refused, though net/http accepts them (documented in the README's
// Security section):
//   - a line ended by a bare LF, a bare CR anywhere in the head: 400
//     (RFC 9112 §2.2 lets a recipient take LF alone; gateways differ)
//   - obsolete line folding (a line starting with a space or tab): 400
//     (RFC 9112 §5.2 allows refusing it)
//   - Transfer-Encoding with Content-Length, Transfer-Encoding in
//     HTTP/1.0, several Content-Length fields even if equal: 400
//   - a fragment (#) in the target, an empty Host, a Host with a port that
//     is not a number, HTTP/1.0 without Host (a gateway needs it): 400
//   - the asterisk form with a method other than OPTIONS: 400
//   - an absolute-form target whose authority is not the Host header:
//     400 (net/http routes by the target, the balancer by Host; RFC 9112
//     §3.2.2 says they must agree for a proxy to forward)
//   - CONNECT (the balancer is no forward proxy): 501
//   - PRI (an h2 preface over HTTP/1.1): 505
//
// A chunked request's trailer fields are dropped (dropTrailers); one
// that has the name of a header field gets 400.
//
// Read as net/http reads them but written otherwise, and allowed: the
// goroutine engine (fasthttp) skips empty lines before a request line
// (RFC 9112 §2.2) and writes an empty query ("/a?") as "/a".

// headFault is why a head is refused: its status and a short text for
// the client and the access log.
type headFault struct {
	code int
	why  string
}

var (
	faultMethod      = &headFault{400, "bad request method"}
	faultTarget      = &headFault{400, "bad request target"}
	faultLine        = &headFault{400, "malformed request line"}
	faultVersion     = &headFault{505, "HTTP version not supported"}
	faultHeader      = &headFault{400, "malformed header field"}
	faultLineEnd     = &headFault{400, "header line not ended by CRLF"}
	faultFold        = &headFault{400, "obsolete line folding"}
	faultHost        = &headFault{400, "missing, repeated or malformed Host"}
	faultLength      = &headFault{400, "malformed or repeated Content-Length"}
	faultTE          = &headFault{501, "unsupported Transfer-Encoding"}
	faultTEAndLength = &headFault{400, "Transfer-Encoding with Content-Length"}
	faultExpect      = &headFault{417, "unsupported Expect"}
	faultConnect     = &headFault{501, "CONNECT is not supported"}
	faultAuthority   = &headFault{400, "request target's host is not the Host header"}
	faultTrailer     = &headFault{400, "trailer field named as a header field"}
)

// dropTrailers discards a chunked request's trailer fields (trailer, as
// fasthttp's TrailerHeader gives it): the body goes on with a length, and
// fasthttp would write them among the header fields, where a gateway
// would take them for fields the client sent before the body (net/http
// keeps them apart; RFC 9110 §6.5.1 lets a proxy that removes the
// chunked coding discard them). False when a trailer field has the name
// of a header field too: deleting one deletes both, so the request is
// refused instead.
func dropTrailers(h *fasthttp.RequestHeader, trailer []byte) bool {
	t := bytes.Clone(trailer)
	names := map[string]int{}
	for len(t) > 0 {
		i := bytes.IndexByte(t, '\n')
		if i < 0 {
			i = len(t) - 1
		}
		line := t[:i+1]
		t = t[i+1:]
		if c := bytes.IndexByte(line, ':'); c > 0 {
			names[string(line[:c])]++
		}
	}
	for k, n := range names {
		if len(h.PeekAll(k)) != n {
			return false
		}
	}
	for k := range names {
		h.Del(k)
	}
	return true
}

// checkHead checks a whole request head: request line, header lines, the
// empty line. nil: it may be forwarded.
func checkHead(head []byte) *headFault {
	i := bytes.IndexByte(head, '\n')
	if i <= 0 || head[i-1] != '\r' {
		if i == 0 || (i == 1 && head[0] == '\r') {
			return faultLine // an empty line first
		}
		return faultLineEnd
	}
	method, target, proto, ok := splitRequestLine(head[:i-1])
	if !ok {
		return faultLine
	}
	return checkRequest(method, target, proto, head[i+1:])
}

// splitRequestLine splits "METHOD SP TARGET SP VERSION" (single spaces).
func splitRequestLine(line []byte) (method, target, proto []byte, ok bool) {
	a := bytes.IndexByte(line, ' ')
	if a < 0 {
		return nil, nil, nil, false
	}
	b := bytes.IndexByte(line[a+1:], ' ')
	if b < 0 {
		return nil, nil, nil, false
	}
	b += a + 1
	return line[:a], line[a+1 : b], line[b+1:], true
}

// checkRequest checks a request line's parts and its header block (the
// lines after the request line, up to and with the empty line; empty or
// just CRLF when there are no fields).
func checkRequest(method, target, proto, block []byte) *headFault {
	if len(method) == 0 || !allToken(method) {
		return faultMethod
	}
	http10 := false
	switch string(proto) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		http10 = true
	default:
		if len(proto) == 8 && string(proto[:5]) == "HTTP/" && isDigit(proto[5]) && proto[6] == '.' && isDigit(proto[7]) {
			return faultVersion
		}
		return faultLine
	}
	switch string(method) {
	case "CONNECT":
		return faultConnect
	case "PRI":
		return faultVersion
	}
	authority, f := checkTarget(method, target)
	if f != nil {
		return f
	}
	var hosts, lengths, tes int
	var host []byte
	var cl []byte
	for len(block) > 0 {
		i := bytes.IndexByte(block, '\n')
		if i < 0 || i == 0 || block[i-1] != '\r' {
			return faultLineEnd
		}
		line := block[:i-1]
		block = block[i+1:]
		if len(line) == 0 {
			if len(block) != 0 {
				return faultHeader // bytes after the head's end: not a head
			}
			break
		}
		// A CR left in the line is in its name or value, which refuse it.
		if line[0] == ' ' || line[0] == '\t' {
			return faultFold
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !allToken(line[:colon]) {
			return faultHeader
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if !validValue(value) {
			return faultHeader
		}
		switch len(name) { // the length first: most fields are none of these
		case 4:
			if bytes.EqualFold(name, []byte("Host")) {
				hosts++
				host = value
			}
		case 14:
			if bytes.EqualFold(name, []byte("Content-Length")) {
				lengths++
				cl = value
			}
		case 17:
			if bytes.EqualFold(name, []byte("Transfer-Encoding")) {
				tes++
				if !bytes.EqualFold(value, []byte("chunked")) {
					return faultTE
				}
			}
		case 6:
			if bytes.EqualFold(name, []byte("Expect")) && !bytes.EqualFold(value, []byte("100-continue")) {
				return faultExpect
			}
		}
	}
	switch {
	case hosts != 1:
		return faultHost
	case hosts == 1 && !validHost(host):
		return faultHost
	case authority != nil && (hosts == 0 || !bytes.EqualFold(authority, host)):
		return faultAuthority
	case lengths > 1, lengths == 1 && !validLength(cl):
		return faultLength
	case tes > 1:
		return faultTE
	case tes == 1 && http10:
		return faultTE // net/http ignores it, and frames by Content-Length
	case tes == 1 && lengths > 0:
		return faultTEAndLength
	}
	return nil
}

// checkTarget checks the request target; for the absolute form it returns
// its authority.
func checkTarget(method, target []byte) ([]byte, *headFault) {
	if len(target) == 0 {
		return nil, faultTarget
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f || c == '#' {
			return nil, faultTarget
		}
	}
	switch {
	case target[0] == '/':
		return nil, nil
	case string(target) == "*":
		if string(method) != "OPTIONS" {
			return nil, faultTarget
		}
		return nil, nil
	}
	rest, ok := bytes.CutPrefix(target, []byte("http://"))
	if !ok {
		if rest, ok = bytes.CutPrefix(target, []byte("https://")); !ok {
			return nil, faultTarget
		}
	}
	end := bytes.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	authority := rest[:end]
	if len(authority) == 0 || bytes.IndexByte(authority, '@') >= 0 || !validHost(authority) {
		return nil, faultTarget
	}
	return authority, nil
}

// validHost: host[:port], the host a name, an IPv4 address or a bracketed
// IPv6 address of the bytes RFC 3986 allows, the port digits.
func validHost(h []byte) bool {
	if len(h) == 0 {
		return false
	}
	port := []byte(nil)
	if h[0] == '[' {
		end := bytes.IndexByte(h, ']')
		if end < 0 {
			return false
		}
		for _, c := range h[1:end] {
			if !(isHex(c) || c == ':' || c == '.') {
				return false
			}
		}
		rest := h[end+1:]
		if len(rest) > 0 {
			if rest[0] != ':' {
				return false
			}
			port = rest[1:]
			if len(port) == 0 {
				return false
			}
		}
	} else {
		if i := bytes.IndexByte(h, ':'); i >= 0 {
			h, port = h[:i], h[i+1:]
			if len(port) == 0 {
				return false
			}
		}
		if len(h) == 0 {
			return false
		}
		for _, c := range h {
			if !(isAlnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
				return false
			}
		}
	}
	for _, c := range port {
		if !isDigit(c) {
			return false
		}
	}
	return len(port) <= 5
}

func validLength(v []byte) bool {
	if len(v) == 0 || len(v) > 18 {
		return false
	}
	for _, c := range v {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

// validValue: no control byte but tab (RFC 9110 §5.5; obs-text allowed,
// as net/http does).
func validValue(v []byte) bool {
	for _, c := range v {
		if badValue[c] {
			return false
		}
	}
	return true
}

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// allToken: every byte is a tchar (RFC 9110 §5.6.2).
func allToken(b []byte) bool {
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

// tchar and badValue are isTchar and validValue's rule by byte: a table
// costs one load a byte where the comparisons cost several.
var tchar, badValue [256]bool

func init() {
	for c := range 256 {
		tchar[c] = isTchar(byte(c))
		badValue[c] = (c < ' ' && c != '\t') || c == 0x7f
	}
}

func isTchar(c byte) bool {
	if isAlnum(c) {
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F') }
func isAlnum(c byte) bool {
	return isDigit(c) || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}
