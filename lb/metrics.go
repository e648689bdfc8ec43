package lb

// The balancer's own metrics beside the request path's.

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports discovery and table state at scrape time.
type collector struct{ l *LB }

var (
	descAge = prometheus.NewDesc("gwnomad_lb_discovery_snapshot_age_seconds",
		"How long the served instances of a service have been stale (0 while the Consul watch is live).", []string{"service"}, nil)
	descUp = prometheus.NewDesc("gwnomad_lb_discovery_up",
		"1 when the last Consul query for the service succeeded.", []string{"service"}, nil)
	descErrs = prometheus.NewDesc("gwnomad_lb_discovery_errors_total",
		"Failed Consul queries by service.", []string{"service"}, nil)
	descInst = prometheus.NewDesc("gwnomad_lb_route_instances",
		"Instances in the routing table by route and state (healthy, ejected, held).", []string{"route", "state"}, nil)
	descVersion = prometheus.NewDesc("gwnomad_lb_table_version", "Version of the live routing table.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAge, descUp, descErrs, descInst, descVersion} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for q, s := range c.l.watcher.Snapshots() {
		up := 1.0
		if !s.StaleSince.IsZero() {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, s.Age(now).Seconds(), q.String())
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, q.String())
		ch <- prometheus.MustNewConstMetric(descErrs, prometheus.CounterValue, float64(s.Errors), q.String())
	}
	t := c.l.table.Load()
	if t == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descVersion, prometheus.GaugeValue, float64(t.Version))
	nowN := now.UnixNano()
	for _, r := range t.Routes {
		var healthy, ejected, held int
		for i, u := range r.Upstreams {
			switch {
			case u.Ejected(nowN):
				ejected++
			case r.Members[i].Held:
				held++
			default:
				healthy++
			}
		}
		ch <- prometheus.MustNewConstMetric(descInst, prometheus.GaugeValue, float64(healthy), r.Name, "healthy")
		ch <- prometheus.MustNewConstMetric(descInst, prometheus.GaugeValue, float64(ejected), r.Name, "ejected")
		ch <- prometheus.MustNewConstMetric(descInst, prometheus.GaugeValue, float64(held), r.Name, "held")
	}
}
