// Package admin is the load balancer's admin listener, for operators and
// Consul, never for the public:
//
//	GET /healthz  200 {"status":"ok"} while serving; 503 {"status":"draining"}
//	              once a shutdown began (Consul's check of the balancer)
//	GET /routes   the live routing table as JSON: every route, its
//	              discovery state (stale? since when? last error) and every
//	              instance with its health state (healthy, warming, ejected, held)
//	GET /metrics  Prometheus metrics
package admin

import (
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gwnomad/gwnomad/lb/balancer"
	"github.com/gwnomad/gwnomad/lb/discovery"
)

// Handler serves the admin endpoints.
type Handler struct {
	Table    *balancer.Holder
	Gatherer prometheus.Gatherer
	Draining *atomic.Bool
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		w.Header().Set("Content-Type", "application/json")
		if h.Draining != nil && h.Draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"status":"draining"}` + "\n"))
			return
		}
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	case "/routes":
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(Dump(h.Table.Load(), time.Now()))
	case "/metrics":
		promhttp.HandlerFor(h.Gatherer, promhttp.HandlerOpts{}).ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

// Table is the /routes document.
type Table struct {
	Version uint64    `json:"version"`
	Built   time.Time `json:"built"`
	Routes  []Route   `json:"routes"`
}

// Route is one route in /routes.
type Route struct {
	Name       string     `json:"name"`
	Hosts      []string   `json:"hosts"`
	Service    string     `json:"service"`
	Tag        string     `json:"tag,omitempty"`
	Port       string     `json:"port"`
	Scheme     string     `json:"scheme"`
	Policy     string     `json:"policy"`
	Discovery  Discovery  `json:"discovery"`
	Instances  []Instance `json:"instances"`
	NotPassing []Instance `json:"not_passing,omitempty"`
	Skipped    []Instance `json:"skipped_no_port,omitempty"`
}

// Discovery is a route's Consul state.
type Discovery struct {
	Ready        bool       `json:"ready"`
	Index        uint64     `json:"index"`
	Updated      *time.Time `json:"updated,omitempty"`
	StaleSince   *time.Time `json:"stale_since,omitempty"`
	StaleSeconds float64    `json:"stale_seconds"`
	LastError    string     `json:"last_error,omitempty"`
	Expired      bool       `json:"expired,omitempty"`
	GraceUntil   *time.Time `json:"reconnect_grace_until,omitempty"`
	Errors       uint64     `json:"errors"`
}

// Instance is one instance in /routes. State: healthy, warming (in its slow
// start), ejected, held (kept by the reconnect grace), or Consul's status
// for instances not used.
type Instance struct {
	ID                  string     `json:"id"`
	Node                string     `json:"node"`
	Address             string     `json:"address"`
	State               string     `json:"state"`
	ConsulStatus        string     `json:"consul_status"`
	Inflight            int64      `json:"inflight"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	Ejections           uint64     `json:"ejections"`
	EjectedUntil        *time.Time `json:"ejected_until,omitempty"`
	WarmUntil           *time.Time `json:"warm_until,omitempty"` // end of its slow start
}

func tp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// Dump describes t (nil: an empty document).
func Dump(t *balancer.Table, now time.Time) *Table {
	out := &Table{Routes: []Route{}}
	if t == nil {
		return out
	}
	out.Version, out.Built = t.Version, t.Built
	for _, r := range t.Routes {
		rt := Route{
			Name: r.Name, Hosts: r.Config.Hosts, Service: r.Config.Service, Tag: r.Config.Tag, Port: r.Config.Port,
			Scheme: r.Config.Scheme, Policy: r.Config.Policy, Instances: []Instance{},
		}
		if s := r.Snapshot; s != nil {
			rt.Discovery = Discovery{
				Ready: s.Ready(), Index: s.Index, Updated: tp(s.Updated), StaleSince: tp(s.StaleSince),
				StaleSeconds: s.Age(now).Seconds(), Expired: s.Expired, GraceUntil: tp(s.GraceUntil), Errors: s.Errors,
			}
			if s.LastErr != nil && !s.StaleSince.IsZero() {
				rt.Discovery.LastError = s.LastErr.Error()
			}
		}
		nowN := now.UnixNano()
		for i, u := range r.Upstreams {
			m := r.Members[i]
			in := Instance{
				ID: m.ID, Node: m.Node, Address: u.Addr, State: "healthy", ConsulStatus: m.Status,
				Inflight: u.Inflight(), ConsecutiveFailures: u.ConsecutiveFailures(), Ejections: u.Ejections(),
			}
			if w := u.WarmUntil(r.SlowStart()); w.After(now) {
				in.State = "warming"
				in.WarmUntil = tp(w)
			}
			if m.Held {
				in.State = "held"
			}
			if u.Ejected(nowN) {
				in.State = "ejected"
				in.EjectedUntil = tp(u.EjectedUntil())
			}
			rt.Instances = append(rt.Instances, in)
		}
		for _, m := range r.Other {
			rt.NotPassing = append(rt.NotPassing, Instance{ID: m.ID, Node: m.Node, Address: hostPort(m), State: m.Status, ConsulStatus: m.Status})
		}
		for _, m := range r.Skipped {
			rt.Skipped = append(rt.Skipped, Instance{ID: m.ID, Node: m.Node, Address: hostPort(m), State: "no such port", ConsulStatus: m.Status})
		}
		out.Routes = append(out.Routes, rt)
	}
	return out
}

func hostPort(m discovery.Instance) string {
	return net.JoinHostPort(m.Address, strconv.Itoa(m.Port))
}
