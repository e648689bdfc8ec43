package spec

import (
	"fmt"
	"net/url"
	"path"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/gwnomad/gwnomad/internal/tomlfile"
)

var (
	nameRe    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)
	serviceRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	labelRe   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
)

// MaxOffset bounds gateway.offset. With dynamic ports the rendered port is
// the allocated port minus the offset, and Nomad allocates from 20000 up.
const MaxOffset = 10000

// Validate checks a canonicalized spec. It returns the warnings and, when
// something is wrong, an Errors naming every problem with its position.
func (s *Spec) Validate() ([]Warning, error) {
	v := &validator{s: s}
	s.validate(v)
	sort.SliceStable(v.errs, func(i, j int) bool { return tomlfile.Less(v.errs[i], v.errs[j]) })
	sort.SliceStable(v.warns, func(i, j int) bool {
		a, b := Error(v.warns[i]), Error(v.warns[j])
		return tomlfile.Less(&a, &b)
	})
	if len(v.errs) > 0 {
		return v.warns, v.errs
	}
	return v.warns, nil
}

type validator struct {
	s     *Spec
	errs  Errors
	warns []Warning
}

func (v *validator) errorf(key, format string, args ...any) {
	p := v.s.pos.At(strings.Split(key, ".")...)
	v.errs = append(v.errs, v.s.errAt(p, key, fmt.Sprintf(format, args...)))
}

func (v *validator) warnf(key, format string, args ...any) {
	p := v.s.pos.At(strings.Split(key, ".")...)
	v.warns = append(v.warns, Warning(*v.s.errAt(p, key, fmt.Sprintf(format, args...))))
}

func (s *Spec) validate(v *validator) {
	c := s.Cluster
	if !nameRe.MatchString(c.Name) {
		v.errorf("cluster.name", "%q is not a valid name (letters, digits, '-' and '_', at most 128)", c.Name)
	}
	if len(c.Datacenters) == 0 {
		v.errorf("cluster.datacenters", "at least one datacenter is needed")
	}
	for _, dc := range c.Datacenters {
		if dc == "" {
			v.errorf("cluster.datacenters", "a datacenter name is empty")
		}
	}
	if c.Region == "" {
		v.errorf("cluster.region", "must not be empty")
	}
	if c.Namespace == "" {
		v.errorf("cluster.namespace", "must not be empty")
	}

	g := s.Gateway
	switch {
	case g.Count < 1:
		v.errorf("gateway.count", "must be at least 1 (got %d)", g.Count)
	case g.Count < 2:
		v.warnf("gateway.count", "count %d: no high availability (a failed node stops the gateway)", g.Count)
	}
	switch g.Driver {
	case DriverDocker:
		if g.Image == "" {
			v.errorf("gateway.image", "the docker driver needs an image")
		}
	case DriverExec:
		if g.Command == "" {
			v.errorf("gateway.command", "the exec driver needs a command (the program to run)")
		}
		if s.pos.Has("gateway.image") && g.Image != "" {
			v.warnf("gateway.image", "ignored with the exec driver")
		}
	default:
		v.errorf("gateway.driver", "%q is not a supported driver: want \"docker\" or \"exec\"", g.Driver)
	}
	if !path.IsAbs(g.Home) || path.Clean(g.Home) != g.Home {
		v.errorf("gateway.home", "%q must be a clean absolute path", g.Home)
	}
	if !isDNSName(g.Hostname) {
		v.errorf("gateway.hostname", "%q is not a DNS name", g.Hostname)
	}
	if g.Offset < 0 || g.Offset > MaxOffset {
		v.errorf("gateway.offset", "must be between 0 and %d (got %d)", MaxOffset, g.Offset)
	}
	if g.CPU < 1 {
		v.errorf("gateway.cpu", "must be at least 1 MHz (got %d)", g.CPU)
	}
	if g.Memory < 10 {
		v.errorf("gateway.memory", "must be at least 10 MiB (got %d)", g.Memory)
	}
	if !serviceRe.MatchString(g.Service) {
		v.errorf("gateway.service", "%q is not a valid Consul service name (lower-case letters, digits and '-')", g.Service)
	}
	if strings.ContainsAny(g.ProductVersion, "{}\"\n") {
		v.errorf("gateway.product_version", "must not contain braces, quotes or newlines")
	}
	v.nonNegative("gateway.shutdown_delay", g.ShutdownDelay)
	v.positive("gateway.kill_timeout", g.KillTimeout)
	v.positive("gateway.checks.interval", g.Checks.Interval)
	v.positive("gateway.checks.timeout", g.Checks.Timeout)
	if g.Checks.Timeout.Duration > g.Checks.Interval.Duration {
		v.warnf("gateway.checks.timeout", "longer than the interval (%s)", g.Checks.Interval.Duration)
	}
	if g.Checks.RestartLimit < 0 {
		v.errorf("gateway.checks.restart_limit", "must not be negative (0 never restarts on failed liveness)")
	}
	v.nonNegative("gateway.checks.restart_grace", g.Checks.RestartGrace)

	// Ports: range, then collisions of the ports a node binds (port+offset).
	type port struct {
		key string
		n   int
	}
	ports := []port{
		{"gateway.ports.http", g.Ports.HTTP},
		{"gateway.ports.https", g.Ports.HTTPS},
		{"gateway.ports.passthru_http", g.Ports.PassthruHTTP},
		{"gateway.ports.passthru_https", g.Ports.PassthruHTTPS},
	}
	if s.Clustering.Enabled {
		ports = append(ports, port{"clustering.port", s.Clustering.Port})
	}
	bound := map[int]string{}
	for _, p := range ports {
		switch {
		case p.n < 0 || p.n > 65535:
			v.errorf(p.key, "%d is not a port (0 = dynamic, or 1-65535)", p.n)
		case p.n > 0 && g.Offset >= 0 && g.Offset <= MaxOffset && p.n+g.Offset > 65535:
			v.errorf(p.key, "port %d + offset %d is above 65535", p.n, g.Offset)
		case p.n > 0:
			if other, ok := bound[p.n]; ok {
				// Report at the key the user wrote (the later one if both).
				key := p.key
				if pa, pb := s.pos.At(strings.Split(p.key, ".")...), s.pos.At(strings.Split(other, ".")...); !s.pos.Has(p.key) || (s.pos.Has(other) && pb.Line > pa.Line) {
					key, other = other, key
				}
				v.errorf(key, "port %d collides with %s (both bind %d)", p.n, other, p.n+g.Offset)
			}
			bound[p.n] = p.key
		}
	}
	for _, p := range []port{{"gateway.proxy_ports.http", g.ProxyPorts.HTTP}, {"gateway.proxy_ports.https", g.ProxyPorts.HTTPS}} {
		if p.n < 1 || p.n > 65535 {
			v.errorf(p.key, "%d is not a port (1-65535)", p.n)
		}
	}
	if g.ProxyPorts.HTTP == g.ProxyPorts.HTTPS {
		v.errorf("gateway.proxy_ports.https", "port %d collides with gateway.proxy_ports.http", g.ProxyPorts.HTTPS)
	}

	sv := s.SharedVolume
	if sv.Name == "" {
		v.errorf("shared_volume.name", "missing volume name (the Nomad client host_volume holding the shared artifacts)")
	}
	switch {
	case sv.Mount == "":
		v.errorf("shared_volume.mount", "missing mount path (relative to gateway.home)")
	case path.IsAbs(sv.Mount) || path.Clean(sv.Mount) != sv.Mount || strings.HasPrefix(sv.Mount, ".."):
		v.errorf("shared_volume.mount", "%q must be a clean path relative to gateway.home", sv.Mount)
	case path.Clean(sv.Mount) == DefaultVolumeMount && strings.HasPrefix(g.ProductVersion, "4."):
		v.warnf("shared_volume.mount", "API-M %s gateways pull artifacts from the control plane; mounting all of %s has known problems with in-place updates (mount a subdirectory such as repository/deployment/server/synapse-configs, or none)", g.ProductVersion, DefaultVolumeMount)
	}

	u := s.Update
	if u.MaxParallel < 1 {
		v.errorf("update.max_parallel", "must be at least 1 (got %d)", u.MaxParallel)
	}
	if u.Canary < 0 {
		v.errorf("update.canary", "must not be negative (got %d)", u.Canary)
	}
	if u.MaxParallel >= g.Count && g.Count > 1 && u.Canary == 0 {
		v.warnf("update.max_parallel", "%d >= count %d: an update replaces every node at once (no node keeps serving)", u.MaxParallel, g.Count)
	}
	if u.Canary > g.Count && g.Count >= 1 {
		v.warnf("update.canary", "%d canaries for %d nodes", u.Canary, g.Count)
	}
	if u.AutoPromote && u.Canary == 0 {
		v.errorf("update.auto_promote", "needs update.canary > 0")
	}
	v.positive("update.min_healthy_time", u.MinHealthyTime)
	v.positive("update.healthy_deadline", u.HealthyDeadline)
	v.positive("update.progress_deadline", u.ProgressDeadline)
	if u.MinHealthyTime.Duration >= u.HealthyDeadline.Duration {
		v.errorf("update.min_healthy_time", "%s must be shorter than update.healthy_deadline (%s)", u.MinHealthyTime.Duration, u.HealthyDeadline.Duration)
	}
	if u.HealthyDeadline.Duration > u.ProgressDeadline.Duration {
		v.errorf("update.progress_deadline", "%s must not be shorter than update.healthy_deadline (%s)", u.ProgressDeadline.Duration, u.HealthyDeadline.Duration)
	}

	if leaves, err := s.ConfigLeaves(); err != nil {
		v.errs = append(v.errs, err.(Errors)...)
	} else {
		for _, l := range leaves {
			d := l.Dotted()
			instead, core := CoreKeys[d]
			if core && (s.Clustering.Enabled || !strings.HasPrefix(d, "clustering.")) {
				v.errs = append(v.errs, s.errAt(l.Pos, "config."+d, "gwnomad writes "+d+" itself: "+instead))
				continue
			}
			for _, c := range coreKeyList {
				if !s.Clustering.Enabled && strings.HasPrefix(c, "clustering.") {
					continue
				}
				if strings.HasPrefix(c, d+".") {
					v.errs = append(v.errs, s.errAt(l.Pos, "config."+d, d+" is a table of values gwnomad writes (such as "+c+"), not a value"))
					break
				}
				if strings.HasPrefix(d, c+".") {
					v.errs = append(v.errs, s.errAt(l.Pos, "config."+d, c+" is a value gwnomad writes, not a table"))
					break
				}
			}
		}
	}

	v.address("nomad.address", s.Nomad.Address)
	v.address("consul.address", s.Consul.Address)
}

func (v *validator) positive(key string, d Duration) {
	if d.Duration <= 0 {
		v.errorf(key, "must be a positive duration (got %s)", d.Duration)
	}
}

func (v *validator) nonNegative(key string, d Duration) {
	if d.Duration < 0 {
		v.errorf(key, "must not be negative (got %s)", d.Duration)
	}
}

func (v *validator) address(key, addr string) {
	if addr == "" {
		return
	}
	raw := addr
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix") {
		v.errorf(key, "%q is not an address (host:port, http://host:port or https://host:port)", addr)
	}
}

// isDNSName reports whether h is a DNS name (labels of letters, digits and
// '-', at most 253 characters).
func isDNSName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if !labelRe.MatchString(l) {
			return false
		}
	}
	return true
}

var coreKeyList = func() []string {
	out := make([]string, 0, len(CoreKeys))
	for k := range CoreKeys {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}()

// knownKeys lists every spec key (dotted), for "did you mean" suggestions.
var knownKeys = tomlfile.Keys(reflect.TypeOf(Spec{}))

// Keys returns every spec key, dotted (e.g. "gateway.ports.http").
func Keys() []string { return append([]string(nil), knownKeys...) }
