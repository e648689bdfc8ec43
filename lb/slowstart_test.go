package lb_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb/admin"
	"github.com/gwnomad/gwnomad/lb/config"
)

// health.slow_start on real Consul: a gateway registered while the route
// serves shows as "warming" in /routes and gets a small part of the
// traffic; the two that were there from the start share the rest.
func TestSlowStartNewGatewayGetsLittleTrafficAtFirst(t *testing.T) {
	st := testenv.Consul(t)
	c := st.ConsulAPI()
	for i := 1; i <= 2; i++ {
		register(t, c, inProcessGateway(t, fmt.Sprintf("gw-%d", i)), true)
	}
	l, _ := startLBWith(t, st, "round_robin", func(cfg *config.Config) {
		cfg.Health.SlowStart = config.Duration(10 * time.Minute)
	})
	waitInstances(t, l, 30*time.Second, "gw-1", "gw-2")
	register(t, c, inProcessGateway(t, "gw-3"), true)
	waitInstances(t, l, 30*time.Second, "gw-1", "gw-2", "gw-3")

	resp, err := http.Get("http://" + l.Addrs().Admin + "/routes")
	if err != nil {
		t.Fatal(err)
	}
	var tbl admin.Table
	err = json.NewDecoder(resp.Body).Decode(&tbl)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, in := range tbl.Routes[0].Instances {
		states[in.ID] = in.State
		if in.ID == "gw-3" && (in.WarmUntil == nil || time.Until(*in.WarmUntil) < 9*time.Minute) {
			t.Errorf("gw-3 warm_until %v, want about 10 minutes from now", in.WarmUntil)
		}
	}
	if states["gw-1"] != "healthy" || states["gw-2"] != "healthy" || states["gw-3"] != "warming" {
		t.Errorf("states in /routes: %v", states)
	}

	by := map[string]int{}
	for range 600 {
		_, body, err := get(l, "/api")
		if err != nil {
			t.Fatal(err)
		}
		by[body]++
	}
	t.Logf("600 requests: %v", by)
	// A full share would be 200; at the start of a 10-minute slow start
	// about a tenth of it (round robin: up to a sixth, a refused turn
	// moves the counter on).
	if by["gw-3"] == 0 || by["gw-3"] > 60 || by["gw-1"] < 240 || by["gw-2"] < 240 {
		t.Errorf("answers by %v: want gw-3 at about 20, the others near 290", by)
	}
}
