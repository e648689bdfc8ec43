package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
)

// The real gwnomad binary (bin/, built by make build): an upgrade execs the
// program file, which in `go test` would be the test binary.
func gwnomadBin(t *testing.T) string {
	t.Helper()
	dir, err := devstack.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "gwnomad")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%v (make build makes it)", err)
	}
	return bin
}

// registerBackend serves name at a new loopback server registered in
// Consul as service svc (TTL check, passing).
func registerBackend(t *testing.T, c *consulapi.Client, svc, name string) {
	t.Helper()
	s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { s.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	if err := c.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: name, Name: svc, Address: "127.0.0.1", Port: port,
		Check: &consulapi.AgentServiceCheck{TTL: "5m", Status: consulapi.HealthPassing},
	}); err != nil {
		t.Fatal(err)
	}
}

// notifySocket listens where a process started with NOTIFY_SOCKET=path
// sends its sd_notify states; they arrive on the channel.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return path, ch
}

func waitState(t *testing.T, ch <-chan string, want string) {
	t.Helper()
	select {
	case got := <-ch:
		if got != want {
			t.Fatalf("sd_notify state %q, want %q", got, want)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no sd_notify state (want %q)", want)
	}
}

// load sends GETs to base over keep-alive connections, one client each
// transport, until stopped, and counts the answers that are not 200.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       context.CancelFunc
	wg         sync.WaitGroup
}

func startLoad(base, host string, transports ...*http.Transport) *load {
	ctx, cancel := context.WithCancel(context.Background())
	ld := &load{stop: cancel}
	if len(transports) == 0 {
		for range 4 {
			transports = append(transports, &http.Transport{MaxIdleConnsPerHost: 1})
		}
	}
	for _, tr := range transports {
		cl := &http.Client{Timeout: 10 * time.Second, Transport: tr}
		ld.wg.Go(func() {
			defer cl.CloseIdleConnections()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", base+"/", nil)
				req.Host = host
				resp, err := cl.Do(req)
				if ctx.Err() != nil {
					return
				}
				var body []byte
				if err == nil {
					body, _ = io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("%d %s", resp.StatusCode, body)
					}
				}
				if err != nil {
					ld.failed.Add(1)
					ld.mu.Lock()
					if len(ld.errs) < 10 {
						ld.errs = append(ld.errs, err.Error())
					}
					ld.mu.Unlock()
					continue
				}
				ld.ok.Add(1)
			}
		})
	}
	return ld
}

func (ld *load) waitOK(t *testing.T, n int64, what string) {
	t.Helper()
	testenv.WaitFor(t, 60*time.Second, what, func() error {
		if got := ld.ok.Load(); got < n {
			return fmt.Errorf("%d answers so far, %d failed", got, ld.failed.Load())
		}
		return nil
	})
}

func (ld *load) finish(t *testing.T) {
	t.Helper()
	ld.stop()
	ld.wg.Wait()
	t.Logf("requests: %d answered, %d failed", ld.ok.Load(), ld.failed.Load())
	if ld.failed.Load() > 0 {
		t.Errorf("%d requests failed, first ones: %q", ld.failed.Load(), ld.errs)
	}
}

// lbProc is a `gwnomad lb` process of the real binary. Its log (stderr)
// is a file: the new process of an upgrade inherits it and outlives the old
// one, so a pipe (exec's copy of it to a buffer) would not end with the old.
type lbProc struct {
	cmd     *exec.Cmd
	logPath string
	exited  chan error
}

// startLBProc starts cmd with its stderr in a file, in a process group of
// its own; at the end of the test it kills the group (with any process an
// upgrade started) and prints the log if the test failed.
func startLBProc(t *testing.T, cmd *exec.Cmd) *lbProc {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &lbProc{cmd: cmd, logPath: f.Name(), exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("balancer log:\n%s", p.log())
		}
	})
	return p
}

func (p *lbProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// started waits for the balancer to start and returns the address of its
// listener (http or https).
func (p *lbProc) started(t *testing.T, listener string) string {
	t.Helper()
	re := regexp.MustCompile(`msg="load balancer started" .*\b` + listener + `=(\S+)`)
	addr := ""
	testenv.WaitFor(t, 30*time.Second, "the balancer to start", func() error {
		if m := re.FindStringSubmatch(p.log()); m != nil {
			addr = m[1]
			return nil
		}
		return errors.New("not started")
	})
	return addr
}

// waitLog waits until the log holds s.
func (p *lbProc) waitLog(t *testing.T, timeout time.Duration, s string) {
	t.Helper()
	testenv.WaitFor(t, timeout, fmt.Sprintf("%q in the log", s), func() error {
		if !strings.Contains(p.log(), s) {
			return errors.New("not yet")
		}
		return nil
	})
}

// exitedOK waits for the process to exit 0.
func (p *lbProc) exitedOK(t *testing.T, what string) {
	t.Helper()
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("%s exited with %v", what, err)
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("%s did not exit", what)
	}
}

// plainLBConfig writes an lb.toml with an HTTP listener at httpAddr, one
// route x.test to service svc and no registration of its own.
func plainLBConfig(t *testing.T, httpAddr, consulAddr string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lb.toml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(`[listen]
http = %q
admin = "127.0.0.1:0"
[consul]
address = %q
register = false
[[routes]]
hosts = ["x.test"]
service = "svc"
port = "service"
`, httpAddr, consulAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// alive tells whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] != 'Z'
}

// SIGUSR2 under load over HTTPS (HTTP/1.1 and HTTP/2 clients), with the
// real binary and real Consul: first with a configuration that the new
// process refuses (the old one serves on), then with a good one (the new
// process takes the sockets, the old one exits 0). Not one request fails,
// the balancer's Consul registration stays, and systemd would hear the new
// main pid.
func TestLBUpgradeUnderLoad(t *testing.T) {
	bin := gwnomadBin(t)
	st := testenv.Consul(t)
	c := st.ConsulAPI()
	registerBackend(t, c, "svc", "backend-1")
	registerBackend(t, c, "svc", "backend-2")
	dir := t.TempDir()
	certFile, keyFile, pool := testenv.CertFiles(t, dir, "x.test")
	path := filepath.Join(dir, "lb.toml")
	good := fmt.Sprintf(`[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
admin = "127.0.0.1:0"
[tls]
mode = "files"
cert_file = %q
key_file = %q
[consul]
address = %q
check_interval = "1s"
[[routes]]
hosts = ["x.test"]
service = "svc"
port = "service"
`, certFile, keyFile, st.Consul.HTTPAddr)
	if err := os.WriteFile(path, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	notify, states := notifySocket(t)
	pidFile := filepath.Join(dir, "lb.pid")
	cmd := exec.Command(bin, "lb", "--config", path, "--pid-file", pidFile)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	newPid := 0
	proc := startLBProc(t, cmd)
	addr := proc.started(t, "https")
	waitState(t, states, "READY=1")
	wantPidFile(t, pidFile, cmd.Process.Pid)
	var transports []*http.Transport
	for _, h2 := range []bool{false, false, true, true} {
		transports = append(transports, &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "x.test"}, ForceAttemptHTTP2: h2, MaxIdleConnsPerHost: 1,
		})
	}
	ld := startLoad("https://"+addr, "x.test", transports...)
	ld.waitOK(t, 200, "answers before the upgrades")

	// A configuration the new process refuses: it exits, this one serves on.
	if err := os.WriteFile(path, []byte(good+"policy = \"fastest\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	proc.waitLog(t, 90*time.Second, "upgrade failed; this process serves on")
	if !strings.Contains(proc.log(), "routes[0].policy") {
		t.Errorf("the new process's configuration error is not in the log")
	}
	select {
	case err := <-proc.exited:
		t.Fatalf("the balancer exited after a failed upgrade: %v", err)
	default:
	}
	n := ld.ok.Load()
	ld.waitOK(t, n+200, "answers after the failed upgrade")

	// The good configuration again: the new process takes over.
	if err := os.WriteFile(path, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	proc.exitedOK(t, "the old balancer")
	m := regexp.MustCompile(`new_pid=(\d+)`).FindStringSubmatch(proc.log())
	if m == nil {
		t.Fatalf("no new_pid in the log")
	}
	newPid, _ = strconv.Atoi(m[1])
	waitState(t, states, fmt.Sprintf("MAINPID=%d\nREADY=1", newPid))
	if !alive(newPid) {
		t.Fatalf("the new process %d does not run", newPid)
	}
	wantPidFile(t, pidFile, newPid) // the old one left it alone on its way out
	n = ld.ok.Load()
	ld.waitOK(t, n+300, "answers from the new process alone")
	ld.finish(t)

	// The old process left the registration to the new one, which stays
	// healthy.
	testenv.WaitFor(t, 30*time.Second, "the balancer's registration to be passing", func() error {
		checks, _, err := c.Health().Checks("gwnomad-lb", nil)
		if err != nil {
			return err
		}
		if len(checks) != 1 || checks[0].Status != consulapi.HealthPassing {
			return fmt.Errorf("checks %v", checks)
		}
		return nil
	})
	if strings.Contains(proc.log(), "deregistered from consul") {
		t.Error("the old process deregistered the balancer")
	}

	// SIGTERM stops the new process as usual.
	if err := syscall.Kill(newPid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 60*time.Second, "the new process to stop", func() error {
		if alive(newPid) {
			return errors.New("still running")
		}
		return nil
	})
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the pid file is still there after the last process stopped: %v", err)
	}
}

// wantPidFile checks that the pid file names pid.
func wantPidFile(t *testing.T, path string, pid int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != strconv.Itoa(pid) {
		t.Fatalf("pid file %s holds %q, want %d", path, got, pid)
	}
}

// Under Nomad (NOMAD_ALLOC_ID set) SIGUSR2 starts no process: the task's
// process must stay. The balancer says so and serves on.
func TestLBUpgradeRefusedUnderNomad(t *testing.T) {
	bin := gwnomadBin(t)
	st := testenv.Consul(t)
	registerBackend(t, st.ConsulAPI(), "svc", "backend-1")
	cmd := exec.Command(bin, "lb", "--config", plainLBConfig(t, "127.0.0.1:0", st.Consul.HTTPAddr))
	cmd.Env = append(os.Environ(), "NOMAD_ALLOC_ID=0b9f1e3c-test")
	proc := startLBProc(t, cmd)
	addr := proc.started(t, "http")
	if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	proc.waitLog(t, 30*time.Second, "no upgrade in place under Nomad")
	if strings.Contains(proc.log(), "started a new process") {
		t.Error("a new process was started under Nomad")
	}
	ld := startLoad("http://"+addr, "x.test")
	ld.waitOK(t, 100, "answers after the refused upgrade")
	ld.finish(t)
	select {
	case err := <-proc.exited:
		t.Fatalf("the balancer exited: %v", err)
	default:
	}
}

// systemd socket activation: the balancer serves the socket it is given
// (LISTEN_FDS, unnamed, matched by address) and binds nothing itself; the
// test holds the address, so a bind of its own would fail. It reports
// READY=1.
func TestLBSocketActivation(t *testing.T) {
	bin := gwnomadBin(t)
	st := testenv.Consul(t)
	registerBackend(t, st.ConsulAPI(), "svc", "backend-1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	path := plainLBConfig(t, ln.Addr().String(), st.Consul.HTTPAddr)
	notify, states := notifySocket(t)
	// systemd sets LISTEN_PID to the pid it execs; the shell's pid is the
	// one gwnomad gets.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, bin, "lb", "--config", path)
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "NOTIFY_SOCKET="+notify)
	cmd.ExtraFiles = []*os.File{f}
	proc := startLBProc(t, cmd)
	waitState(t, states, "READY=1")
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/", nil)
	req.Host = "x.test"
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "backend-1" {
		t.Fatalf("answer %d %q", resp.StatusCode, body)
	}
	if !strings.Contains(proc.log(), "serving inherited sockets") {
		t.Errorf("no word of the inherited socket in the log")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	proc.exitedOK(t, "the balancer")
}
