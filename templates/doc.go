// Package templates turns a spec into the deployment.toml every gateway node
// renders, with the consul-template library, the same way on every node.
//
// # Where the values live
//
// Values gwnomad owns are written into the template from the spec
// (hostname, offset, proxy ports) or read from the allocation's environment
// at render time (node_ip from NOMAD_IP_https; each port from
// NOMAD_PORT_<label> minus the offset, so that port + offset, the port
// WSO2 binds, is the port Nomad allocated). Every [config] value is one
// Consul KV entry in the configuration's folder
// gwnomad/<cluster>/config/<id>/ (id: 12 hex digits of the values'
// SHA-256, ConfigID), the key's path joined by '/', the value TOML-encoded
// so that types survive:
//
//	gwnomad/apim-gw/config/3f2a9c41d0be/apim/key_manager/service_url = "https://km:9443/services/"
//	gwnomad/apim-gw/config/3f2a9c41d0be/apim/throttling/enable       = true
//
// A folder is written once and never changed: the template of a job
// version names its own folder, so a node of that version renders its
// values whatever was deployed since (an old node restarting during a
// rollout, an auto-revert).
//
// KV(spec) is exactly what deploy writes; Template(spec) lists each key
// explicitly ({{ key "gwnomad/apim-gw/config/3f2a9c41d0be/apim/key_manager/service_url" }}),
// so a missing key is named (Render returns a *MissingKeysError) instead of
// a node waiting silently. With clustering on, [clustering] members are the
// other nodes of the cluster as Consul sees them (consul-template service
// "cluster=<name>.<service>|any", at their service meta port_clustering).
//
// Checksum(spec) hashes the template and the KV values; package jobs puts
// it in the job meta, so that a config change is a new job version rolled
// out node by node (the template's change_mode is "noop": a KV change alone
// never restarts every node at once).
//
// # Rendering here
//
//	r, err := templates.Render(ctx, s, templates.Options{Consul: client}) // as a node would
//	r, err := templates.Render(ctx, s, templates.Options{})               // offline, from the spec
//	os.Stdout.Write(templates.Redact(r.Output))
//
// Render parses the result back with go-toml and checks the keys a gateway
// needs (Check). Redact hides the values of keys named like
// password/secret/token/...key and any $secret{...} value.
//
// # Layout
//
// Tables with values get a [header]; tables of values named properties,
// listener, sender or parameters are written as dotted keys of their parent
// as WSO2's documentation does:
//
//	[server]
//	hostname = "gw.am.wso2.com"
//	node_ip = "{{ env "NOMAD_IP_https" }}"
//	offset = 0
//	server_role = "gateway-worker"
//
//	[transport.http]
//	properties.port = {{ env "NOMAD_PORT_http" }}
//	properties.proxyPort = 80
package templates
