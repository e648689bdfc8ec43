package lb

// The balancer's own registration in Consul (service gwnomad-lb), kept
// while it serves.

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/contract"
	"github.com/gwnomad/gwnomad/lb/config"
)

// registerLoop registers the balancer in Consul (retrying until it
// succeeds), re-registers it if the agent lost it, and deregisters it when
// ctx ends.
func (l *LB) registerLoop(ctx context.Context) {
	cfg := &l.cfg.Consul
	reg := l.registration(l.cfg.Routes)
	log := l.log.With("component", "register", "service_id", reg.ID)
	registered := false
	failures := 0
	for {
		wait := 30 * time.Second
		if ctx.Err() == nil {
			if registered {
				if s, _, err := l.consul.Agent().Service(reg.ID, (&consulapi.QueryOptions{}).WithContext(ctx)); err != nil || s == nil {
					registered = false
				}
			}
			if !registered {
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := l.consul.Agent().ServiceRegisterOpts(reg, consulapi.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(rctx))
				cancel()
				if err != nil {
					failures++
					if failures == 1 || failures%20 == 0 {
						log.Warn("registering in consul failed; retrying", "err", err)
					}
					wait = min(time.Duration(failures)*500*time.Millisecond, 10*time.Second)
				} else {
					registered, failures = true, 0
					log.Info("registered in consul", "service", cfg.ServiceName, "check", reg.Check.HTTP)
				}
			}
		}
		t := time.NewTimer(wait)
		select {
		case routes := <-l.reregister: // a reload changed the services routed
			t.Stop()
			reg, registered = l.registration(routes), false
			continue
		case <-ctx.Done():
			t.Stop()
			if l.handedOver.Load() {
				log.Info("leaving the registration in consul to the process handed over to")
				return
			}
			dctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err := l.consul.Agent().ServiceDeregisterOpts(reg.ID, (&consulapi.QueryOptions{}).WithContext(dctx))
			cancel()
			if err != nil {
				log.Warn("deregistering from consul failed", "err", err)
			} else {
				log.Info("deregistered from consul")
			}
			return
		case <-t.C:
		}
	}
}

// registration is the balancer's service in Consul; its meta "services"
// lists the services its routes send to (what `gwnomad status` matches).
func (l *LB) registration(routes []config.Route) *consulapi.AgentServiceRegistration {
	cfg := &l.cfg.Consul
	a := l.Addrs()
	front := a.HTTP
	if front == "" {
		front = a.HTTPS
	}
	host, portS, _ := net.SplitHostPort(front)
	port, _ := strconv.Atoi(portS)
	addr := cfg.ServiceAddr
	if addr == "" && host != "" && !net.ParseIP(host).IsUnspecified() {
		addr = host
	}
	id := cfg.ServiceID
	if id == "" {
		hn, _ := os.Hostname()
		id = fmt.Sprintf("%s-%s-%d", cfg.ServiceName, hn, port)
	}
	ahost, aport, _ := net.SplitHostPort(a.Admin)
	if ip := net.ParseIP(ahost); ahost == "" || (ip != nil && ip.IsUnspecified()) {
		ahost = "127.0.0.1"
	}
	meta := map[string]string{contract.MetaAdmin: a.Admin, contract.MetaServices: routedServices(routes)}
	if a.HTTPS != "" {
		_, p, _ := net.SplitHostPort(a.HTTPS)
		meta[contract.MetaPortPrefix+"https"] = p
	}
	if a.HTTP != "" {
		_, p, _ := net.SplitHostPort(a.HTTP)
		meta[contract.MetaPortPrefix+"http"] = p
	}
	return &consulapi.AgentServiceRegistration{
		ID: id, Name: cfg.ServiceName, Address: addr, Port: port, Tags: []string{contract.TagLB}, Meta: meta,
		Check: &consulapi.AgentServiceCheck{
			CheckID:                        id + ":healthz",
			Name:                           "gwnomad lb /healthz",
			HTTP:                           "http://" + net.JoinHostPort(ahost, aport) + "/healthz",
			Interval:                       cfg.CheckInterval.String(),
			Timeout:                        "2s",
			DeregisterCriticalServiceAfter: "30m",
		},
	}
}

// routedServices is the sorted, comma-separated list of the Consul services
// that routes (validated: defaults filled) send to.
func routedServices(routes []config.Route) string {
	var out []string
	for _, r := range routes {
		if !slices.Contains(out, r.Service) {
			out = append(out, r.Service)
		}
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}
