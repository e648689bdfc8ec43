package templates

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gwnomad/gwnomad/spec"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const fullSpec = `
[cluster]
name = "apim-gw"
[gateway]
hostname = "gw.am.wso2.com"
offset = 10
[clustering]
enabled = true
[config]
"apim.key_manager".service_url = "https://km:9443/services/"
[config.super_admin]
username = "admin"
password = "admin-pw"
create_admin_account = true
[config.apim.throttling]
throttle_decision_endpoints = ["tcp://tm1:5672", "tcp://tm2:5672"]
[[config.apim.throttling.url_group]]
traffic_manager_urls = ["tcp://tm1:9611"]
type = "loadbalance"
[config.keystore.tls]
file_name = "wso2carbon.jks"
password = "$secret{keystore_password}"
alias = "wso2carbon"
key_password = "kp"
[config.transport.https.sslHostConfig.properties]
ciphers = "TLS_AES_128_GCM_SHA256"
[config.system.parameter]
"org.wso2.CipherTransformation" = "RSA/ECB/OAEPwithSHA1andMGF1Padding"
[config.server]
server_role = "gateway-worker-eu"
`

func parse(t *testing.T, doc string) *spec.Spec {
	t.Helper()
	s, _, err := spec.Parse("test.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test ./templates -run %s -update)", err, t.Name())
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from the golden file (go test ./templates -update to accept):\n--- got\n%s\n--- want\n%s", p, got, want)
	}
}

func TestTemplateGolden(t *testing.T) {
	for _, c := range []struct{ name, doc string }{
		{"minimal", ""},
		{"full", fullSpec},
	} {
		t.Run(c.name, func(t *testing.T) {
			text, err := Template(parse(t, c.doc))
			if err != nil {
				t.Fatal(err)
			}
			golden(t, c.name+".ctmpl", []byte(text))
		})
	}
}

func TestKV(t *testing.T) {
	s := parse(t, fullSpec)
	kv, err := KV(s)
	if err != nil {
		t.Fatal(err)
	}
	prefix, err := KVPrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSuffix(strings.TrimPrefix(prefix, "gwnomad/apim-gw/config/"), "/")
	if !IsConfigID(id) {
		t.Fatalf("KVPrefix %q: not gwnomad/apim-gw/config/<id>/", prefix)
	}
	want := map[string]string{
		"apim/key_manager/service_url":                   `"https://km:9443/services/"`,
		"super_admin/create_admin_account":               `true`,
		"apim/throttling/throttle_decision_endpoints":    `["tcp://tm1:5672", "tcp://tm2:5672"]`,
		"apim/throttling/url_group":                      `[{ traffic_manager_urls = ["tcp://tm1:9611"], type = "loadbalance" }]`,
		"system/parameter/org.wso2.CipherTransformation": `"RSA/ECB/OAEPwithSHA1andMGF1Padding"`,
		"keystore/tls/password":                          `"$secret{keystore_password}"`,
	}
	for k, v := range want {
		if string(kv[prefix+k]) != v {
			t.Errorf("KV[%s] = %s, want %s", prefix+k, kv[prefix+k], v)
		}
	}
	if len(kv) != 13 {
		t.Errorf("len(KV) = %d, want 13", len(kv))
	}

	// Another value is another folder; the same values, the same folder.
	other := parse(t, strings.Replace(fullSpec, "https://km:9443/services/", "https://km2:9443/services/", 1))
	if p2, _ := KVPrefix(other); p2 == prefix {
		t.Errorf("a changed value keeps the folder %s", prefix)
	}
	if p3, _ := KVPrefix(parse(t, fullSpec)); p3 != prefix {
		t.Errorf("the same values give %s and %s", prefix, p3)
	}
}

func TestRenderOffline(t *testing.T) {
	s := parse(t, fullSpec)
	r, err := Render(context.Background(), s, Options{NodeIP: "10.1.2.3", Ports: map[string]int{"http": 20010, "clustering": 4010}})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "full.offline.toml", r.Output)
	for key, want := range map[string]any{
		"server.node_ip":                                   "10.1.2.3",
		"server.offset":                                    int64(10),
		"server.server_role":                               "gateway-worker-eu",
		"transport.http.properties.port":                   int64(20000), // allocated 20010 - offset 10
		"transport.https.properties.port":                  int64(9443),  // static: 9453 - 10
		"transport.https.sslHostConfig.properties.ciphers": "TLS_AES_128_GCM_SHA256",
		"clustering.local_member_port":                     "4000",
		"system.parameter.org.wso2.CipherTransformation":   "RSA/ECB/OAEPwithSHA1andMGF1Padding",
	} {
		got, ok := lookup(r.Doc, strings.Split(key, "."))
		if !ok || got != want {
			t.Errorf("%s = %#v, want %#v", key, got, want)
		}
	}
	red := string(Redact(r.Output))
	for _, secret := range []string{"admin-pw", "keystore_password", `"kp"`} {
		if strings.Contains(red, secret) {
			t.Errorf("redacted output shows %s:\n%s", secret, red)
		}
	}
	for _, kept := range []string{`username = "admin"`, `alias = "wso2carbon"`, `service_url = "https://km:9443/services/"`} {
		if !strings.Contains(red, kept) {
			t.Errorf("redacted output lost %s:\n%s", kept, red)
		}
	}
}

func TestRenderDefaultSpecOffline(t *testing.T) {
	s, _, err := spec.Default()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Render(context.Background(), s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "default.offline.toml", r.Output)
}

func TestRedact(t *testing.T) {
	in := strings.Join([]string{
		`[super_admin]`,
		`username = "admin"`,
		`password = "pw"`,
		`"admin.password" = "pw2"`,
		`token = 'x'`,
		`consumer_key = "ck"`,
		`key_manager = "km"`,
		`keystore = "ks"`,
		`ref = "$secret{admin}"`,
		`inline = { user = "u", password = "p3" }`,
		`list = ["a", "$secret{b}"]`,
		`# password = "in a comment"`,
		``,
	}, "\n")
	want := strings.Join([]string{
		`[super_admin]`,
		`username = "admin"`,
		`password = "<redacted>"`,
		`"admin.password" = "<redacted>"`,
		`token = "<redacted>"`,
		`consumer_key = "<redacted>"`,
		`key_manager = "km"`,
		`keystore = "ks"`,
		`ref = "<redacted>"`,
		`inline = { user = "u", password = "<redacted>" }`,
		`list = ["a", "<redacted>"]`,
		`# password = "in a comment"`,
		``,
	}, "\n")
	if got := string(Redact([]byte(in))); got != want {
		t.Errorf("Redact:\n%s\nwant:\n%s", got, want)
	}
}

func TestChecksumFollowsConfig(t *testing.T) {
	a, err := Checksum(parse(t, "[config]\nx = 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Checksum(parse(t, "[config]\nx = 2\n"))
	c, _ := Checksum(parse(t, "[config]\nx = 1\n"))
	if a == b || a != c || len(a) != 64 {
		t.Errorf("checksums %s %s %s", a, b, c)
	}
}

func TestCheckNamesMissingKeys(t *testing.T) {
	s := parse(t, "[config]\nx = 1\n")
	_, err := Check(s, []byte("[server]\nhostname = \"gw.am.wso2.com\"\n"))
	if err == nil || !strings.Contains(err.Error(), "lacks server.node_ip, server.offset,") || !strings.HasSuffix(err.Error(), ", x") {
		t.Errorf("err = %v", err)
	}
	_, err = Check(s, []byte("[server\n"))
	if err == nil || !strings.Contains(err.Error(), "not valid TOML at 1:") {
		t.Errorf("err = %v", err)
	}
}

func TestEncodeValue(t *testing.T) {
	for _, c := range []struct {
		v    any
		want string
	}{
		{"a\"b\\c\nd\x01", `"a\"b\\c\nd\u0001"`},
		{int64(-3), "-3"},
		{1.5, "1.5"},
		{float64(2), "2.0"},
		{[]any{}, "[]"},
		{map[string]any{}, "{}"},
		{map[string]any{"a.b": true}, `{ "a.b" = true }`},
	} {
		got, err := EncodeValue(c.v)
		if err != nil || string(got) != c.want {
			t.Errorf("EncodeValue(%#v) = %s, %v; want %s", c.v, got, err, c.want)
		}
	}
}
