package certs

import (
	"github.com/caddyserver/certmagic"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// HTTPHandler is the :80 handler: it answers ACME HTTP-01 challenges (its
// own, or another instance's from the shared storage) and hands every
// other request to next, or, when next is nil, redirects it with a 308 to
// https on the same host, path and query.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	if next == nil {
		next = http.HandlerFunc(m.redirect)
	}
	if m.issuer == nil || m.cfg.DisableHTTPChallenge {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m.HandleHTTPChallenge(w, r) {
			return
		}
		next.ServeHTTP(w, r)
	})
}

// HandleHTTPChallenge answers r if it is an ACME HTTP-01 challenge request
// and reports whether it did.
func (m *Manager) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	if m.issuer == nil || !certmagic.LooksLikeHTTPChallenge(r) {
		return false
	}
	if m.issuer.HandleHTTPChallenge(w, r) {
		m.metrics.challenges.WithLabelValues("http-01", "answered").Inc()
		return true
	}
	m.metrics.challenges.WithLabelValues("http-01", "unknown").Inc()
	return false
}

// RedirectURL is where a plain-HTTP request for host and requestURI is
// sent: https on the same host (without the port it came on), with the
// configured HTTPS port unless 443. ok is false for a host that is not a
// plausible name or address.
func (m *Manager) RedirectURL(host, requestURI string) (url string, ok bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" || strings.ContainsAny(host, "/\\@?#% \t\r\n") {
		return "", false
	}
	if strings.Contains(host, ":") { // IPv6 literal
		host = "[" + host + "]"
	}
	if m.cfg.RedirectPort != 443 {
		host += ":" + strconv.Itoa(m.cfg.RedirectPort)
	}
	if requestURI == "" || requestURI[0] != '/' {
		requestURI = "/" + requestURI
	}
	return "https://" + host + requestURI, true
}

func (m *Manager) redirect(w http.ResponseWriter, r *http.Request) {
	target, ok := m.RedirectURL(r.Host, r.URL.RequestURI())
	if !ok {
		http.Error(w, "gwnomad-lb: bad Host header\n", http.StatusBadRequest)
		return
	}
	m.metrics.redirects.Inc()
	w.Header().Set("Location", target)
	w.WriteHeader(http.StatusPermanentRedirect)
}
