package spec

import (
	"fmt"
	"sort"
	"strings"
)

// ConfigLeaf is one value of the [config] table: a deployment.toml key and
// its value as go-toml decoded it (string, int64, float64, bool, []any,
// map[string]any inside arrays, toml.Local* or time.Time).
type ConfigLeaf struct {
	// Path of the key in deployment.toml, e.g. ["apim", "key_manager",
	// "service_url"] for [apim.key_manager] service_url.
	Path  []string
	Value any
	// Pos is where the key was written in the spec (zero when unknown).
	Pos Position
}

// Dotted returns the path joined with dots (for messages).
func (l ConfigLeaf) Dotted() string { return strings.Join(l.Path, ".") }

// ConfigLeaves flattens [config] into its leaves, sorted by path.
//
// Tables nest as usual ([config.apim.key_manager] service_url = ...), and a
// first-level key that contains dots names a table path as it is written in
// a deployment.toml header, so `[config] "apim.key_manager".service_url =
// ...` is the same leaf. Deeper keys are kept verbatim (WSO2 uses quoted
// keys with dots, e.g. "org.wso2.CipherTransformation"). Arrays, including
// arrays of tables, are single leaves.
func (s *Spec) ConfigLeaves() ([]ConfigLeaf, error) {
	var leaves []ConfigLeaf
	var errs Errors
	seen := map[string]string{} // path joined by keySep -> "leaf" or "table"
	var walk func(written, path []string, v any)
	walk = func(written, path []string, v any) {
		pos := s.pos.At(append([]string{"config"}, written...)...)
		k := strings.Join(path, keySep)
		if m, ok := v.(map[string]any); ok {
			if seen[k] == "leaf" {
				errs = append(errs, s.errAt(pos, "config."+strings.Join(written, "."),
					fmt.Sprintf("deployment.toml key %s is both a value and a table", strings.Join(path, "."))))
				return
			}
			seen[k] = "table"
			keys := make([]string, 0, len(m))
			for name := range m {
				keys = append(keys, name)
			}
			sort.Strings(keys)
			for _, name := range keys {
				sub := []string{name}
				if len(path) == 0 && strings.Contains(name, ".") {
					sub = strings.Split(name, ".")
				}
				walk(append(append([]string{}, written...), name), append(append([]string{}, path...), sub...), m[name])
			}
			return
		}
		if prev, ok := seen[k]; ok {
			if prev == "leaf" {
				prev = "value"
			}
			errs = append(errs, s.errAt(pos, "config."+strings.Join(written, "."),
				fmt.Sprintf("deployment.toml key %s is both a value and a %s", strings.Join(path, "."), prev)))
			return
		}
		// Every enclosing path must not be a leaf.
		for n := 1; n < len(path); n++ {
			if seen[strings.Join(path[:n], keySep)] == "leaf" {
				errs = append(errs, s.errAt(pos, "config."+strings.Join(written, "."),
					fmt.Sprintf("deployment.toml key %s is both a value and a table", strings.Join(path[:n], "."))))
				return
			}
		}
		seen[k] = "leaf"
		for _, seg := range path {
			if seg == "" || strings.Contains(seg, "/") {
				errs = append(errs, s.errAt(pos, "config."+strings.Join(written, "."),
					"a key part must not be empty nor contain '/' (it becomes a Consul KV path segment)"))
				return
			}
		}
		leaves = append(leaves, ConfigLeaf{Path: path, Value: v, Pos: pos})
	}
	walk(nil, nil, s.Config)
	sort.Slice(leaves, func(i, j int) bool {
		return strings.Join(leaves[i].Path, keySep) < strings.Join(leaves[j].Path, keySep)
	})
	if len(errs) > 0 {
		return nil, errs
	}
	return leaves, nil
}

// CoreKeys are the deployment.toml keys gwnomad writes from the spec itself
// (value: what to do instead). [config] must not set them.
var CoreKeys = map[string]string{
	"server.hostname":                        "set gateway.hostname instead",
	"server.node_ip":                         "it is the Nomad allocation's address",
	"server.offset":                          "set gateway.offset instead",
	"transport.http.properties.port":         "set gateway.ports.http instead",
	"transport.http.properties.proxyPort":    "set gateway.proxy_ports.http instead",
	"transport.https.properties.port":        "set gateway.ports.https instead",
	"transport.https.properties.proxyPort":   "set gateway.proxy_ports.https instead",
	"transport.passthru_http.listener.port":  "set gateway.ports.passthru_http instead",
	"transport.passthru_https.listener.port": "set gateway.ports.passthru_https instead",
	"clustering.membership_scheme":           "it is \"wka\" with clustering.enabled",
	"clustering.local_member_host":           "it is the Nomad allocation's address",
	"clustering.local_member_port":           "set clustering.port instead",
	"clustering.members":                     "they are the cluster's gateway nodes registered in Consul",
}

func (s *Spec) errAt(p Position, key, msg string) *Error {
	return &Error{File: s.File, Line: p.Line, Column: p.Column, Key: key, Msg: msg}
}
