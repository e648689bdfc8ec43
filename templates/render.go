package templates

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	ctdep "github.com/hashicorp/consul-template/dependency"
	cttemplate "github.com/hashicorp/consul-template/template"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/pelletier/go-toml/v2"

	"github.com/gwnomad/gwnomad/spec"
)

// Options of Render.
type Options struct {
	// Consul is where the [config] values and, with clustering, the other
	// nodes are read. Nil renders offline: the values come from the spec
	// itself (what deploy would write) and the node has no peers.
	Consul *consulapi.Client
	// NodeIP is the node's address (NOMAD_IP_<label>). Default "127.0.0.1".
	NodeIP string
	// Ports are the ports Nomad allocated, by label (NOMAD_PORT_<label>).
	// Default: a static port is port + offset; a dynamic one renders as 0.
	Ports map[string]int
}

// Rendered is one node's deployment.toml.
type Rendered struct {
	// Template is the consul-template text that was rendered.
	Template string
	// Output is deployment.toml as the node gets it. It may hold secrets:
	// print Redact(Output).
	Output []byte
	// Doc is Output parsed back with go-toml.
	Doc map[string]any
}

// MissingKeysError names the Consul KV keys the template needs that do not
// exist. Nomad would wait for them forever (the task stays pending).
type MissingKeysError struct{ Keys []string }

func (e *MissingKeysError) Error() string {
	return fmt.Sprintf("%d Consul KV key(s) missing (Nomad would wait for them forever): %s",
		len(e.Keys), strings.Join(e.Keys, ", "))
}

// ConsulError is a failure to read Consul (unreachable, permission
// denied...), as opposed to a problem of the spec or of the values.
type ConsulError struct{ Err error }

func (e *ConsulError) Error() string { return e.Err.Error() }
func (e *ConsulError) Unwrap() error { return e.Err }

// Render renders deployment.toml for one node with the consul-template
// library, as Nomad's template block would: the template executes in
// consul-template's engine (its functions: key, service, env, parseInt,
// subtract...); its dependencies are read from Consul (non-blocking) or,
// offline, from the spec. The output is parsed back and checked by Check.
func Render(ctx context.Context, s *spec.Spec, opts Options) (*Rendered, error) {
	text, err := Template(s)
	if err != nil {
		return nil, fmt.Errorf("rendering deployment.toml: %w", err)
	}
	kv, err := KV(s)
	if err != nil {
		return nil, fmt.Errorf("rendering deployment.toml: %w", err)
	}
	tmpl, err := cttemplate.NewTemplate(&cttemplate.NewTemplateInput{Contents: text, ErrMissingKey: true})
	if err != nil {
		return nil, fmt.Errorf("rendering deployment.toml: %w", err)
	}
	in := &cttemplate.ExecuteInput{Brain: cttemplate.NewBrain(), Env: env(s, opts)}

	var missing []string
	var out *cttemplate.ExecuteResult
	for round := 0; ; round++ {
		out, err = tmpl.Execute(in)
		if err != nil {
			return nil, fmt.Errorf("rendering deployment.toml: %w", err)
		}
		if out.Missing.Len() == 0 {
			break
		}
		if round > 3 {
			return nil, fmt.Errorf("rendering deployment.toml: dependencies never resolved: %v", out.Missing.String())
		}
		for _, d := range out.Missing.List() {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("rendering deployment.toml: %w", err)
			}
			data, found, err := fetch(ctx, s, opts.Consul, kv, d)
			if err != nil {
				return nil, fmt.Errorf("rendering deployment.toml: %w", err)
			}
			if !found {
				missing = append(missing, kvKeyOf(d))
				// Render on with an empty value so every missing key is named.
				in.Brain.Remember(d, `""`)
				continue
			}
			in.Brain.Remember(d, data)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, &MissingKeysError{Keys: missing}
	}
	r := &Rendered{Template: text, Output: out.Output}
	if r.Doc, err = Check(s, out.Output); err != nil {
		return r, err
	}
	return r, nil
}

// env is the allocation environment the template reads.
func env(s *spec.Spec, opts Options) []string {
	ip := opts.NodeIP
	if ip == "" {
		ip = "127.0.0.1"
	}
	g := s.Gateway
	static := map[string]int{
		LabelHTTP: g.Ports.HTTP, LabelHTTPS: g.Ports.HTTPS,
		LabelPassthruHTTP: g.Ports.PassthruHTTP, LabelPassthruHTTPS: g.Ports.PassthruHTTPS,
		LabelClustering: s.Clustering.Port,
	}
	var out []string
	for label, p := range static {
		port := p + g.Offset // dynamic (0) renders as 0
		if v, ok := opts.Ports[label]; ok {
			port = v
		}
		out = append(out, "NOMAD_IP_"+label+"="+ip, "NOMAD_PORT_"+label+"="+strconv.Itoa(port))
	}
	sort.Strings(out)
	return out
}

var kvDepRe = regexp.MustCompile(`^kv\.block\((.*)\)$`)

func kvKeyOf(d ctdep.Dependency) string {
	if m := kvDepRe.FindStringSubmatch(d.String()); m != nil {
		return m[1]
	}
	return d.String()
}

// fetch reads one dependency of the template: a KV key or the gateway
// service. found is false for a KV key that does not exist.
func fetch(ctx context.Context, s *spec.Spec, c *consulapi.Client, kv map[string][]byte, d ctdep.Dependency) (data any, found bool, err error) {
	switch d.(type) {
	case *ctdep.KVGetQuery:
		key := kvKeyOf(d)
		if c == nil {
			v, ok := kv[key]
			return string(v), ok, nil
		}
		pair, _, err := c.KV().Get(key, (&consulapi.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, false, &ConsulError{fmt.Errorf("reading Consul KV %s: %w", key, err)}
		}
		if pair == nil {
			return nil, false, nil
		}
		return string(pair.Value), true, nil
	case *ctdep.HealthServiceQuery:
		if want, _ := ctdep.NewHealthServiceQuery(ServiceQuery(s)); want == nil || want.String() != d.String() {
			return nil, false, fmt.Errorf("template queries an unexpected service: %s", d)
		}
		if c == nil {
			return []*ctdep.HealthService{}, true, nil
		}
		entries, _, err := c.Health().Service(s.Gateway.Service, "cluster="+s.Cluster.Name, false,
			(&consulapi.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, false, &ConsulError{fmt.Errorf("reading Consul service %s: %w", s.Gateway.Service, err)}
		}
		out := make([]*ctdep.HealthService, 0, len(entries))
		for _, e := range entries {
			addr := e.Service.Address
			if addr == "" {
				addr = e.Node.Address
			}
			out = append(out, &ctdep.HealthService{
				Node: e.Node.Node, NodeID: e.Node.ID, NodeAddress: e.Node.Address,
				ServiceMeta: e.Service.Meta, Address: addr, ID: e.Service.ID, Name: e.Service.Service,
				Tags: e.Service.Tags, Checks: e.Checks, Status: e.Checks.AggregatedStatus(), Port: e.Service.Port,
			})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
		return out, true, nil
	}
	return nil, false, fmt.Errorf("template has an unsupported dependency: %s", d)
}

// RequiredKeys are the deployment.toml keys every gateway node needs.
var RequiredKeys = []string{
	"server.hostname", "server.node_ip", "server.offset",
	"transport.http.properties.port", "transport.http.properties.proxyPort",
	"transport.https.properties.port", "transport.https.properties.proxyPort",
	"transport.passthru_http.listener.port", "transport.passthru_https.listener.port",
}

// Check parses a rendered deployment.toml and checks that it holds the keys
// a gateway needs (RequiredKeys, [clustering] when enabled, every [config]
// value) with the spec's hostname. It returns the parsed document.
func Check(s *spec.Spec, out []byte) (map[string]any, error) {
	doc := map[string]any{}
	if err := toml.Unmarshal(out, &doc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			line, col := de.Position()
			return nil, fmt.Errorf("rendered deployment.toml is not valid TOML at %d:%d: %s", line, col, strings.TrimPrefix(de.Error(), "toml: "))
		}
		return nil, fmt.Errorf("rendered deployment.toml is not valid TOML: %w", err)
	}
	need := append([]string{}, RequiredKeys...)
	if s.Clustering.Enabled {
		need = append(need, "clustering.membership_scheme", "clustering.local_member_host", "clustering.local_member_port", "clustering.members")
	}
	leaves, err := s.ConfigLeaves()
	if err != nil {
		return nil, err
	}
	for _, l := range leaves {
		need = append(need, l.Dotted())
	}
	var absent []string
	for _, k := range need {
		if _, ok := lookup(doc, strings.Split(k, ".")); !ok {
			absent = append(absent, k)
		}
	}
	if len(absent) > 0 {
		return doc, fmt.Errorf("rendered deployment.toml lacks %s", strings.Join(absent, ", "))
	}
	if h, _ := lookup(doc, []string{"server", "hostname"}); h != s.Gateway.Hostname {
		return doc, fmt.Errorf("rendered deployment.toml has [server] hostname %v, want %q", h, s.Gateway.Hostname)
	}
	return doc, nil
}

// lookup finds a key in a parsed document. Path parts are matched greedily
// so that quoted keys with dots ("org.wso2.X") are found too.
func lookup(doc map[string]any, path []string) (any, bool) {
	if len(path) == 0 {
		return doc, true
	}
	for n := len(path); n >= 1; n-- {
		v, ok := doc[strings.Join(path[:n], ".")]
		if !ok {
			continue
		}
		if n == len(path) {
			return v, true
		}
		if m, ok := v.(map[string]any); ok {
			if r, ok := lookup(m, path[n:]); ok {
				return r, true
			}
		}
	}
	return nil, false
}
