package spec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEmptySpecTakesDefaults(t *testing.T) {
	s, warns, err := Parse("empty.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 1 || warns[0].Key != "shared_volume.mount" {
		t.Errorf("warnings = %v, want the 4.x mount warning only", warns)
	}
	g := s.Gateway
	checks := []struct {
		name      string
		got, want any
	}{
		{"cluster.name", s.Cluster.Name, "apim-gw"},
		{"cluster.datacenters", fmt.Sprint(s.Cluster.Datacenters), "[dc1]"},
		{"gateway.count", g.Count, 3},
		{"gateway.driver", g.Driver, "docker"},
		{"gateway.image", g.Image, "wso2/wso2am:4.2.0"},
		{"gateway.home", g.Home, "/home/wso2carbon/wso2am-4.2.0"},
		{"gateway.ports", g.Ports, Ports{9763, 9443, 8280, 8243}},
		{"gateway.proxy_ports", g.ProxyPorts, ProxyPorts{80, 443}},
		{"gateway.cpu", g.CPU, 2000},
		{"gateway.memory", g.Memory, 4096},
		{"gateway.service", g.Service, "apim-gateway"},
		{"gateway.checks.tls_skip_verify", g.Checks.TLSSkipVerify, true},
		{"shared_volume", s.SharedVolume, SharedVolume{Name: "apim-shared", Mount: "repository/deployment/server"}},
		{"clustering", s.Clustering, Clustering{Port: 4000}},
		{"update.auto_revert", s.Update.AutoRevert, true},
		{"update.max_parallel", s.Update.MaxParallel, 1},
		{"update.min_healthy_time", s.Update.MinHealthyTime.Duration, 10 * time.Second},
		{"update.healthy_deadline", s.Update.HealthyDeadline.Duration, 5 * time.Minute},
		{"update.progress_deadline", s.Update.ProgressDeadline.Duration, 10 * time.Minute},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestExplicitZeroValuesAreKept(t *testing.T) {
	s, _, err := Parse("z.toml", []byte(`
[gateway.ports]
http = 0
passthru_https = 0
[update]
auto_revert = false
[gateway.checks]
tls_skip_verify = false
`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Gateway.Ports != (Ports{0, 9443, 8280, 0}) {
		t.Errorf("ports = %+v", s.Gateway.Ports)
	}
	if s.Update.AutoRevert || s.Gateway.Checks.TLSSkipVerify {
		t.Errorf("explicit false was defaulted to true")
	}
	s.Canonicalize() // twice is harmless
	if s.Update.AutoRevert {
		t.Errorf("second Canonicalize reset auto_revert")
	}
}

func TestEmbeddedDefaultSpec(t *testing.T) {
	s, warns, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warns {
		t.Errorf("the demo spec must not warn: %v", w)
	}
	if rel, ok := s.SharedPath("repository/deployment/server/synapse-configs/default/api"); !ok || rel != "default/api" {
		t.Errorf("SharedPath of the API dir = %q, %v", rel, ok)
	}
	if _, ok := s.SharedPath("repository/conf/deployment.toml"); ok {
		t.Errorf("deployment.toml is not on the shared volume")
	}
	g := s.Gateway
	if g.Count != 3 || g.Driver != "exec" || g.Command != "/opt/gwnomad/bin/gatewaysim" || g.Hostname != "gw.am.wso2.com" {
		t.Errorf("gateway = %+v", g)
	}
	if g.Ports != (Ports{}) {
		t.Errorf("demo ports should all be dynamic: %+v", g.Ports)
	}
	if s.SharedVolume.Name != "apim-shared" {
		t.Errorf("shared volume = %q", s.SharedVolume.Name)
	}
}

// TestBadSpecs asserts the exact message of each kind of mistake: file,
// line and column, and the dotted key.
func TestBadSpecs(t *testing.T) {
	cases := []struct {
		name, doc string
		want      []string // every line of the error, in order
	}{
		{"unknown key", "[gateway]\ncount = 3\ncuont = 2\n",
			[]string{`bad.toml:3:1: gateway.cuont: unknown key (did you mean "gateway.count"?)`}},
		{"unknown table", "[gatway]\ncount = 3\n",
			[]string{`bad.toml:1:2: gatway: unknown key (did you mean "gateway"?)`}},
		{"two unknown keys", "[gateway]\nfoo = 1\n[update]\nbar = 2\n",
			[]string{`bad.toml:2:1: gateway.foo: unknown key`, `bad.toml:4:1: update.bar: unknown key`}},
		{"wrong type", "[gateway]\ncount = \"three\"\n",
			[]string{`bad.toml:2:9: gateway.count: wrong type: want integer, got string`}},
		{"wrong type in array", "[cluster]\ndatacenters = [1]\n",
			[]string{`bad.toml:2:16: cluster.datacenters: wrong type: want string, got integer`}},
		{"count 0", "[gateway]\n  count = 0\n",
			[]string{`bad.toml:2:3: gateway.count: must be at least 1 (got 0)`}},
		{"missing volume name", "[shared_volume]\nname = \"\"\n",
			[]string{`bad.toml:2:1: shared_volume.name: missing volume name (the Nomad client host_volume holding the shared artifacts)`}},
		{"bad duration", "[update]\nmin_healthy_time = \"10 seconds\"\n",
			[]string{`bad.toml:2:20: update.min_healthy_time: not a duration (e.g. "10s", "5m"): "10 seconds"`}},
		{"syntax error", "[gateway\ncount = 1\n",
			[]string{"bad.toml:1:9: expected ']' to close table name"}},
		{"inline table key", "[gateway]\nports = { http = 9443 }\n",
			[]string{`bad.toml:2:11: gateway.ports.http: port 9443 collides with gateway.ports.https (both bind 9443)`}},
		{"bad driver", "[gateway]\ndriver = \"raw_exec\"\n",
			[]string{`bad.toml:2:1: gateway.driver: "raw_exec" is not a supported driver: want "docker" or "exec"`}},
		{"exec without command", "[gateway]\ndriver = \"exec\"\n",
			[]string{`bad.toml:1:2: gateway.command: the exec driver needs a command (the program to run)`}},
		{"docker without image", "[gateway]\nimage = \"\"\n",
			[]string{`bad.toml:2:1: gateway.image: the docker driver needs an image`}},
		{"hostname", "[gateway]\nhostname = \"gw_am.wso2.com\"\n",
			[]string{`bad.toml:2:1: gateway.hostname: "gw_am.wso2.com" is not a DNS name`}},
		{"colliding ports", "[gateway.ports]\nhttp = 8243\n",
			[]string{`bad.toml:2:1: gateway.ports.http: port 8243 collides with gateway.ports.passthru_https (both bind 8243)`}},
		{"clustering port collides", "[clustering]\nenabled = true\nport = 9443\n",
			[]string{`bad.toml:3:1: clustering.port: port 9443 collides with gateway.ports.https (both bind 9443)`}},
		{"offset", "[gateway]\noffset = 60000\n",
			[]string{`bad.toml:2:1: gateway.offset: must be between 0 and 10000 (got 60000)`}},
		{"config sets a core key", "[config.server]\nhostname = \"x\"\n",
			[]string{`bad.toml:2:1: config.server.hostname: gwnomad writes server.hostname itself: set gateway.hostname instead`}},
		{"config key with slash", "[config]\n\"a/b\" = 1\n",
			[]string{`bad.toml:2:1: config.a/b: a key part must not be empty nor contain '/' (it becomes a Consul KV path segment)`}},
		{"config value and table", "[config]\n\"apim.x\" = 1\napim.x.y = 2\n",
			[]string{`bad.toml:2:1: config.apim.x: deployment.toml key apim.x is both a value and a table`}},
		{"auto promote without canary", "[update]\nauto_promote = true\n",
			[]string{`bad.toml:2:1: update.auto_promote: needs update.canary > 0`}},
		{"deadlines", "[update]\nmin_healthy_time = \"10m\"\n",
			[]string{`bad.toml:2:1: update.min_healthy_time: 10m0s must be shorter than update.healthy_deadline (5m0s)`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, _, err := Parse("bad.toml", []byte(c.doc))
			if err == nil {
				t.Fatalf("no error; spec %+v", s)
			}
			if s != nil {
				t.Errorf("a spec was returned with the error")
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("error:\n got %q\nwant %q", got, c.want)
			}
			var e *Error
			if !errors.As(err, &e) || e.File != "bad.toml" {
				t.Errorf("errors.As(*Error) = %v", e)
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	_, warns, err := Parse("w.toml", []byte("[gateway]\ncount = 1\n[shared_volume]\nmount = \"repository/deployment/server\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range warns {
		got = append(got, w.String())
	}
	want := []string{
		"warning: w.toml:2:1: gateway.count: count 1: no high availability (a failed node stops the gateway)",
		"warning: w.toml:4:1: shared_volume.mount: API-M 4.2.0 gateways pull artifacts from the control plane; mounting all of repository/deployment/server has known problems with in-place updates (mount a subdirectory such as repository/deployment/server/synapse-configs, or none)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n got %q\nwant %q", got, want)
	}
}

func TestMaxParallelWarning(t *testing.T) {
	_, warns, err := Parse("w.toml", []byte("[gateway]\ncount = 2\n[update]\nmax_parallel = 2\n[shared_volume]\nmount = \"repository/deployment/server/synapse-configs\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 1 || warns[0].String() != "warning: w.toml:4:1: update.max_parallel: 2 >= count 2: an update replaces every node at once (no node keeps serving)" {
		t.Errorf("warnings %v", warns)
	}
}

func TestConfigStructureConflictsWithCoreKeys(t *testing.T) {
	for doc, want := range map[string]string{
		"[config]\ntransport = 1\n":                                         "c.toml:2:1: config.transport: transport is a table of values gwnomad writes (such as transport.http.properties.port), not a value",
		"[config.server.hostname]\nx = 1\n":                                 "c.toml:2:1: config.server.hostname.x: server.hostname is a value gwnomad writes, not a table",
		"[clustering]\nenabled = true\n[config.clustering]\nmembers = []\n": "c.toml:4:1: config.clustering.members: gwnomad writes clustering.members itself: they are the cluster's gateway nodes registered in Consul",
	} {
		_, _, err := Parse("c.toml", []byte(doc))
		if err == nil || err.Error() != want {
			t.Errorf("%q: err = %v\nwant %s", doc, err, want)
		}
	}
	// Clustering off: [config] may write a [clustering] block of its own.
	if _, _, err := Parse("c.toml", []byte("[config.clustering]\nmembership_scheme = \"k8s\"\n")); err != nil {
		t.Error(err)
	}
}

func TestConfigLeaves(t *testing.T) {
	s, _, err := Parse("c.toml", []byte(`
[config]
"apim.key_manager".service_url = "https://km:9443/services/"
top = 1
[config.apim.throttling]
enable = true
urls = ["a", "b"]
[[config.apim.throttling.url_group]]
type = "loadbalance"
[config.system.parameter]
"org.wso2.CipherTransformation" = "RSA/ECB/OAEPwithSHA1andMGF1Padding"
`))
	if err != nil {
		t.Fatal(err)
	}
	leaves, err := s.ConfigLeaves()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range leaves {
		got = append(got, fmt.Sprintf("%q=%v@%d", l.Path, l.Value, l.Pos.Line))
	}
	want := []string{
		`["apim" "key_manager" "service_url"]=https://km:9443/services/@3`,
		`["apim" "throttling" "enable"]=true@6`,
		`["apim" "throttling" "url_group"]=[map[type:loadbalance]]@8`,
		`["apim" "throttling" "urls"]=[a b]@7`,
		`["system" "parameter" "org.wso2.CipherTransformation"]=RSA/ECB/OAEPwithSHA1andMGF1Padding@11`,
		`["top"]=1@4`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("leaves:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gwnomad.toml")
	if err := os.WriteFile(p, []byte("[gateway]\ncount = 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := Load(p)
	if err == nil || !strings.HasPrefix(err.Error(), p+":2:1: gateway.count:") {
		t.Errorf("err = %v", err)
	}
	if _, _, err := Load(p + ".missing"); err == nil || !strings.Contains(err.Error(), "reading spec") {
		t.Errorf("err = %v", err)
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	s, _, err := Parse("s.toml", []byte("[nomad]\ntoken = \"s3cr3t-nomad\"\n[consul]\ntoken = \"s3cr3t-consul\"\n[config.super_admin]\npassword = \"s3cr3t-admin\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{fmt.Sprintf("%v", s), fmt.Sprintf("%+v", s), fmt.Sprintf("%#v", s), fmt.Sprint(s.Nomad.Token)} {
		if strings.Contains(out, "s3cr3t") {
			t.Errorf("secret printed: %s", out)
		}
	}
	if s.Nomad.Token.Reveal() != "s3cr3t-nomad" {
		t.Errorf("Reveal = %q", s.Nomad.Token.Reveal())
	}
}

func TestClientConfigsEnvOverridesFile(t *testing.T) {
	for _, k := range []string{"NOMAD_ADDR", "NOMAD_TOKEN", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "NOMAD_CACERT", "CONSUL_CACERT"} {
		t.Setenv(k, "")
	}
	s, _, err := Parse("s.toml", []byte(`
[cluster]
region = "eu"
namespace = "gw"
[nomad]
address = "https://nomad.example:4646"
token = "ntok"
ca_cert = "/etc/nomad/ca.pem"
[consul]
address = "https://consul.example:8501"
token = "ctok"
`))
	if err != nil {
		t.Fatal(err)
	}
	n := s.NomadConfig()
	if n.Address != "https://nomad.example:4646" || n.SecretID != "ntok" || n.Region != "eu" || n.Namespace != "gw" || n.TLSConfig.CACert != "/etc/nomad/ca.pem" {
		t.Errorf("nomad config from file: %+v", n)
	}
	c := s.ConsulConfig()
	if c.Address != "consul.example:8501" || c.Scheme != "https" || c.Token != "ctok" {
		t.Errorf("consul config from file: %q %q", c.Address, c.Scheme)
	}

	t.Setenv("NOMAD_ADDR", "http://127.0.0.9:4646")
	t.Setenv("NOMAD_TOKEN", "envtok")
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.9:8500")
	n = s.NomadConfig()
	if n.Address != "http://127.0.0.9:4646" || n.SecretID != "envtok" {
		t.Errorf("env did not override: %q", n.Address)
	}
	if c := s.ConsulConfig(); c.Address != "127.0.0.9:8500" {
		t.Errorf("env did not override consul: %q", c.Address)
	}
}

func TestGoBuiltSpec(t *testing.T) {
	s := &Spec{Gateway: Gateway{Count: 2, Driver: DriverExec, Command: "/bin/gw"}}
	s.Canonicalize()
	warns, err := s.Validate()
	if err != nil {
		t.Fatal(err)
	}
	if s.Gateway.Ports.HTTP != 9763 || !s.Update.AutoRevert || s.Cluster.Name != "apim-gw" {
		t.Errorf("defaults not applied: %+v", s.Gateway.Ports)
	}
	if len(warns) != 1 {
		t.Errorf("warnings %v", warns)
	}
	s.Gateway.Count = 0
	if _, err := s.Validate(); err == nil || err.Error() != "gateway.count: must be at least 1 (got 0)" {
		t.Errorf("err = %v", err)
	}
}
