package gatewaysim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/testenv"
)

// freePortsTOML makes every listener pick a free loopback port.
const freePortsTOML = `[server]
hostname = "gw.am.wso2.com"
node_ip = "127.0.0.1"
offset = 10
[transport.http]
properties.port = 0
[transport.https]
properties.port = 0
[transport.passthru_http]
listener.port = 0
[transport.passthru_https]
listener.port = 0
`

type testNode struct {
	t      *testing.T
	srv    *Server
	apiDir string
	logs   *testenv.SyncBuffer
	cancel context.CancelFunc
	done   chan error
	client *http.Client
}

// startNode runs a simulator in-process on free loopback ports. With gated,
// the first artifact scan waits for openGate.
func startNode(t *testing.T, gated bool, mod func(*Options)) *testNode {
	t.Helper()
	home := writeHome(t, freePortsTOML)
	apiDir := filepath.Join(home, APIDirRelPath)
	if err := os.MkdirAll(apiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(home)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	opts := Options{Config: cfg, Node: "gw-test-1", ScanInterval: 20 * time.Millisecond, Grace: 5 * time.Second, Log: logs}
	if mod != nil {
		mod(&opts)
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if gated {
		srv.scanGate = make(chan struct{})
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &testNode{
		t: t, srv: srv, apiDir: apiDir, logs: logs, cancel: cancel, done: make(chan error, 1),
		client: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
		},
	}
	go func() { n.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
		n.client.CloseIdleConnections()
		if t.Failed() {
			t.Logf("simulator log:\n%s", logs.String())
		}
	})
	return n
}

func (n *testNode) openGate() { close(n.srv.scanGate) }

type answer struct {
	status int
	node   string
	header http.Header
	body   string
	err    error
}

func (n *testNode) do(method, url string) answer {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return answer{err: err}
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, node: resp.Header.Get(NodeHeader), header: resp.Header, body: string(b), err: err}
}

func (n *testNode) api(method, path string) answer {
	return n.do(method, "http://"+n.srv.Addrs().PassthruHTTP+path)
}

func (n *testNode) readiness() answer {
	return n.do("GET", "https://"+n.srv.Addrs().HTTPS+ReadinessPath)
}

// waitFor polls cond every 10ms until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last: %s", timeout, what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (n *testNode) waitStatus(method, path string, status int, timeout time.Duration) answer {
	n.t.Helper()
	var last answer
	waitFor(n.t, timeout, fmt.Sprintf("%s %s -> %d", method, path, status), func() (bool, string) {
		last = n.api(method, path)
		return last.err == nil && last.status == status, fmt.Sprintf("%d %v %s", last.status, last.err, last.body)
	})
	return last
}

func (n *testNode) writeAPI(name string, data []byte) {
	n.t.Helper()
	tmp := filepath.Join(n.apiDir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		n.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(n.apiDir, name)); err != nil {
		n.t.Fatal(err)
	}
}

func TestHealthEndpoints(t *testing.T) {
	n := startNode(t, true, nil)
	a := n.srv.Addrs()
	for _, addr := range []string{a.HTTP, a.HTTPS, a.PassthruHTTP, a.PassthruHTTPS} {
		if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
			t.Fatalf("address %q: want a bound 127.0.0.1 port", addr)
		}
	}

	v := n.do("GET", "http://"+a.HTTP+VersionPath)
	if v.err != nil || v.status != 200 || !strings.Contains(v.body, "WSO2 API Manager-4.2.0") || v.node != "gw-test-1" {
		t.Fatalf("liveness: %+v", v)
	}
	r := n.readiness()
	if r.err != nil || r.status != http.StatusServiceUnavailable || r.node != "gw-test-1" {
		t.Fatalf("readiness before the first scan: %+v", r)
	}
	if n.srv.Ready() {
		t.Fatal("Ready() before the first scan")
	}
	n.openGate()
	waitFor(t, 5*time.Second, "readiness 200", func() (bool, string) {
		r = n.readiness()
		return r.status == 200, fmt.Sprintf("%d %v", r.status, r.err)
	})
	var body struct {
		Status string `json:"status"`
		Node   string `json:"node"`
	}
	if err := json.Unmarshal([]byte(r.body), &body); err != nil || body.Status != "ready" || body.Node != "gw-test-1" {
		t.Errorf("readiness body %q: %v", r.body, err)
	}
	// Unknown servlet path: 404 JSON with the node header.
	u := n.do("GET", "http://"+a.HTTP+"/carbon")
	if u.status != 404 || u.node != "gw-test-1" || !json.Valid([]byte(u.body)) {
		t.Errorf("unknown servlet path: %+v", u)
	}
}

func TestFailReadiness(t *testing.T) {
	n := startNode(t, false, func(o *Options) { o.FailReadiness = true })
	// Wait for the first scan (logged), then readiness must still be 503.
	waitFor(t, 5*time.Second, "first scan", func() (bool, string) {
		return n.srv.ready.Load(), "not scanned"
	})
	r := n.readiness()
	if r.err != nil || r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "fail-readiness") {
		t.Fatalf("readiness with -fail-readiness: %+v", r)
	}
	v := n.do("GET", "http://"+n.srv.Addrs().HTTP+VersionPath)
	if v.status != 200 {
		t.Errorf("liveness must stay 200 with -fail-readiness: %+v", v)
	}
}

func TestServeAPIs(t *testing.T) {
	n := startNode(t, false, nil)
	n.writeAPI(SampleAPIFile, SampleAPI)
	ok := n.waitStatus("GET", "/pizzashack/1.0.0/menu", 200, 5*time.Second)
	var body map[string]string
	if err := json.Unmarshal([]byte(ok.body), &body); err != nil {
		t.Fatalf("body %q: %v", ok.body, err)
	}
	if body["api"] != "PizzaShackAPI" || body["node"] != "gw-test-1" || body["path"] != "/pizzashack/1.0.0/menu" ||
		body["template"] != "/menu" || body["file"] != SampleAPIFile || ok.node != "gw-test-1" {
		t.Errorf("answer: %+v %q", body, ok.node)
	}

	// TLS passthrough port, path parameter.
	tlsAns := n.do("GET", "https://"+n.srv.Addrs().PassthruHTTPS+"/pizzashack/1.0.0/order/42")
	if tlsAns.err != nil || tlsAns.status != 200 || !strings.Contains(tlsAns.body, `"template":"/order/{orderId}"`) || tlsAns.node != "gw-test-1" {
		t.Errorf("TLS passthrough: %+v", tlsAns)
	}
	if p := n.api("POST", "/pizzashack/1.0.0/order"); p.status != 200 {
		t.Errorf("POST /order: %+v", p)
	}
	nf := n.api("GET", "/pizzashack/9.9.9/menu")
	if nf.status != 404 || nf.node != "gw-test-1" || !json.Valid([]byte(nf.body)) || nf.header.Get("Content-Type") != "application/json" {
		t.Errorf("404: %+v", nf)
	}
	na := n.api("DELETE", "/pizzashack/1.0.0/menu")
	if na.status != 405 || na.header.Get("Allow") != "GET" || na.node != "gw-test-1" || !json.Valid([]byte(na.body)) {
		t.Errorf("405: %+v", na)
	}
	for _, size := range []int{1024, 100000} {
		p := n.api("GET", fmt.Sprintf("/pizzashack/1.0.0/menu?size=%d", size))
		if p.status != 200 || len(p.body) != size || !json.Valid([]byte(p.body)) {
			t.Errorf("?size=%d: status %d, %d bytes", size, p.status, len(p.body))
		}
	}
	if p := n.api("GET", "/nothing?size=1024"); p.status != 404 || len(p.body) != 1024 {
		t.Errorf("404 ?size=1024: status %d, %d bytes", p.status, len(p.body))
	}
}

func TestReload(t *testing.T) {
	n := startNode(t, false, nil)
	waitFor(t, 5*time.Second, "first scan", func() (bool, string) { return n.srv.Ready(), "not ready" })
	if a := n.api("GET", "/pizzashack/1.0.0/menu"); a.status != 404 {
		t.Fatalf("before deploy: %+v", a)
	}

	// Add: served within a second.
	start := time.Now()
	n.writeAPI(SampleAPIFile, SampleAPI)
	n.waitStatus("GET", "/pizzashack/1.0.0/menu", 200, reloadDeadline)
	t.Logf("deployed after %s", time.Since(start))

	// A bad file is skipped (logged by name); the others keep serving.
	n.writeAPI("Broken.xml", []byte(`<api name="Broken" context="/broken" version="1"><resource`))
	waitFor(t, reloadDeadline, "broken file logged", func() (bool, string) {
		return strings.Contains(n.logs.String(), "Broken.xml: skipped"), "not logged"
	})
	if a := n.api("GET", "/pizzashack/1.0.0/menu"); a.status != 200 {
		t.Errorf("sample after a broken file: %+v", a)
	}
	// Fix the broken file: served.
	n.writeAPI("Broken.xml", apiXML("Broken", "/broken", "1", "", "GET /*"))
	n.waitStatus("GET", "/broken/1/x", 200, reloadDeadline)

	// Change a file in place (same name): the new content is served.
	if err := os.WriteFile(filepath.Join(n.apiDir, SampleAPIFile),
		bytes.ReplaceAll(SampleAPI, []byte(`version="1.0.0"`), []byte(`version="2.0.0"`)), 0o644); err != nil {
		t.Fatal(err)
	}
	n.waitStatus("GET", "/pizzashack/2.0.0/menu", 200, reloadDeadline)
	n.waitStatus("GET", "/pizzashack/1.0.0/menu", 404, reloadDeadline)

	// Remove: 404 within a second.
	if err := os.Remove(filepath.Join(n.apiDir, SampleAPIFile)); err != nil {
		t.Fatal(err)
	}
	n.waitStatus("GET", "/pizzashack/2.0.0/menu", 404, reloadDeadline)
	if a := n.api("GET", "/broken/1/x"); a.status != 200 {
		t.Errorf("other API after a removal: %+v", a)
	}
	logs := n.logs.String()
	for _, want := range []string{"PizzaShackAPI.xml: deployed API PizzaShackAPI at /pizzashack/1.0.0", "deployed API PizzaShackAPI at /pizzashack/2.0.0", "PizzaShackAPI.xml: removed: undeployed"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

func TestReloadDirectoryCreatedLater(t *testing.T) {
	n := startNode(t, false, nil)
	if err := os.RemoveAll(n.apiDir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "missing directory logged", func() (bool, string) {
		return strings.Contains(n.logs.String(), "does not exist"), "not logged"
	})
	if err := os.MkdirAll(n.apiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	n.writeAPI(SampleAPIFile, SampleAPI)
	n.waitStatus("GET", "/pizzashack/1.0.0/menu", 200, reloadDeadline)
}

func TestGracefulShutdown(t *testing.T) {
	n := startNode(t, false, func(o *Options) { o.Delay = 400 * time.Millisecond })
	n.writeAPI(SampleAPIFile, SampleAPI)
	waitFor(t, 5*time.Second, "deployed", func() (bool, string) {
		return n.srv.tbl.Load().count == 1, "not deployed"
	})
	inflight := make(chan answer, 1)
	go func() { inflight <- n.api("GET", "/pizzashack/1.0.0/menu") }()
	waitFor(t, 5*time.Second, "request in flight", func() (bool, string) {
		return n.srv.requests.Load() == 1, "no request yet"
	})
	n.cancel()
	select {
	case a := <-inflight:
		if a.err != nil || a.status != 200 {
			t.Errorf("in-flight request during shutdown: %+v", a)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight request never completed")
	}
	select {
	case err := <-n.done:
		if err != nil {
			t.Errorf("Run after graceful shutdown: %v", err)
		}
		n.done <- err // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if _, err := net.DialTimeout("tcp", n.srv.Addrs().PassthruHTTP, time.Second); err == nil {
		t.Error("still accepting connections after shutdown")
	}
}

func TestGraceBounded(t *testing.T) {
	n := startNode(t, false, func(o *Options) { o.Delay = time.Minute; o.Grace = 100 * time.Millisecond })
	go n.api("GET", "/x")
	waitFor(t, 5*time.Second, "request in flight", func() (bool, string) {
		return n.srv.requests.Load() == 1, "no request yet"
	})
	n.cancel()
	select {
	case err := <-n.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		n.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Run not bounded by the grace period")
	}
}

func TestCrashAfterInProcess(t *testing.T) {
	n := startNode(t, false, func(o *Options) { o.CrashAfter = 2 })
	n.writeAPI(SampleAPIFile, SampleAPI)
	waitFor(t, 5*time.Second, "deployed", func() (bool, string) {
		return n.srv.tbl.Load().count == 1, "not deployed"
	})
	for i := 1; i <= 2; i++ {
		if a := n.api("GET", "/pizzashack/1.0.0/menu"); a.err != nil || a.status != 200 {
			t.Fatalf("request %d before the crash: %+v", i, a)
		}
	}
	select {
	case err := <-n.done:
		if !errors.Is(err, ErrCrashed) {
			t.Errorf("Run = %v, want ErrCrashed", err)
		}
		n.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after crash-after")
	}
}

func TestCrashAfterExitFunc(t *testing.T) {
	codes := make(chan int, 4)
	n := startNode(t, false, func(o *Options) {
		o.CrashAfter = 3
		o.Exit = func(code int) { codes <- code }
	})
	for i := 1; i <= 3; i++ {
		if a := n.api("GET", "/x"); a.err != nil || a.status != 404 {
			t.Fatalf("request %d: %+v", i, a)
		}
	}
	select {
	case c := <-codes:
		if c != CrashExitCode {
			t.Errorf("exit code %d, want %d", c, CrashExitCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Exit not called after 3 requests")
	}
	if a := n.api("GET", "/x"); a.err == nil {
		t.Errorf("request after the crash answered: %+v", a)
	}
	if len(codes) != 0 {
		t.Error("Exit called more than once")
	}
}

// TestCrashAfterSubprocess runs the simulator in a child process (this test
// binary) with Exit = os.Exit and checks it dies with code 3.
func TestCrashAfterSubprocess(t *testing.T) {
	if testing.Short() {
		t.Skip("subprocess")
	}
	home := writeHome(t, freePortsTOML)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$")
	cmd.Env = append(os.Environ(), "GATEWAYSIM_CRASH_CHILD_HOME="+home)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testenv.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrLine, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child gave no address: %v\n%s", err, stderr.String())
	}
	addr := strings.TrimSpace(strings.TrimPrefix(addrLine, "ADDR "))
	client := &http.Client{Timeout: 5 * time.Second}
	for i := 1; i <= 2; i++ {
		resp, err := client.Get("http://" + addr + "/x")
		if err != nil {
			t.Fatalf("request %d: %v\n%s", i, err, stderr.String())
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	client.CloseIdleConnections()
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != CrashExitCode {
		t.Fatalf("child exit: %v, want code %d\n%s", err, CrashExitCode, stderr.String())
	}
	if !strings.Contains(stderr.String(), "crash-after 2 reached") {
		t.Errorf("crash not logged:\n%s", stderr.String())
	}
}

// TestCrashChild is the child of TestCrashAfterSubprocess; it does nothing
// in a normal run.
func TestCrashChild(t *testing.T) {
	home := os.Getenv("GATEWAYSIM_CRASH_CHILD_HOME")
	if home == "" {
		t.Skip("only run as the child of TestCrashAfterSubprocess")
	}
	cfg, err := LoadConfig(home)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{Config: cfg, Node: "child", CrashAfter: 2, Exit: os.Exit, Log: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("ADDR %s\n", srv.Addrs().PassthruHTTP)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv.Run(ctx)
	t.Fatal("child was not crashed")
}

func TestNewErrors(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("New without Config succeeded")
	}
	cfg, err := LoadConfig(writeHome(t, freePortsTOML))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Config: cfg, Delay: -1}); err == nil {
		t.Error("negative delay accepted")
	}
	// A port already taken: New fails naming the listener.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := *cfg
	taken.Offset = 0
	taken.HTTPSPort = ln.Addr().(*net.TCPAddr).Port
	_, err = New(Options{Config: &taken, Node: "x", Log: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "listen https") {
		t.Errorf("taken port: %v", err)
	}
	s, err := New(Options{Config: cfg, Node: "x", Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// reloadDeadline bounds how long a test waits for a file change to take
// effect. The scan interval in tests is 20ms, so changes normally show within
// tens of milliseconds; the margin is for a loaded 2-core CI machine.
const reloadDeadline = 3 * time.Second

// TestUnreadableArtifactsFailReadiness: a node that cannot read its shared
// directory (a stale NFS mount) must leave the load balancer: readiness fails
// until the directory is readable again. Root ignores permission bits, so the
// directory is replaced by a file (ReadDir fails with ENOTDIR).
func TestUnreadableArtifactsFailReadiness(t *testing.T) {
	n := startNode(t, false, nil)
	n.writeAPI(SampleAPIFile, SampleAPI)
	n.waitStatus("GET", "/pizzashack/1.0.0/menu", 200, 5*time.Second)
	if r := n.readiness(); r.status != http.StatusOK {
		t.Fatalf("readiness before: %+v", r)
	}
	dir := n.srv.cfg.APIDir()
	moved := dir + ".moved"
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "readiness 503 on an unreadable directory", func() (bool, string) {
		r := n.readiness()
		return r.status == http.StatusServiceUnavailable && strings.Contains(r.body, "unreadable"), fmt.Sprintf("%+v", r)
	})
	if a := n.api("GET", "/pizzashack/1.0.0/menu"); a.status != 200 {
		t.Errorf("deployed APIs must keep serving in-flight clients: %+v", a)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(moved, dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "readiness 200 again", func() (bool, string) {
		r := n.readiness()
		return r.status == http.StatusOK, fmt.Sprintf("%+v", r)
	})
}
