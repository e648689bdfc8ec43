package gatewaysim

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Paths relative to the gateway home (WSO2 layout).
const (
	// ConfigRelPath is where deployment.toml lives under the home directory.
	ConfigRelPath = "repository/conf/deployment.toml"
	// APIDirRelPath is the directory of the Synapse API artifacts under the
	// home directory.
	APIDirRelPath = "repository/deployment/server/synapse-configs/default/api"
)

// Default ports of a WSO2 API-M node (offset 0), used when deployment.toml
// does not set them.
const (
	DefaultHTTPPort          = 9763
	DefaultHTTPSPort         = 9443
	DefaultPassthruHTTPPort  = 8280
	DefaultPassthruHTTPSPort = 8243
)

// Config is what the simulator takes from <home>/repository/conf/deployment.toml.
//
// Ports are the values written in the file; the port a listener binds is
// port + Offset (WSO2 semantics), except that a port of 0 means "pick a free
// port" and is bound as 0 whatever the offset (tests use this).
type Config struct {
	Home       string // gateway home directory (absolute)
	File       string // the deployment.toml that was read
	Hostname   string // [server] hostname
	NodeIP     string // [server] node_ip: every listener binds it ("" = all interfaces)
	Offset     int    // [server] offset
	ServerRole string // [server] server_role

	HTTPPort          int // [transport.http] properties.port (HTTP servlet)
	HTTPSPort         int // [transport.https] properties.port (HTTPS servlet)
	PassthruHTTPPort  int // [transport.passthru_http] listener.port
	PassthruHTTPSPort int // [transport.passthru_https] listener.port
}

// APIDir is the directory scanned for Synapse API artifacts.
func (c *Config) APIDir() string { return filepath.Join(c.Home, APIDirRelPath) }

// BindAddr is the host:port a listener for the given configured port binds:
// NodeIP and port+Offset (port 0 stays 0: any free port).
func (c *Config) BindAddr(port int) string {
	if port != 0 {
		port += c.Offset
	}
	return net.JoinHostPort(c.NodeIP, strconv.Itoa(port))
}

// ConfigError is returned by LoadConfig when deployment.toml is missing or
// invalid. Error() is a single line "file[:line:column]: message"; Detail, when
// set, is a multi-line excerpt of the file pointing at the error.
type ConfigError struct {
	File   string
	Line   int    // 1-based; 0 when unknown
	Column int    // 1-based; 0 when unknown
	Key    string // dotted TOML key, when known
	Err    error
	Detail string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	b.WriteString(": ")
	if e.Key != "" {
		fmt.Fprintf(&b, "key %s: ", e.Key)
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *ConfigError) Unwrap() error { return e.Err }

// tomlDoc mirrors the keys of deployment.toml that the simulator reads; every
// other key is ignored (but the whole file must be valid TOML).
type tomlDoc struct {
	Server struct {
		Hostname   string `toml:"hostname"`
		NodeIP     string `toml:"node_ip"`
		Offset     *int   `toml:"offset"`
		ServerRole string `toml:"server_role"`
	} `toml:"server"`
	Transport struct {
		HTTP struct {
			Properties struct {
				Port *int `toml:"port"`
			} `toml:"properties"`
		} `toml:"http"`
		HTTPS struct {
			Properties struct {
				Port *int `toml:"port"`
			} `toml:"properties"`
		} `toml:"https"`
		PassthruHTTP struct {
			Listener struct {
				Port *int `toml:"port"`
			} `toml:"listener"`
		} `toml:"passthru_http"`
		PassthruHTTPS struct {
			Listener struct {
				Port *int `toml:"port"`
			} `toml:"listener"`
		} `toml:"passthru_https"`
	} `toml:"transport"`
}

// LoadConfig reads <home>/repository/conf/deployment.toml. It returns a
// *ConfigError naming the file (and the line and column of a syntax or type
// error) when the file is missing or invalid.
func LoadConfig(home string) (*Config, error) {
	if home == "" {
		home = "."
	}
	abs, err := filepath.Abs(home)
	if err != nil {
		return nil, fmt.Errorf("resolve home %q: %w", home, err)
	}
	file := filepath.Join(abs, ConfigRelPath)
	data, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = fmt.Errorf("missing: %w (is -home the gateway home directory?)", os.ErrNotExist)
		} else {
			err = fmt.Errorf("read: %w", err)
		}
		return nil, &ConfigError{File: file, Err: err}
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			ce.File = file
		}
		return nil, err
	}
	cfg.Home = abs
	cfg.File = file
	return cfg, nil
}

// ParseConfig parses the content of a deployment.toml. Errors are
// *ConfigError with an empty File.
func ParseConfig(data []byte) (*Config, error) {
	var doc tomlDoc
	if err := toml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		ce := &ConfigError{Err: err}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			ce.Line, ce.Column = de.Position()
			ce.Key = strings.Join(de.Key(), ".")
			ce.Detail = de.String()
		}
		return nil, ce
	}
	c := &Config{
		Hostname:          doc.Server.Hostname,
		NodeIP:            doc.Server.NodeIP,
		ServerRole:        doc.Server.ServerRole,
		HTTPPort:          intOr(doc.Transport.HTTP.Properties.Port, DefaultHTTPPort),
		HTTPSPort:         intOr(doc.Transport.HTTPS.Properties.Port, DefaultHTTPSPort),
		PassthruHTTPPort:  intOr(doc.Transport.PassthruHTTP.Listener.Port, DefaultPassthruHTTPPort),
		PassthruHTTPSPort: intOr(doc.Transport.PassthruHTTPS.Listener.Port, DefaultPassthruHTTPSPort),
		Offset:            intOr(doc.Server.Offset, 0),
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func intOr(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

func (c *Config) validate() error {
	if c.Offset < 0 || c.Offset > 65535 {
		return &ConfigError{Key: "server.offset", Err: fmt.Errorf("offset %d out of range 0..65535", c.Offset)}
	}
	if c.NodeIP != "" && net.ParseIP(c.NodeIP) == nil {
		return &ConfigError{Key: "server.node_ip", Err: fmt.Errorf("%q is not an IP address", c.NodeIP)}
	}
	seen := map[int]string{}
	for _, p := range []struct {
		key  string
		port int
	}{
		{"transport.http.properties.port", c.HTTPPort},
		{"transport.https.properties.port", c.HTTPSPort},
		{"transport.passthru_http.listener.port", c.PassthruHTTPPort},
		{"transport.passthru_https.listener.port", c.PassthruHTTPSPort},
	} {
		if p.port == 0 {
			continue
		}
		eff := p.port + c.Offset
		if p.port < 0 || eff > 65535 {
			return &ConfigError{Key: p.key, Err: fmt.Errorf("port %d + offset %d out of range 1..65535", p.port, c.Offset)}
		}
		if other, ok := seen[eff]; ok {
			return &ConfigError{Key: p.key, Err: fmt.Errorf("port %d (with offset) already used by %s", eff, other)}
		}
		seen[eff] = p.key
	}
	return nil
}
