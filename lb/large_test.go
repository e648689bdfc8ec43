package lb_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/lb/lbtest"
)

// largeBody is what test gateways answer to /large (chunked), and
// largeFetches counts those requests.
var (
	largeBody    = bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB
	largeFetches atomic.Int64
)

// Through the whole balancer, its gateway found in real Consul: a chunked
// answer larger than proxy.max_buffered_response_bytes reaches the client
// whole and is fetched from the gateway once, for GET and for POST.
func TestLargeAnswerFetchedOnce(t *testing.T) {
	st := testenv.Consul(t)
	g := inProcessGateway(t, "gw-large")
	register(t, st.ConsulAPI(), g, true)
	cfg := lbtest.Config(st, config.Route{Hosts: []string{host}})
	cfg.Proxy.MaxBufferedResponseBytes = 256 << 10
	l, _ := lbtest.Start(t, cfg)
	waitInstances(t, l, 30*time.Second, "gw-large")

	cl := &http.Client{Timeout: 30 * time.Second}
	for _, method := range []string{"GET", "POST"} {
		before := largeFetches.Load()
		req, _ := http.NewRequest(method, "http://"+l.Addrs().HTTP+"/large", nil)
		req.Host = host
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("%s /large: %v", method, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || sha256.Sum256(b) != sha256.Sum256(largeBody) {
			t.Errorf("%s /large: %d, %d of %d bytes, %v", method, resp.StatusCode, len(b), len(largeBody), err)
		}
		if n := largeFetches.Load() - before; n != 1 {
			t.Errorf("%s /large: the gateway was asked %d times, want once", method, n)
		}
	}
}
