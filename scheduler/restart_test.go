package scheduler

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/jobs"
)

func TestBatchSizeNeverTakesEveryNode(t *testing.T) {
	for _, c := range []struct{ n, maxParallel, live, want int }{
		{3, 1, 3, 1},
		{3, 2, 3, 2},
		{3, 5, 3, 2}, // one keeps serving
		{1, 2, 3, 1}, // --node: one target
		{1, 1, 1, 1}, // a single gateway restarts alone (warned)
		{2, 0, 2, 1},
	} {
		if got := batchSize(c.n, c.maxParallel, c.live); got != c.want {
			t.Errorf("batchSize(%d, %d, %d) = %d, want %d", c.n, c.maxParallel, c.live, got, c.want)
		}
	}
}

func TestConsulAddrFromNomadClient(t *testing.T) {
	for _, c := range []struct {
		addr      string
		ssl       bool
		nomadHTTP string
		want      string
		wantTLS   bool
	}{
		{"127.0.0.1:8500", false, "10.0.0.7:4646", "10.0.0.7:8500", false},
		{"localhost:8500", false, "10.0.0.7:4646", "10.0.0.7:8500", false},
		{"0.0.0.0:8501", true, "10.0.0.7:4646", "10.0.0.7:8501", true},
		{"https://consul.node7:8501", false, "10.0.0.7:4646", "consul.node7:8501", true},
		{"http://10.0.0.9:8500", false, "10.0.0.7:4646", "10.0.0.9:8500", false},
		{"127.0.0.1:18500", false, "127.0.0.1:24646", "127.0.0.1:18500", false}, // the test harness: all on loopback
	} {
		got, tls := consulAddrFrom(c.addr, c.ssl, c.nomadHTTP)
		if got != c.want || tls != c.wantTLS {
			t.Errorf("consulAddrFrom(%q, %v, %q) = %q, %v; want %q, %v", c.addr, c.ssl, c.nomadHTTP, got, tls, c.want, c.wantTLS)
		}
	}
}

func TestLBRoutesURL(t *testing.T) {
	for _, c := range []struct {
		row  LBRow
		want string
	}{
		{LBRow{Admin: "127.0.0.1:9901", Address: "10.0.0.5"}, "http://127.0.0.1:9901/routes"}, // loopback: only from its host
		{LBRow{Admin: "[::]:9901", Address: "10.0.0.5"}, "http://10.0.0.5:9901/routes"},
		{LBRow{Admin: "0.0.0.0:9901", Address: ""}, "http://127.0.0.1:9901/routes"},
		{LBRow{Admin: "10.0.0.6:9901", Address: "10.0.0.5"}, "http://10.0.0.6:9901/routes"},
	} {
		got, err := lbRoutesURL(c.row)
		if err != nil || got != c.want {
			t.Errorf("lbRoutesURL(%+v) = %q, %v; want %q", c.row, got, err, c.want)
		}
	}
	if _, err := lbRoutesURL(LBRow{ID: "lb-1"}); err == nil {
		t.Error("an LB without meta admin has no /routes URL")
	}
}

// The /routes document as lb/admin writes it: a route lists only the
// instances it sends new requests to; the others are in not_passing.
const routesDoc = `{"version": 7, "routes": [
 {"name": "gw", "service": "apim-gateway", "tag": "", "discovery": {"ready": true},
  "instances": [{"id": "a", "state": "healthy"}, {"id": "b", "state": "warming"}, {"id": "e", "state": "ejected"}],
  "not_passing": [{"id": "m", "state": "maintenance"}]},
 {"name": "gw-tagged", "service": "apim-gateway", "tag": "cluster=apim-gw", "discovery": {"ready": true},
  "instances": [{"id": "a", "state": "healthy"}]},
 {"name": "other", "service": "other", "discovery": {"ready": true}, "instances": [{"id": "m", "state": "healthy"}]}
]}`

func TestReadRoutesCountsTheRoutesThatSendToAnInstance(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/routes" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(routesDoc))
	}))
	defer srv.Close()
	tb, err := readRoutes(context.Background(), LBRow{ID: "lb-1", Admin: strings.TrimPrefix(srv.URL, "http://")})
	if err != nil {
		t.Fatal(err)
	}
	tagged := []string{"cluster=apim-gw"}
	for _, c := range []struct {
		id        string
		tags      []string
		in, total int
	}{
		{"a", tagged, 2, 2},     // routed by both routes to the service
		{"a", nil, 1, 1},        // the tagged route cannot send to an untagged instance
		{"b", tagged, 1, 2},     // warming counts; the tagged route does not list it
		{"e", tagged, 0, 2},     // ejected: not routed, but not drained either (listed)
		{"m", tagged, 0, 2},     // in maintenance: drained
		{"zz", tagged, 0, 2},    // gone
		{"m", []string{}, 0, 1}, // another service's route that lists the same ID does not count
	} {
		in, total := tb.routes("apim-gateway", c.id, c.tags)
		if in != c.in || total != c.total {
			t.Errorf("routes(%s, %v) = %d of %d, want %d of %d", c.id, c.tags, in, total, c.in, c.total)
		}
	}
	// A discovery that has not heard from Consul yet routes nothing.
	tb.Routes[0].Discovery.Ready = false
	if in, _ := tb.routes("apim-gateway", "a", nil); in != 0 {
		t.Errorf("a route without discovery counted as routing")
	}

	var ue *UnreachableError
	if _, err := readRoutes(context.Background(), LBRow{ID: "lb-2", Admin: "127.0.0.1:1"}); !errors.As(err, &ue) || !strings.Contains(err.Error(), `--lb-service ""`) {
		t.Errorf("unreachable admin: %T %v", err, err)
	}
}

func TestReadyAgainNeedsANewStartAndAFreshPass(t *testing.T) {
	old := time.Now().Add(-time.Hour)
	stub := func(state string, started time.Time) *nomadapi.AllocationListStub {
		return &nomadapi.AllocationListStub{TaskStates: map[string]*nomadapi.TaskState{jobs.TaskName: {State: state, StartedAt: started}}}
	}
	inst := func(status string, idx uint64) *consulapi.ServiceEntry {
		return &consulapi.ServiceEntry{Checks: consulapi.HealthChecks{
			{Name: jobs.LivenessCheckName, Status: status, ModifyIndex: idx},
			{Name: jobs.ReadinessCheckName, Status: status, ModifyIndex: idx},
		}}
	}
	tg := &target{started: old, index: 100}
	tg.check(stub("running", old), inst(CheckPassing, 50), time.Hour)
	if tg.readyAgain {
		t.Fatal("the old process's passing checks taken for the new one's")
	}
	tg.check(stub("pending", time.Now()), inst(CheckPassing, 150), time.Hour)
	if tg.readyAgain {
		t.Fatal("ready while the task does not run")
	}
	tg.check(stub("running", time.Now()), inst(CheckCritical, 150), time.Hour)
	if tg.readyAgain {
		t.Fatal("ready with critical checks")
	}
	tg.check(stub("running", time.Now()), inst(CheckPassing, 160), time.Hour)
	if !tg.readyAgain {
		t.Fatal("a new start with a result newer than the restart is ready")
	}
	// No newer result (the catalog kept an identical one): passing for a
	// whole check interval and timeout since the new start was seen.
	tg = &target{started: old, index: 100}
	tg.check(stub("running", time.Now()), inst(CheckPassing, 50), 50*time.Millisecond)
	if tg.readyAgain {
		t.Fatal("ready at the first sight of an unchanged passing result")
	}
	time.Sleep(60 * time.Millisecond)
	tg.check(stub("running", time.Now()), inst(CheckPassing, 50), 50*time.Millisecond)
	if !tg.readyAgain {
		t.Fatal("passing for a whole interval after the new start: ready")
	}
}

func TestRestartErrorNamesWhereItStopped(t *testing.T) {
	e := &RestartError{Node: "n2", Reason: "did not come back ready within 10s of its restart", Restarted: []string{"n1"}, NotRestarted: []string{"n2", "n3"}}
	if got := e.Error(); !strings.Contains(got, "node n2: did not come back ready") || !strings.Contains(got, "restarted: n1; not restarted: n2, n3") {
		t.Errorf("error: %s", got)
	}
	e = &RestartError{Interrupted: true, Restarted: []string{"n1"}, NotRestarted: []string{"n2"}, Err: context.Canceled}
	if got := e.Error(); !strings.HasPrefix(got, "interrupted; restarted: n1; not restarted: n2") || !errors.Is(e, context.Canceled) {
		t.Errorf("error: %s", got)
	}
}
