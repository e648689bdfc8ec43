package lb_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb/config"
)

// The plain listener is served by the engine lb.toml names: by default
// the event loop, which serves a GET itself and hands a request with a
// body to the goroutine engine (counted on /metrics); with "goroutines"
// nothing is handed over. Real Consul discovery either way.
func TestPlainEngineFromConfig(t *testing.T) {
	st := testenv.Consul(t)
	c := st.ConsulAPI()
	g := inProcessGateway(t, "gw-1")
	register(t, c, g, true)
	for _, engine := range []string{"", "goroutines"} {
		t.Run("engine="+engine, func(t *testing.T) {
			l, _ := startLBWith(t, st, "round_robin", func(cfg *config.Config) {
				if engine != "" {
					cfg.Proxy.Engine = engine
				}
			})
			waitInstances(t, l, 30*time.Second, "gw-1")
			if resp, body, err := get(l, "/api"); err != nil || resp.StatusCode != 200 || body != "gw-1" {
				t.Fatalf("GET: %v %q %v", resp, body, err)
			}
			req, _ := http.NewRequest("POST", "http://"+l.Addrs().HTTP+"/api", strings.NewReader("payload"))
			req.Host = host
			resp, err := client.Do(req)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("POST: %v %v", resp, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			want := `gwnomad_lb_event_loop_handoffs_total{why="request"} 1`
			if engine == "goroutines" {
				want = `gwnomad_lb_event_loop_handoffs_total{why="request"} 0`
			}
			if got := metricLine(t, "http://"+l.Addrs().Admin+"/metrics", `gwnomad_lb_event_loop_handoffs_total{why="request"}`); got != want {
				t.Errorf("/metrics: %q, want %q", got, want)
			}
		})
	}
}

// metricLine is the line of /metrics that starts with prefix ("" if none).
func metricLine(t *testing.T, url, prefix string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			return sc.Text()
		}
	}
	return ""
}
