package lb_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/lbtest"
)

// The access log is a FIFO that nobody reads for a while (as stdout into a
// stalled pipe, or a stalled disk): every request is still answered, its
// line waits in memory, and all lines arrive once the FIFO is read, without
// the API keys the requests carried (log.redact_query's default). The
// dropped-lines counter is on /metrics (0 here: the lines fit the backlog).
func TestStalledAccessLogDoesNotStallRequests(t *testing.T) {
	st := testenv.Consul(t)
	g := inProcessGateway(t, "gw-log")
	register(t, st.ConsulAPI(), g, true)

	fifo := filepath.Join(t.TempDir(), "access.log")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Opened first (non-blocking) so that the LB's open for writing does not
	// wait for a reader; closed after the LB stops.
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })

	cfg := lbtest.Config(st, config.Route{Hosts: []string{host}})
	cfg.Log.AccessLog = fifo
	l, _ := lbtest.Start(t, cfg)
	waitInstances(t, l, 30*time.Second, "gw-log")

	// About 300 KiB of lines; the pipe holds 64 KiB.
	const n = 1500
	cl := &http.Client{Timeout: 20 * time.Second}
	for i := range n {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/q?i=%d&apikey=s3cret-%d", l.Addrs().HTTP, i, i), nil)
		req.Host = host
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("request %d of %d while nobody reads the access log: %v", i+1, n, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i+1, resp.StatusCode)
		}
	}

	// Now read: every request's line comes, whole and in order.
	if err := r.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(r)
	next := 0
	for next < n && sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, `{"time":"`) || !strings.HasSuffix(line, "}") {
			t.Fatalf("line %q is not whole", line)
		}
		if strings.Contains(line, "s3cret") {
			t.Fatalf("an API key in the access log: %s", line)
		}
		if strings.Contains(line, fmt.Sprintf(`"uri":"/q?i=%d&apikey=REDACTED"`, next)) {
			next++
		}
	}
	if next < n {
		t.Fatalf("%d of %d lines read from the access log: %v", next, n, sc.Err())
	}

	resp, err := http.Get("http://" + l.Addrs().Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "\ngwnomad_lb_access_log_dropped_total 0\n") {
		t.Errorf("/metrics lacks gwnomad_lb_access_log_dropped_total 0")
	}
}
