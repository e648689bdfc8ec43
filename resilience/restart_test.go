package resilience

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/gatewaysim"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/scheduler"
	"github.com/gwnomad/gwnomad/spec"
)

// A rolling restart of every gateway (gwnomad restart) under the steady
// load, through a balancer registered in Consul as gwnomad-lb: each node is
// drained (Consul maintenance) until the balancer no longer routes to it,
// restarted in place, and routed again once ready. Zero failed requests,
// and no request answered by a node between the end of its drain and its
// restart (after it, only the new process, once ready, can answer).
func TestRestartUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("resilience suite: real Consul and Nomad")
	}
	st := testenv.Cluster(t, testenv.Options{Clients: 3})
	for _, kv := range st.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	s := parseSpec(t, string(spec.DefaultTOML))
	rel, ok := s.SharedPath(gatewaysim.APIDirRelPath)
	if !ok {
		t.Fatalf("the spec does not share %s", gatewaysim.APIDirRelPath)
	}
	if err := gatewaysim.WriteSampleAPI(filepath.Join(st.SharedDir, rel)); err != nil {
		t.Fatal(err)
	}
	consul := st.ConsulAPI()
	deploy(t, s)
	waitPassing(t, consul, s.Gateway.Service, 3, nil)
	l := startLB(t, st, s.Gateway.Service)
	testenv.WaitFor(t, 30*time.Second, "3 gateways in the balancer's table, the balancer passing in Consul", func() error {
		if n := len(l.Table().Routes[0].Upstreams); n != 3 {
			return fmt.Errorf("%d upstreams", n)
		}
		es, _, err := consul.Health().Service("gwnomad-lb", "", true, nil)
		if err != nil || len(es) != 1 {
			return fmt.Errorf("%d passing gwnomad-lb, %v", len(es), err)
		}
		return nil
	})
	c := newClient(t, s)
	before := status(t, c)

	// Which node answers while which is out: a probe beside the load.
	out := map[string]bool{} // nodes drained and not restarted yet
	var mu sync.Mutex
	var strays []string
	probeCtx, stopProbe := context.WithCancel(context.Background())
	var probe sync.WaitGroup
	probe.Go(func() {
		for probeCtx.Err() == nil {
			node, err := getNode(l)
			mu.Lock()
			if err == nil && out[node] {
				strays = append(strays, time.Now().Format("15:04:05.000 ")+node)
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	})
	var events []scheduler.Event
	rep := scheduler.ReporterFunc(func(e scheduler.Event) {
		t.Logf("%s %s", e.Type, e.Message)
		mu.Lock()
		defer mu.Unlock()
		events = append(events, e)
		if e.Node == nil {
			return
		}
		switch {
		case e.Type == scheduler.EventDrain && strings.Contains(e.Message, "drained in"):
			out[e.Node.Node] = true
		case e.Type == scheduler.EventRestart:
			out[e.Node.Node] = false
		}
	})

	ld := startLoad(t, l)
	ld.runFor(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	sum, err := c.Restart(ctx, scheduler.RestartOptions{LBService: "gwnomad-lb", Report: rep})
	t.Logf("restart: %s", time.Since(start).Round(time.Second))
	ld.runFor(2 * time.Second)
	ld.stop(t, "rolling restart")
	stopProbe()
	probe.Wait()
	if err != nil {
		t.Fatalf("restart: %v", err)
	}

	var nodes []string
	for _, r := range before.Nodes {
		nodes = append(nodes, r.Node)
	}
	slices.Sort(nodes)
	if sum.Outcome != "restarted" || !slices.Equal(sum.Restarted, nodes) {
		t.Errorf("summary: outcome %s, restarted %v; want every node %v", sum.Outcome, sum.Restarted, nodes)
	}
	// One at a time: each node routed again before the next is drained.
	var seq []string
	for _, e := range events {
		if e.Type == scheduler.EventRestart || e.Type == scheduler.EventRouted {
			seq = append(seq, e.Type+" "+e.Node.Node)
		}
	}
	var want []string
	for _, n := range nodes {
		want = append(want, scheduler.EventRestart+" "+n, scheduler.EventRouted+" "+n)
	}
	if !slices.Equal(seq, want) {
		t.Errorf("restart order %v, want %v", seq, want)
	}
	if len(strays) > 0 {
		t.Errorf("requests answered by a drained node: %v", strays)
	}
	after := status(t, c)
	if after.JobVersion != before.JobVersion || after.Ready != 3 {
		t.Errorf("after: job version %d (was %d), %d ready", after.JobVersion, before.JobVersion, after.Ready)
	}
	for _, b := range before.Nodes {
		i := slices.IndexFunc(after.Nodes, func(r scheduler.NodeRow) bool { return r.AllocID == b.AllocID })
		if i < 0 {
			t.Errorf("allocation %s on %s gone: not restarted in place", b.Alloc, b.Node)
			continue
		}
		if a := after.Nodes[i]; a.Restarts != b.Restarts+1 {
			t.Errorf("node %s: %d restarts, want %d", a.Node, a.Restarts, b.Restarts+1)
		}
	}
}
