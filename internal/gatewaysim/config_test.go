package gatewaysim

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// contractTOML is the deployment.toml contract between templates/ and the
// simulator, with extra keys the simulator must ignore.
const contractTOML = `[server]
hostname = "gw.am.wso2.com"
node_ip = "127.0.0.1"
offset = 2
server_role = "gateway-worker"

[super_admin]
username = "admin"
password = "$secret{admin_password}"

[transport.http]
properties.port = 9763
properties.proxyPort = 80
[transport.https]
properties.port = 9443
properties.proxyPort = 443
[transport.passthru_http]
listener.port = 8280
[transport.passthru_https]
listener.port = 8243

[[apim.throttling.url_group]]
traffic_manager_urls = ["tcp://tm1:9611", "tcp://tm2:9611"]
type = "loadbalance"
`

func writeHome(t *testing.T, toml string) string {
	t.Helper()
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, "repository", "conf"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ConfigRelPath), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return home
}

func TestLoadConfigContract(t *testing.T) {
	home := writeHome(t, contractTOML)
	c, err := LoadConfig(home)
	if err != nil {
		t.Fatal(err)
	}
	if c.Hostname != "gw.am.wso2.com" || c.NodeIP != "127.0.0.1" || c.Offset != 2 || c.ServerRole != "gateway-worker" {
		t.Errorf("server section: %+v", c)
	}
	if c.HTTPPort != 9763 || c.HTTPSPort != 9443 || c.PassthruHTTPPort != 8280 || c.PassthruHTTPSPort != 8243 {
		t.Errorf("ports: %+v", c)
	}
	if got := c.BindAddr(c.HTTPSPort); got != "127.0.0.1:9445" {
		t.Errorf("BindAddr(9443) with offset 2 = %q, want 127.0.0.1:9445", got)
	}
	if got := c.BindAddr(0); got != "127.0.0.1:0" {
		t.Errorf("BindAddr(0) = %q: port 0 must stay 0 (any free port)", got)
	}
	if c.File != filepath.Join(home, ConfigRelPath) || c.APIDir() != filepath.Join(home, APIDirRelPath) {
		t.Errorf("paths: file %s, api dir %s", c.File, c.APIDir())
	}
}

func TestLoadConfigDefaults(t *testing.T) {
	c, err := LoadConfig(writeHome(t, "# nothing but a comment\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPPort != DefaultHTTPPort || c.HTTPSPort != DefaultHTTPSPort || c.PassthruHTTPPort != DefaultPassthruHTTPPort ||
		c.PassthruHTTPSPort != DefaultPassthruHTTPSPort || c.Offset != 0 || c.NodeIP != "" {
		t.Errorf("defaults: %+v", c)
	}
	if got := c.BindAddr(c.HTTPPort); got != ":9763" {
		t.Errorf("BindAddr without node_ip = %q, want :9763", got)
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	home := t.TempDir()
	_, err := LoadConfig(home)
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("want *ConfigError, got %T %v", err, err)
	}
	want := filepath.Join(home, ConfigRelPath)
	if ce.File != want || !strings.Contains(err.Error(), want) {
		t.Errorf("error does not name the file %s: %v", want, err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("want errors.Is(err, fs.ErrNotExist): %v", err)
	}
}

func TestLoadConfigSyntaxError(t *testing.T) {
	home := writeHome(t, "[server]\nhostname = \"gw\"\noffset = = 3\n")
	_, err := LoadConfig(home)
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("want *ConfigError, got %T %v", err, err)
	}
	if ce.Line != 3 || ce.Column == 0 {
		t.Errorf("line/column = %d/%d, want line 3: %v", ce.Line, ce.Column, err)
	}
	file := filepath.Join(home, ConfigRelPath)
	if !strings.HasPrefix(err.Error(), file+":3:") {
		t.Errorf("message %q does not start with %s:3:", err.Error(), file)
	}
	if ce.Detail == "" {
		t.Error("no detail excerpt")
	}
}

func TestLoadConfigWrongType(t *testing.T) {
	for _, tc := range []struct {
		name, toml, key string
		line            int
	}{
		{"offset string", "[server]\noffset = \"ten\"\n", "server.offset", 2},
		{"port string", "[transport.http]\nproperties.port = \"9763\"\n", "transport.http.properties.port", 2},
		{"server not a table", "server = 3\n", "server", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig(writeHome(t, tc.toml))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("want *ConfigError, got %T %v", err, err)
			}
			if ce.Line != tc.line {
				t.Errorf("line %d, want %d: %v", ce.Line, tc.line, err)
			}
			if !strings.HasPrefix(ce.Key, tc.key) {
				t.Errorf("key %q, want %q: %v", ce.Key, tc.key, err)
			}
			if !strings.Contains(err.Error(), "deployment.toml") {
				t.Errorf("message does not name the file: %v", err)
			}
		})
	}
}

func TestLoadConfigInvalidValues(t *testing.T) {
	for _, tc := range []struct{ name, toml, key string }{
		{"negative offset", "[server]\noffset = -1\n", "server.offset"},
		{"bad node_ip", "[server]\nnode_ip = \"gw1.local\"\n", "server.node_ip"},
		{"port out of range", "[server]\noffset = 60000\n", "transport.http.properties.port"},
		{"duplicate port", "[transport.http]\nproperties.port = 8280\n", "transport.passthru_http.listener.port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig(writeHome(t, tc.toml))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("want *ConfigError, got %T %v", err, err)
			}
			if ce.Key != tc.key {
				t.Errorf("key %q, want %q: %v", ce.Key, tc.key, err)
			}
		})
	}
}
