package templates

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/gwnomad/gwnomad/spec"
)

// Port labels of the Nomad network; the template reads NOMAD_PORT_<label>
// and NOMAD_IP_<label>, the service meta has port_<label>.
const (
	LabelHTTP          = "http"
	LabelHTTPS         = "https"
	LabelPassthruHTTP  = "passthru_http"
	LabelPassthruHTTPS = "passthru_https"
	LabelClustering    = "clustering"
)

// ServerRole is written as [server] server_role unless [config] sets it.
const ServerRole = "gateway-worker"

// ConfigsPrefix is the Consul KV folder of a cluster's configurations:
// "gwnomad/<cluster>/config/". Each configuration (a set of [config]
// values) has its own folder below it, named by its ID.
func ConfigsPrefix(s *spec.Spec) string { return "gwnomad/" + s.Cluster.Name + "/config/" }

// A configuration's folder is never changed once written: a job version's
// template names its configuration's folder, so every node of that version
// renders that version's values, whatever is deployed later. A node of the
// old version restarting in the middle of a rollout, or Nomad's
// auto-revert, brings the old values back with the old version, and a
// deploy that fails before Nomad takes the job has changed nothing any
// node reads.

// values are the [config] leaves, TOML-encoded (EncodeValue) so that types
// survive the trip through KV, by their path joined by '/'.
func values(s *spec.Spec) (map[string][]byte, error) {
	leaves, err := s.ConfigLeaves()
	if err != nil {
		return nil, err
	}
	vals := make(map[string][]byte, len(leaves))
	for _, l := range leaves {
		v, err := EncodeValue(l.Value)
		if err != nil {
			return nil, fmt.Errorf("config.%s: %w", l.Dotted(), err)
		}
		vals[strings.Join(l.Path, "/")] = v
	}
	return vals, nil
}

// configID names a set of values: 12 hex digits of their SHA-256.
func configID(vals map[string][]byte) string {
	h := sha256.New()
	for _, k := range sortedKeys(vals) {
		fmt.Fprintf(h, "%d %s %d %s\n", len(k), k, len(vals[k]), vals[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

func sortedKeys(m map[string][]byte) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ConfigID is the ID of the spec's configuration: the name of its folder
// under ConfigsPrefix.
func ConfigID(s *spec.Spec) (string, error) {
	vals, err := values(s)
	if err != nil {
		return "", err
	}
	return configID(vals), nil
}

// IsConfigID tells a configuration's folder name from anything else under
// ConfigsPrefix.
func IsConfigID(id string) bool {
	if len(id) != 12 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// KVPrefix is the Consul KV folder of the spec's configuration:
// "gwnomad/<cluster>/config/<id>/".
func KVPrefix(s *spec.Spec) (string, error) {
	id, err := ConfigID(s)
	if err != nil {
		return "", err
	}
	return ConfigsPrefix(s) + id + "/", nil
}

// KV returns what deploy writes to Consul KV: one entry per [config] leaf
// under KVPrefix, the key's path joined by '/'
// ("gwnomad/apim-gw/config/3f2a9c41d0be/apim/key_manager/service_url"),
// the value TOML-encoded so that the template inserts it verbatim.
func KV(s *spec.Spec) (map[string][]byte, error) {
	vals, err := values(s)
	if err != nil {
		return nil, err
	}
	prefix := ConfigsPrefix(s) + configID(vals) + "/"
	kv := make(map[string][]byte, len(vals))
	for k, v := range vals {
		kv[prefix+k] = v
	}
	return kv, nil
}

// Checksum identifies the configuration a node renders: the template (which
// names the configuration's folder) and every KV value. jobs puts it in the
// job meta, so that a config change is a new job version rolled out under
// the update strategy.
func Checksum(s *spec.Spec) (string, error) {
	tmpl, err := Template(s)
	if err != nil {
		return "", err
	}
	kv, err := KV(s)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "template %d\n%s\n", len(tmpl), tmpl)
	for _, k := range sortedKeys(kv) {
		fmt.Fprintf(h, "kv %d %s %d %s\n", len(k), k, len(kv[k]), kv[k])
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ServiceQuery is the consul-template service query listing the gateway
// nodes of a cluster, healthy or not ("cluster=<name>.<service>|any").
func ServiceQuery(s *spec.Spec) string {
	return "cluster=" + s.Cluster.Name + "." + s.Gateway.Service + "|any"
}

// Template returns the consul-template text of deployment.toml for a spec.
// Nomad renders it on every node (template block); Render renders it here.
//
// Values gwnomad owns are written from the spec (hostname, offset, proxy
// ports) or from the allocation's environment (node_ip from
// NOMAD_IP_https, ports from NOMAD_PORT_<label> minus the offset, so that
// port + offset is the port Nomad allocated); every [config] value is a
// {{ key }} of its own Consul KV entry, so a missing one is named.
func Template(s *spec.Spec) (string, error) {
	leaves, err := s.ConfigLeaves()
	if err != nil {
		return "", err
	}
	prefix, err := KVPrefix(s)
	if err != nil {
		return "", err
	}
	t := &tree{}
	g := s.Gateway
	port := func(label string) string {
		if g.Offset == 0 {
			return fmt.Sprintf(`{{ env "NOMAD_PORT_%s" }}`, label)
		}
		return fmt.Sprintf(`{{ env "NOMAD_PORT_%s" | parseInt | subtract %d }}`, label, g.Offset)
	}
	t.set([]string{"server", "hostname"}, quote(g.Hostname))
	t.set([]string{"server", "node_ip"}, `"{{ env "NOMAD_IP_https" }}"`)
	t.set([]string{"server", "offset"}, fmt.Sprint(g.Offset))
	t.set([]string{"server", "server_role"}, quote(ServerRole)) // [config] may override
	t.set([]string{"transport", "http", "properties", "port"}, port(LabelHTTP))
	t.set([]string{"transport", "http", "properties", "proxyPort"}, fmt.Sprint(g.ProxyPorts.HTTP))
	t.set([]string{"transport", "https", "properties", "port"}, port(LabelHTTPS))
	t.set([]string{"transport", "https", "properties", "proxyPort"}, fmt.Sprint(g.ProxyPorts.HTTPS))
	t.set([]string{"transport", "passthru_http", "listener", "port"}, port(LabelPassthruHTTP))
	t.set([]string{"transport", "passthru_https", "listener", "port"}, port(LabelPassthruHTTPS))
	if s.Clustering.Enabled {
		t.set([]string{"clustering", "membership_scheme"}, `"wka"`)
		t.set([]string{"clustering", "local_member_host"}, `"{{ env "NOMAD_IP_clustering" }}"`)
		t.set([]string{"clustering", "local_member_port"}, `"`+port(LabelClustering)+`"`)
		// The other nodes as Consul sees them (any health: a starting node
		// must find the others), at the port they registered.
		t.set([]string{"clustering", "members"}, `[{{ range service "`+ServiceQuery(s)+`" }}`+
			`{{ $port := index .ServiceMeta "port_clustering" }}`+
			`{{ if not (and (eq .Address (env "NOMAD_IP_clustering")) (eq $port (env "NOMAD_PORT_clustering"))) }}`+
			`"{{ .Address }}:{{ $port }}", {{ end }}{{ end }}]`)
	}
	for _, l := range leaves {
		t.set(l.Path, fmt.Sprintf(`{{ key %s }}`, quote(prefix+strings.Join(l.Path, "/"))))
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# deployment.toml of a WSO2 API-M gateway node of cluster %q, rendered by\n", s.Cluster.Name)
	fmt.Fprintf(&b, "# Nomad (consul-template) from the gwnomad spec and Consul KV %s.\n", prefix)
	b.WriteString("# Generated by gwnomad: change the spec and run `gwnomad deploy`, never edit it on a node.\n")
	t.emit(&b)
	return b.String(), nil
}

// tree is a deployment.toml being laid out: leaves hold TOML value text
// (possibly consul-template actions).
type tree struct {
	order    []string
	leaves   map[string]string
	children map[string]*tree
}

func (t *tree) set(path []string, value string) {
	if t.leaves == nil {
		t.leaves, t.children = map[string]string{}, map[string]*tree{}
	}
	name := path[0]
	if len(path) == 1 {
		if _, ok := t.leaves[name]; !ok {
			t.order = append(t.order, name)
		}
		t.leaves[name] = value
		return
	}
	c, ok := t.children[name]
	if !ok {
		c = &tree{}
		t.children[name] = c
		t.order = append(t.order, name)
	}
	c.set(path[1:], value)
}

// dotted are table names WSO2 writes as dotted keys inside their parent
// table ([transport.http] properties.port = 9763), when they hold only values.
var dotted = map[string]bool{"properties": true, "listener": true, "sender": true, "parameters": true}

func (t *tree) leafOnly() bool { return len(t.children) == 0 }

// emit writes root values, then one [header] per table that holds values;
// tables of values named in dotted are written as dotted keys of their
// parent. Every table is defined once, so the document is valid TOML.
func (t *tree) emit(b *strings.Builder) {
	for _, name := range t.order {
		if v, ok := t.leaves[name]; ok {
			fmt.Fprintf(b, "%s = %s\n", Key(name), v)
		}
	}
	for _, name := range t.order {
		if c, ok := t.children[name]; ok {
			c.emitTable(b, []string{name})
		}
	}
}

func (t *tree) emitTable(b *strings.Builder, path []string) {
	var lines []string
	for _, name := range t.order {
		if v, ok := t.leaves[name]; ok {
			lines = append(lines, fmt.Sprintf("%s = %s", Key(name), v))
		} else if c := t.children[name]; dotted[name] && c.leafOnly() {
			for _, k := range c.order {
				lines = append(lines, fmt.Sprintf("%s.%s = %s", Key(name), Key(k), c.leaves[k]))
			}
		}
	}
	if len(lines) > 0 {
		keys := make([]string, len(path))
		for i, p := range path {
			keys[i] = Key(p)
		}
		fmt.Fprintf(b, "\n[%s]\n%s\n", strings.Join(keys, "."), strings.Join(lines, "\n"))
	}
	for _, name := range t.order {
		c, ok := t.children[name]
		if !ok || (dotted[name] && c.leafOnly()) {
			continue
		}
		c.emitTable(b, append(append([]string{}, path...), name))
	}
}
