package certs

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	issued          *prometheus.CounterVec
	challenges      *prometheus.CounterVec
	fileReloads     *prometheus.CounterVec
	redirects       prometheus.Counter
	handshakeNoCert prometheus.Counter
	onDemandDenied  prometheus.Counter
	notAfter        *prometheus.Desc
}

func newMetrics() *metrics {
	return &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gwnomad_lb_cert_issuance_total",
			Help: "Certificate orders finished by this instance, by kind (obtain, renew) and result (success, failure).",
		}, []string{"kind", "result"}),
		challenges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gwnomad_lb_cert_challenge_requests_total",
			Help: "ACME challenge requests seen on :80, by type and whether they were answered.",
		}, []string{"type", "result"}),
		fileReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gwnomad_lb_cert_file_reloads_total",
			Help: "Reloads of tls.cert_file/key_file after they changed, by result (success, failure).",
		}, []string{"result"}),
		redirects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gwnomad_lb_http_redirects_total",
			Help: "Plain-HTTP requests redirected to https with 308.",
		}),
		handshakeNoCert: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gwnomad_lb_tls_handshake_no_certificate_total",
			Help: "TLS handshakes refused because there is no certificate for the name asked for.",
		}),
		onDemandDenied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gwnomad_lb_cert_on_demand_denied_total",
			Help: "On-demand certificate requests refused because no route lists the name.",
		}),
		notAfter: prometheus.NewDesc("gwnomad_lb_cert_not_after_timestamp_seconds",
			"Expiry (Unix time) of the certificate served for each configured name; alert on it getting near.",
			[]string{"name"}, nil),
	}
}

func (mt *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{mt.issued, mt.challenges, mt.fileReloads, mt.redirects, mt.handshakeNoCert, mt.onDemandDenied}
}

// Describe is prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.metrics.collectors() {
		c.Describe(ch)
	}
	ch <- m.metrics.notAfter
}

// Collect is prometheus.Collector.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.metrics.collectors() {
		c.Collect(ch)
	}
	if m.files != nil {
		if c := m.files.get(); c != nil && c.Leaf != nil {
			for _, n := range c.Leaf.DNSNames {
				ch <- prometheus.MustNewConstMetric(m.metrics.notAfter, prometheus.GaugeValue, float64(c.Leaf.NotAfter.Unix()), n)
			}
		}
		return
	}
	if m.cache == nil {
		return
	}
	for _, d := range m.cfg.Domains {
		var latest float64
		for _, c := range m.cache.AllMatchingCertificates(d) {
			if c.Leaf != nil && float64(c.Leaf.NotAfter.Unix()) > latest {
				latest = float64(c.Leaf.NotAfter.Unix())
			}
		}
		if latest > 0 {
			ch <- prometheus.MustNewConstMetric(m.metrics.notAfter, prometheus.GaugeValue, latest, d)
		}
	}
}
