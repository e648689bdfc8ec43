package proxy

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the request path. Their label children are resolved once per
// route and instance (balancer hooks), never per request.
type Metrics struct {
	Requests        *prometheus.CounterVec   // route, instance, code
	Duration        *prometheus.HistogramVec // route
	Retries         *prometheus.CounterVec   // route
	Ejections       *prometheus.CounterVec   // route, instance
	NoRoute         prometheus.Counter
	BudgetExhausted prometheus.Counter
	// Refused: requests whose head was refused before routing
	// (strict.go), by status.
	Refused *prometheus.CounterVec // code
	// LoopHandoffs: connections the event-loop engine gave to the
	// goroutine engine (loop_linux.go, L3 and L4), by why.
	LoopHandoffs *prometheus.CounterVec // why: "request", "answer"
	handRequest  prometheus.Counter
	handAnswer   prometheus.Counter
	// LoopTLS: TLS connections an event loop took after the handshake
	// (loop_linux.go, L8).
	LoopTLS prometheus.Counter
	// LoopFaults: unexpected states and panics met by an event loop
	// (loop_linux.go, L10), by scope: "connection" (that connection was
	// closed, the loop went on) or "loop" (the loop's connections were
	// closed and it started again).
	LoopFaults *prometheus.CounterVec // scope
	faultConn  prometheus.Counter
	faultLoop  prometheus.Counter
	// Tunnels reports tunnels: upgraded connections (WebSocket) being
	// relayed, and upgrade requests waiting for their gateway's answer.
	Tunnels prometheus.GaugeFunc
	// TunnelsRefused: upgrade requests answered 503 because max tunnels
	// were open (Options.MaxTunnels).
	TunnelsRefused prometheus.Counter
	// tunnels is what MaxTunnels bounds. It is kept here, not in a Gauge,
	// because taking a place must compare and add in one step; proxies
	// that share these metrics share the count.
	tunnels atomic.Int64
}

// NewMetrics makes the metrics and registers them with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gwnomad_lb_requests_total",
			Help: "Requests by route, instance (empty: answered by the balancer) and status class (error: no answer from the gateway).",
		}, []string{"route", "instance", "code"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gwnomad_lb_request_duration_seconds",
			Help:    "Time from the request's arrival to the end of the answer's preparation, by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route"}),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gwnomad_lb_retries_total", Help: "Requests sent again to another instance, by route.",
		}, []string{"route"}),
		Ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gwnomad_lb_ejections_total", Help: "Passive-health ejections by route and instance.",
		}, []string{"route", "instance"}),
		NoRoute: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gwnomad_lb_no_route_total", Help: "Requests for a host that no route matches (404).",
		}),
		BudgetExhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gwnomad_lb_retry_budget_exhausted_total", Help: "Retries not made because the retry budget was spent.",
		}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gwnomad_lb_requests_refused_total",
			Help: "Requests refused before routing because their head is malformed or ambiguous (request smuggling), by status.",
		}, []string{"code"}),
		LoopHandoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gwnomad_lb_event_loop_handoffs_total",
			Help: "Client connections the event-loop engine handed to the goroutine engine, by why: a request it does not serve itself (a body, an upgrade, ...) or an answer it does not hold whole (chunked, large).",
		}, []string{"why"}),
		LoopTLS: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gwnomad_lb_event_loop_tls_connections_total",
			Help: "HTTPS connections (HTTP/1.1) served by the event-loop engine after their handshake; the others (h2, or the loops not serving) are the goroutines'.",
		}),
	}
	m.LoopFaults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gwnomad_lb_event_loop_faults_total",
		Help: "Faults an event loop contained, by scope: connection (that client connection and its gateway connection were closed) or loop (all the loop's connections were closed and the loop restarted). Any is a bug: please report it.",
	}, []string{"scope"})
	m.faultConn = m.LoopFaults.WithLabelValues("connection")
	m.faultLoop = m.LoopFaults.WithLabelValues("loop")
	m.Tunnels = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gwnomad_lb_tunnels",
		Help: "Upgraded connections (WebSocket) relayed now, with the upgrade requests waiting for their gateway's answer: what max_tunnels bounds.",
	}, func() float64 { return float64(m.tunnels.Load()) })
	m.TunnelsRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gwnomad_lb_tunnels_refused_total",
		Help: "Upgrade requests (WebSocket) answered 503 because max_tunnels upgraded connections were open.",
	})
	m.handRequest = m.LoopHandoffs.WithLabelValues("request")
	m.handAnswer = m.LoopHandoffs.WithLabelValues("answer")
	if reg != nil {
		reg.MustRegister(m.Requests, m.Duration, m.Retries, m.Ejections, m.NoRoute, m.BudgetExhausted, m.Refused, m.LoopHandoffs, m.LoopTLS, m.LoopFaults, m.Tunnels, m.TunnelsRefused)
	}
	return m
}

const numCodes = 7

// codeLabels[codeIndex(status)]; 0 is "no answer".
var codeLabels = [numCodes]string{"error", "1xx", "2xx", "3xx", "4xx", "5xx", "other"}

func codeIndex(code int) int {
	if code >= 100 && code < 600 {
		return code / 100
	}
	return 6
}
