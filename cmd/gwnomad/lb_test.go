package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/testenv"
)

// `gwnomad lb` reads its file again on SIGHUP: a route moved to another
// Consul service takes effect; a change that needs a restart and an invalid
// file are logged (with the file's line) and the running configuration
// stays. SIGHUP also reopens the access log: after a rotation (rename,
// SIGHUP) the lines go to a new file at the configured path.
func TestLBReloadsOnSIGHUP(t *testing.T) {
	st := testenv.Consul(t)
	c := st.ConsulAPI()
	upstream := map[string]string{} // service -> its address, as the access log names it
	for _, name := range []string{"svc-a", "svc-b"} {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) }))
		t.Cleanup(s.Close)
		upstream[name] = `"upstream":"` + s.Listener.Addr().String() + `"`
		_, ps, _ := net.SplitHostPort(s.Listener.Addr().String())
		port, _ := strconv.Atoi(ps)
		if err := c.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
			ID: name, Name: name, Address: "127.0.0.1", Port: port,
			Check: &consulapi.AgentServiceCheck{TTL: "5m", Status: consulapi.HealthPassing},
		}); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "lb.toml")
	accessLog := filepath.Join(t.TempDir(), "access.log")
	write := func(admin, service, policy string) {
		t.Helper()
		text := fmt.Sprintf(`[listen]
http = "127.0.0.1:0"
admin = %q
[consul]
address = %q
register = false
[[routes]]
hosts = ["x.test"]
service = %q
port = "service"
policy = %q
[log]
access_log = %q
`, admin, st.Consul.HTTPAddr, service, policy, accessLog)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("127.0.0.1:0", "svc-a", "p2c")

	addr, stderr := runLBCommand(t, path)
	ask := func() (string, error) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = "x.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b), nil
	}
	answeredBy := func(want string) func() error {
		return func() error {
			got, err := ask()
			if err != nil {
				return err
			}
			if got != "200 "+want {
				return fmt.Errorf("answer %q", got)
			}
			return nil
		}
	}
	hup := func() {
		t.Helper()
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 30*time.Second, "svc-a to answer", answeredBy("svc-a"))

	write("127.0.0.1:0", "svc-b", "round_robin")
	if err := os.Rename(accessLog, accessLog+".1"); err != nil { // logrotate
		t.Fatal(err)
	}
	hup()
	testenv.WaitFor(t, 30*time.Second, "svc-b to answer after SIGHUP", answeredBy("svc-b"))
	// svc-a's answers were logged to the rotated file, svc-b's go to a new
	// one at the configured path (written within a second).
	testenv.WaitFor(t, 30*time.Second, "svc-b's answers in the reopened access log", func() error {
		b, err := os.ReadFile(accessLog)
		if err != nil || !strings.Contains(string(b), upstream["svc-b"]) {
			return fmt.Errorf("%s: %q, %v", accessLog, b, err)
		}
		return nil
	})
	if b, err := os.ReadFile(accessLog + ".1"); err != nil || !strings.Contains(string(b), upstream["svc-a"]) || strings.Contains(string(b), upstream["svc-b"]) {
		t.Errorf("rotated access log: %q, %v", b, err)
	}

	refusals := []struct{ admin, policy, want string }{
		{"127.0.0.1:1", "p2c", "[listen] changed, which needs a restart"},
		{"127.0.0.1:0", "random", `lb.toml:11:1: routes[0].policy: \"random\"`},
	}
	for _, r := range refusals {
		write(r.admin, "svc-a", r.policy)
		hup()
		testenv.WaitFor(t, 30*time.Second, "the refusal in the log", func() error {
			if log := stderr.String(); !strings.Contains(log, r.want) {
				return fmt.Errorf("log lacks %q:\n%s", r.want, log)
			}
			return nil
		})
		if got, err := ask(); err != nil || got != "200 svc-b" {
			t.Errorf("after a refused reload: %q %v", got, err)
		}
	}
}

// runLBCommand runs `gwnomad lb --config path` in this process until the
// end of the test, and returns its HTTP address once it has started, and
// its log.
func runLBCommand(t *testing.T, path string) (addr string, stderr *testenv.SyncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stderr = new(testenv.SyncBuffer)
	done := make(chan int, 1)
	go func() { done <- commands["lb"].run(ctx, []string{"--config", path}, io.Discard, stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != exitOK {
				t.Errorf("lb exited %d:\n%s", code, stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("lb did not stop")
		}
	})
	started := regexp.MustCompile(`msg="load balancer started" http=(\S+)`)
	testenv.WaitFor(t, 30*time.Second, "the balancer to start", func() error {
		m := started.FindStringSubmatch(stderr.String())
		if m == nil {
			return fmt.Errorf("not started:\n%s", stderr.String())
		}
		addr = m[1]
		return nil
	})
	return addr, stderr
}

// deploy/lb/gwnomad-lb.logrotate, run by the real logrotate (paths, owner
// and the reload command made local): the lines logged before the rotation
// are in access.log.1, the ones after in a new access.log.
func TestLBAccessLogRotatedByLogrotate(t *testing.T) {
	logrotate, err := exec.LookPath("logrotate")
	if err != nil {
		t.Fatal("logrotate not found: install Debian's logrotate package (.ci/run does)")
	}
	st := testenv.Consul(t)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	t.Cleanup(s.Close)
	_, ps, _ := net.SplitHostPort(s.Listener.Addr().String())
	port, _ := strconv.Atoi(ps)
	if err := st.ConsulAPI().Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: "svc", Name: "svc", Address: "127.0.0.1", Port: port,
		Check: &consulapi.AgentServiceCheck{TTL: "5m", Status: consulapi.HealthPassing},
	}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	accessLog := filepath.Join(dir, "access.log")
	path := filepath.Join(dir, "lb.toml")
	if err := os.WriteFile(path, fmt.Appendf(nil, `[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
[consul]
address = %q
register = false
[[routes]]
hosts = ["x.test"]
service = "svc"
port = "service"
[log]
access_log = %q
`, st.Consul.HTTPAddr, accessLog), 0o644); err != nil {
		t.Fatal(err)
	}
	addr, _ := runLBCommand(t, path)
	logged := func(file string, uri string) func() error {
		return func() error {
			get := func() {
				req, _ := http.NewRequest("GET", "http://"+addr+uri, nil)
				req.Host = "x.test"
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}
			if b, err := os.ReadFile(file); err != nil || !bytes.Contains(b, []byte(`"uri":"`+uri+`"`)) {
				get()
				return fmt.Errorf("%s: %q, %v", file, b, err)
			}
			return nil
		}
	}
	testenv.WaitFor(t, 30*time.Second, "a line in the access log", logged(accessLog, "/before"))

	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	group, err := user.LookupGroupId(me.Gid)
	if err != nil {
		t.Fatal(err)
	}
	conf := readFile(t, "../../deploy/lb/gwnomad-lb.logrotate")
	for _, r := range [][2]string{
		{"/var/log/gwnomad/access.log", accessLog},
		{"create 0644 gwnomad gwnomad", "create 0644 " + me.Username + " " + group.Name},
		{"systemctl reload gwnomad-lb.service", fmt.Sprintf("kill -HUP %d", os.Getpid())},
	} {
		if !strings.Contains(conf, r[0]) {
			t.Fatalf("gwnomad-lb.logrotate lacks %q", r[0])
		}
		conf = strings.ReplaceAll(conf, r[0], r[1])
	}
	confPath := filepath.Join(dir, "logrotate.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(logrotate, "-f", "-s", filepath.Join(dir, "logrotate.state"), confPath).CombinedOutput(); err != nil {
		t.Fatalf("logrotate: %v\n%s", err, out)
	}
	testenv.WaitFor(t, 30*time.Second, "a line in the new access log", logged(accessLog, "/after"))
	b, err := os.ReadFile(accessLog + ".1")
	if err != nil || !bytes.Contains(b, []byte(`"uri":"/before"`)) {
		t.Errorf("access.log.1 after the rotation: %q, %v", b, err)
	}
}
