package lb

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/discovery"
)

// Reload applies a new configuration to the running balancer without
// closing a connection or dropping a request (`gwnomad lb` does it on
// SIGHUP). What it applies:
//
//   - [[routes]]: hosts, services, ports, schemes, policies. The services a
//     new route names are watched in Consul first, and the new routing table
//     goes live once each has answered (at most 10 s), so a new route does
//     not start with 503s. Until then the old table serves.
//   - [health], but fail_on_5xx.
//   - log.level (with WithLogLevel).
//
// A route that is unchanged keeps its instances, wherever it moved in
// [[routes]]: their passive health, slow start, keep-alive connections and
// counters carry on. The instances of a changed route start over
// (ejections forgotten, connections opened anew, their counters from 0: a
// counter reset to Prometheus), and the series of instances and routes
// (by their first host) that are gone are deleted. Requests in flight
// finish on the table they started with.
//
// Anything else (listeners, [tls], [consul], [proxy], the access log, and
// with tls.mode "acme" the names certificates are for) needs a restart:
// Reload then returns an error naming the keys and changes nothing, as it
// does for an invalid configuration.
func (l *LB) Reload(ctx context.Context, cfg *config.Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid lb configuration: %w", err)
	}
	l.reloadMu.Lock()
	defer l.reloadMu.Unlock()
	if keys := restartKeys(l.live, cfg); len(keys) > 0 {
		return fmt.Errorf("%s changed, which needs a restart; nothing was applied", strings.Join(keys, ", "))
	}
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(cfg.Log.Level)); err != nil {
		return fmt.Errorf("log.level: %w", err)
	}

	nb := l.newBuilder(cfg)
	oldQ := l.watcher.Watched()
	newQ := nb.Queries()
	// Watch the new services beside the old ones, and wait for their first
	// answers: the old table keeps serving meanwhile.
	l.watcher.SetQueries(append(slices.Clone(oldQ), newQ...))
	if missing := l.waitReady(ctx, newQ, readyTimeout); len(missing) > 0 {
		l.log.Warn("reload: no answer from consul yet for some services; their routes answer 503 until it comes",
			"services", missing, "waited", readyTimeout)
	}

	l.buildMu.Lock()
	// Replace before the first Build: it hands over the upstreams of
	// unchanged routes and deletes the others' metric series, which new
	// upstreams then create afresh.
	l.builder.Replace(nb)
	l.builder = nb
	t := nb.Build(l.watcher.Snapshots())
	l.table.Store(t)
	l.buildMu.Unlock()
	l.watcher.SetQueries(newQ) // stops watching what no route names now
	for _, r := range l.live.Routes {
		if !slices.ContainsFunc(cfg.Routes, func(n config.Route) bool { return n.Hosts[0] == r.Hosts[0] }) {
			l.proxy.ForgetRoute(r.Hosts[0])
		}
	}

	if l.cfg.Consul.Register && routedServices(l.live.Routes) != routedServices(cfg.Routes) {
		select { // the register loop takes the latest routes
		case <-l.reregister:
		default:
		}
		l.reregister <- cfg.Routes
	}
	if l.level != nil {
		l.level.Set(level.Level())
	}
	l.live = cfg
	l.log.Info("configuration reloaded", "routes", len(cfg.Routes), "table_version", t.Version)
	return nil
}

// readyTimeout bounds Reload's wait for the first answers of new services.
const readyTimeout = 10 * time.Second

// waitReady waits until every query in qs has a Ready snapshot, ctx ends or
// timeout passes; it returns the queries still without an answer.
func (l *LB) waitReady(ctx context.Context, qs []discovery.Query, timeout time.Duration) []string {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		snaps := l.watcher.Snapshots()
		var missing []string
		for _, q := range qs {
			if s := snaps[q]; s == nil || !s.Ready() {
				missing = append(missing, q.String())
			}
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return missing
		case <-deadline.C:
			return missing
		case <-tick.C:
		}
	}
}

// restartKeys lists what differs between the running configuration and
// cfg that Reload cannot apply.
func restartKeys(run, cfg *config.Config) []string {
	var keys []string
	diff := func(key string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			keys = append(keys, key)
		}
	}
	diff("[listen]", run.Listen, cfg.Listen)
	diff("[consul]", run.Consul, cfg.Consul)
	diff("[proxy]", run.Proxy, cfg.Proxy)
	diff("[tls]", run.TLS, cfg.TLS)
	diff("health.fail_on_5xx", run.Health.FailOn5xx, cfg.Health.FailOn5xx)
	diff("log.access_log", run.Log.AccessLog, cfg.Log.AccessLog)
	diff("log.redact_query", run.Log.RedactQuery, cfg.Log.RedactQuery)
	if run.TLS.Mode == "acme" {
		diff("the certificates' names (tls.domains or route hosts)", run.CertDomains(), cfg.CertDomains())
		diff("the on-demand certificate names (route hosts)", run.CertHosts(), cfg.CertHosts())
	}
	return keys
}
