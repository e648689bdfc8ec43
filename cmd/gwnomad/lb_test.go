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

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout bytes.Buffer
	var stderr testenv.SyncBuffer
	done := make(chan int, 1)
	go func() { done <- commands["lb"].run(ctx, []string{"--config", path}, &stdout, &stderr) }()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != exitOK {
				t.Errorf("lb exited %d:\n%s", code, stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("lb did not stop")
		}
	}()

	var addr string
	started := regexp.MustCompile(`msg="load balancer started" http=(\S+)`)
	testenv.WaitFor(t, 30*time.Second, "the balancer to start", func() error {
		m := started.FindStringSubmatch(stderr.String())
		if m == nil {
			return fmt.Errorf("not started:\n%s", stderr.String())
		}
		addr = m[1]
		return nil
	})
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
