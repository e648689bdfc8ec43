// Package gatewaysim is a stand-in for a WSO2 API Manager gateway node. Tests,
// benchmarks and the demo run it (cmd/gatewaysim) as the Nomad task instead of
// the real product: it reads the same deployment.toml, listens on the same
// ports, answers the same health endpoints and serves the Synapse API
// artifacts of the shared directory, reloading them while it runs.
//
// # Layout of a gateway home
//
//	<home>/repository/conf/deployment.toml
//	<home>/repository/deployment/server/synapse-configs/default/api/*.xml
//
// deployment.toml must exist and be valid TOML; LoadConfig refuses it
// otherwise with a *ConfigError naming the file and, for syntax and type
// errors, the line and column. Only these keys are read (every other key is
// ignored, but must parse):
//
//	[server]
//	hostname = "gw.am.wso2.com"  # added to the self-signed certificate
//	node_ip = "127.0.0.1"        # every listener binds it ("" or absent: all interfaces)
//	offset = 0                   # added to every port below
//	server_role = "gateway-worker"
//	[transport.http]
//	properties.port = 9763       # HTTP servlet: GET /services/Version (liveness)
//	[transport.https]
//	properties.port = 9443       # HTTPS servlet: GET /api/am/gateway/v2/server-startup-healthcheck
//	[transport.passthru_http]
//	listener.port = 8280         # API traffic, plain
//	[transport.passthru_https]
//	listener.port = 8243         # API traffic, TLS
//
// A listener binds port + offset. An absent port takes the WSO2 default shown
// above. A port of 0 means "any free port" (the offset is not added): tests
// write 0 everywhere and ask Server.Addrs where the node listens.
//
// # Endpoints
//
// Every answer on every port carries the header X-Gateway-Node: <node>.
//
//   - GET /services/Version (HTTP and HTTPS servlet ports): 200, text
//     "WSO2 API Manager-4.2.0 (gatewaysim)".
//   - GET /api/am/gateway/v2/server-startup-healthcheck (servlet ports; the
//     HTTPS one is the real product's): 503 until the first artifact scan
//     completed, 200 after it; always 503 with Options.FailReadiness.
//   - passthrough ports (plain and TLS, self-signed certificate generated in
//     memory at start): a request to /<context>/<version>/<resource> that
//     matches a deployed API's resource (methods and uri-template) gets 200
//     with a JSON body naming the API, its file, the node, the method, the
//     path and the matched resource and template, e.g.
//     {"api":"PizzaShackAPI","version":"1.0.0","context":"/pizzashack","file":"PizzaShackAPI.xml","node":"gw1","template":"/menu","method":"GET","path":"/pizzashack/1.0.0/menu","resource":"/menu"}.
//     A path no resource matches is 404 with a JSON body; a path that matches
//     but with a method the resource does not allow is 405 with an Allow
//     header. ?size=N pads any of these bodies to exactly N bytes (when N is
//     larger than the body), e.g. ?size=1024 for benchmark answers.
//
// # Artifacts
//
// ParseAPI reads a Synapse <api name=".." context=".." version=".."> with
// <resource methods="GET POST" uri-template=".."> children (url-mapping works
// too; no template matches every path; no methods allows every method).
// Templates: literal segments, {var} (one segment), pre{var}suf, * (one
// segment, or the rest of the path when last: "/path/*" matches /path,
// /path/a and /path/a/b; "/*" matches everything). The query part of a
// template is ignored. A context containing {version} has it replaced by the
// version instead of appending the version; a context with
// version-type="context" that already ends in /<version> is used as it is.
//
// The scanner polls the api directory every Options.ScanInterval (no inotify:
// NFS does not deliver its events reliably), re-parses only files whose
// mtime, size or inode changed, and swaps an immutable routing table in with
// an atomic pointer, so the request path takes no lock. A file that does not
// parse is logged with its name and skipped; the others keep serving. Files
// whose name starts with "." are ignored (write a temp file and rename it for
// atomic updates). A missing directory counts as empty.
//
// # Using it in a test
//
//	home := t.TempDir()
//	os.MkdirAll(filepath.Join(home, "repository/conf"), 0o755)
//	os.WriteFile(filepath.Join(home, gatewaysim.ConfigRelPath), []byte(`
//	[server]
//	node_ip = "127.0.0.1"
//	[transport.http]
//	properties.port = 0
//	[transport.https]
//	properties.port = 0
//	[transport.passthru_http]
//	listener.port = 0
//	[transport.passthru_https]
//	listener.port = 0
//	`), 0o644)
//	dir := filepath.Join(home, gatewaysim.APIDirRelPath)
//	os.MkdirAll(dir, 0o755)
//	os.WriteFile(filepath.Join(dir, gatewaysim.SampleAPIFile), gatewaysim.SampleAPI, 0o644)
//
//	cfg, err := gatewaysim.LoadConfig(home)
//	srv, err := gatewaysim.New(gatewaysim.Options{Config: cfg, Node: "gw1"})
//	ctx, cancel := context.WithCancel(context.Background())
//	done := make(chan error, 1)
//	go func() { done <- srv.Run(ctx) }()
//	defer func() { cancel(); <-done }()
//	// poll https://srv.Addrs().HTTPS + gatewaysim.ReadinessPath until 200, then
//	resp, err := http.Get("http://" + srv.Addrs().PassthruHTTP + "/pizzashack/1.0.0/menu")
//
// # Misbehaving on purpose
//
// Options.FailReadiness keeps readiness at 503; Options.Delay delays every
// passthrough answer; Options.CrashAfter = N answers N passthrough requests
// (404s included), cuts any later one and calls Options.Exit(3) (the command
// passes os.Exit: the process dies without a graceful shutdown); with a nil
// Exit, Run returns ErrCrashed at once instead.
//
// # Stopping
//
// When Run's context ends the listeners stop accepting at once, in-flight
// requests finish (bounded by Options.Grace, after which they are cut) and Run
// returns nil. cmd/gatewaysim cancels on SIGTERM or SIGINT and exits 0.
package gatewaysim
