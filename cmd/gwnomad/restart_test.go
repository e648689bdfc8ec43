package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/lb/lbtest"
	"github.com/gwnomad/gwnomad/scheduler"
	"github.com/gwnomad/gwnomad/spec"
)

func TestRestartHelpAndFlags(t *testing.T) {
	code, out, _ := runCLI(t, "restart", "--help")
	if code != exitOK {
		t.Fatalf("--help: exit %d", code)
	}
	for _, want := range []string{"Usage: gwnomad restart", "--node NODE", "--timeout", "Examples:", "Exit codes:", "Ctrl-C", "maintenance"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	for _, args := range [][]string{{"-o", "yaml"}, {"--timeout", "-1s"}, {"--node", ""}, {"extra"}} {
		if code, _, errs := runCLI(t, append([]string{"restart"}, args...)...); code != exitInvalid {
			t.Errorf("restart %v: exit %d, want 3\n%s", args, code, errs)
		}
	}
}

// One harness cluster (3 clients), the gateways deployed, one balancer in
// front registered in Consul: a restart of one node (events, same
// allocation and version), an unknown node, Ctrl-C during a restart of
// every node, and a node that does not come back ready. The whole
// rolling restart under load is the resilience suite's.
func TestRestartEndToEnd(t *testing.T) {
	st := testenv.Cluster(t, testenv.Options{Clients: 3})
	for _, kv := range st.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	consul, nomad := st.ConsulAPI(), st.NomadAPI()
	v1 := writeSpec(t, t.TempDir(), "v1.toml", testSpec(t))
	s, _, err := spec.Load(v1)
	if err != nil {
		t.Fatal(err)
	}
	if code, out, errs := gw(t, "deploy", "-f", v1); code != exitOK {
		t.Fatalf("deploy: exit %d\n%s\n%s", code, out, errs)
	}
	lbtest.Start(t, lbtest.Config(st, lbtest.Route("gw.test.local", s.Gateway.Service)))
	testenv.WaitFor(t, 30*time.Second, "the balancer registered and passing", func() error {
		es, _, err := consul.Health().Service("gwnomad-lb", "", true, nil)
		if err != nil || len(es) != 1 {
			return fmt.Errorf("%d passing gwnomad-lb, %v", len(es), err)
		}
		return nil
	})
	version := jobVersion(t, nomad)
	restarts := func() map[string]uint64 { // node -> restarts of its alloc
		out := map[string]uint64{}
		for _, a := range runningAllocs(t, nomad) {
			if ts := a.TaskStates[jobs.TaskName]; ts != nil {
				out[a.NodeName] = ts.Restarts
			}
		}
		return out
	}
	allocIDs := func() []string {
		var ids []string
		for _, a := range runningAllocs(t, nomad) {
			ids = append(ids, a.ID)
		}
		slices.Sort(ids)
		return ids
	}
	nodes := func() []string {
		var n []string
		for node := range restarts() {
			n = append(n, node)
		}
		slices.Sort(n)
		return n
	}()
	if len(nodes) != 3 {
		t.Fatalf("nodes %v, want 3", nodes)
	}
	ids := allocIDs()

	t.Run("one node, -o json: drained, restarted in place, routed again", func(t *testing.T) {
		before := restarts()
		code, out, errs := gw(t, "restart", "-f", v1, "--node", nodes[1], "-o", "json")
		if code != exitOK {
			t.Fatalf("restart: exit %d\n%s\n%s", code, out, errs)
		}
		evs := parseEvents(t, out)
		order := map[string]int{}
		for i, e := range evs {
			if e.Node != nil && e.Node.Node != nodes[1] && e.Type != scheduler.EventNode {
				t.Errorf("event about another node: %+v", e)
			}
			if _, ok := order[e.Type]; !ok {
				order[e.Type] = i
			}
		}
		for _, ty := range []string{scheduler.EventPreflight, scheduler.EventDrain, scheduler.EventRestart, scheduler.EventRouted, scheduler.EventSummary} {
			if _, ok := order[ty]; !ok {
				t.Errorf("no %s event:\n%s", ty, out)
			}
		}
		if !(order[scheduler.EventDrain] < order[scheduler.EventRestart] && order[scheduler.EventRestart] < order[scheduler.EventRouted]) {
			t.Errorf("not drained, then restarted, then routed: %v", order)
		}
		if !strings.Contains(out, "no load balancer routes to it") || !strings.Contains(out, "every load balancer routes to it again") {
			t.Errorf("the drain and the return do not name the load balancers:\n%s", out)
		}
		last := evs[len(evs)-1]
		if last.Type != scheduler.EventSummary || last.Summary.Outcome != "restarted" || !slices.Equal(last.Summary.Restarted, []string{nodes[1]}) || last.Summary.Ready != 3 {
			t.Errorf("summary: %+v", last.Summary)
		}
		after := restarts()
		for _, n := range nodes {
			want := before[n]
			if n == nodes[1] {
				want++
			}
			if after[n] != want {
				t.Errorf("node %s: %d restarts, want %d", n, after[n], want)
			}
		}
		if v := jobVersion(t, nomad); v != version {
			t.Errorf("job version %d after the restart, want %d (no new version)", v, version)
		}
		if got := allocIDs(); !slices.Equal(got, ids) {
			t.Errorf("allocations %v after the restart, want the same %v", got, ids)
		}
	})

	t.Run("unknown node: exit 3 naming the gateway nodes", func(t *testing.T) {
		before := restarts()
		code, out, errs := gw(t, "restart", "-f", v1, "--node", "no-such-node")
		if code != exitInvalid || !strings.Contains(errs, "no-such-node") || !strings.Contains(errs, nodes[0]) {
			t.Fatalf("restart: exit %d, want 3 naming the nodes\n%s\n%s", code, out, errs)
		}
		if after := restarts(); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("restarts changed: %v -> %v", before, after)
		}
	})

	t.Run("Ctrl-C during the first node: it is finished, the others untouched", func(t *testing.T) {
		before := restarts()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		// Cancelled as the first restart is reported, as Ctrl-C would.
		stdout := &cancelOn{want: `"type":"restart"`, cancel: cancel}
		var stderr bytes.Buffer
		code := commands["restart"].run(ctx, []string{"-f", v1, "-o", "json"}, stdout, &stderr)
		out := stdout.String()
		if code != exitFailed || !strings.Contains(stderr.String(), "interrupted") {
			t.Fatalf("restart: exit %d, want 1 (interrupted)\n%s\n%s", code, out, stderr.String())
		}
		evs := parseEvents(t, out)
		var routed, restarted []string
		var sum *scheduler.Summary
		interrupted := false
		for _, e := range evs {
			switch e.Type {
			case scheduler.EventRestart:
				restarted = append(restarted, e.Node.Node)
			case scheduler.EventRouted:
				routed = append(routed, e.Node.Node)
			case scheduler.EventInterrupted:
				interrupted = true
			case scheduler.EventSummary:
				sum = e.Summary
			}
		}
		if !slices.Equal(restarted, nodes[:1]) || !slices.Equal(routed, nodes[:1]) || !interrupted {
			t.Errorf("restarted %v, routed %v, interrupted %v; want the first node finished only", restarted, routed, interrupted)
		}
		if sum == nil || sum.Outcome != "interrupted" || evs[len(evs)-1].Type != scheduler.EventError {
			t.Errorf("summary %+v, last event %+v", sum, evs[len(evs)-1])
		}
		if !strings.Contains(stderr.String(), "not restarted: "+nodes[1]+", "+nodes[2]) {
			t.Errorf("stderr does not name the nodes not restarted:\n%s", stderr.String())
		}
		after := restarts()
		for i, n := range nodes {
			want := before[n]
			if i == 0 {
				want++
			}
			if after[n] != want {
				t.Errorf("node %s: %d restarts, want %d", n, after[n], want)
			}
		}
		if r := statusReady(t, v1); r != 3 {
			t.Errorf("%d nodes ready after the interrupted restart, want 3", r)
		}
	})

	t.Run("Ctrl-C during a drain: put back without a restart", func(t *testing.T) {
		before := restarts()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		stdout := &cancelOn{want: `"type":"drain"`, cancel: cancel}
		var stderr bytes.Buffer
		code := commands["restart"].run(ctx, []string{"-f", v1, "-o", "json", "--node", nodes[0]}, stdout, &stderr)
		out := stdout.String()
		if code != exitFailed || !strings.Contains(stderr.String(), "interrupted while draining node "+nodes[0]) {
			t.Fatalf("restart: exit %d, want 1 (interrupted)\n%s\n%s", code, out, stderr.String())
		}
		if strings.Contains(out, `"type":"restart"`) || !strings.Contains(out, "put back without a restart") {
			t.Errorf("not put back, or restarted:\n%s", out)
		}
		if after := restarts(); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("restarts changed: %v -> %v", before, after)
		}
		// Back in service: passing in Consul, maintenance lifted.
		if n := len(passingInstances(t, consul, s.Gateway.Service, jobs.ClusterTag(s))); n != 3 {
			t.Errorf("%d passing instances after the put-back, want 3", n)
		}
	})

	t.Run("a node that does not come back ready: exit 1 naming it", func(t *testing.T) {
		// Its next start reads a deployment.toml that does not parse: the
		// template (change_mode noop) renders the value on every node, but
		// only the restarted one reads it again.
		job, _, err := nomad.Jobs().Info("apim-gw", nil)
		if err != nil {
			t.Fatal(err)
		}
		key := job.Meta[jobs.MetaKVPrefix] + "apim/key_manager/service_url"
		kv, _, err := consul.KV().Get(key, nil)
		if err != nil || kv == nil {
			t.Fatalf("KV %s: %v", key, err)
		}
		good := slices.Clone(kv.Value)
		kv.Value = []byte(`"unterminated`)
		if _, err := consul.KV().Put(kv, nil); err != nil {
			t.Fatal(err)
		}
		victim := runningAllocs(t, nomad)[0]
		for _, a := range runningAllocs(t, nomad) {
			if a.NodeName == nodes[2] {
				victim = a
			}
		}
		testenv.WaitFor(t, 30*time.Second, "the broken value rendered on "+nodes[2], func() error {
			if !strings.Contains(allocFile(t, nomad, victim.ID, "gateway"+jobs.ConfigPath(s)), `"unterminated`) {
				return errors.New("not yet")
			}
			return nil
		})
		code, out, errs := gw(t, "restart", "-f", v1, "--node", nodes[2], "--timeout", "8s")
		if _, err := consul.KV().Put(&consulapi.KVPair{Key: key, Value: good}, nil); err != nil {
			t.Error(err)
		}
		if code != exitFailed {
			t.Fatalf("restart: exit %d, want 1\n%s\n%s", code, out, errs)
		}
		for _, want := range []string{"node " + nodes[2] + ": did not come back ready within 8s", "not restarted: none", "task events:", "refusing to start"} {
			if !strings.Contains(errs, want) {
				t.Errorf("stderr lacks %q:\n%s", want, errs)
			}
		}
		if !strings.Contains(out, "== FAILED") {
			t.Errorf("no failed summary:\n%s", out)
		}
	})
}

// statusReady is gwnomad status's count of ready nodes.
func statusReady(t *testing.T, file string) int {
	t.Helper()
	code, out, errs := gw(t, "status", "-f", file, "-o", "json", "--lb-service", "")
	if code != exitOK && code != exitFailed {
		t.Fatalf("status: exit %d\n%s", code, errs)
	}
	var st scheduler.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	return st.Ready
}

// cancelOn collects what a command writes and calls cancel once it has
// written want.
type cancelOn struct {
	mu     sync.Mutex
	b      bytes.Buffer
	want   string
	cancel func()
	done   bool
}

func (w *cancelOn) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	if !w.done && strings.Contains(w.b.String(), w.want) {
		w.done = true
		w.cancel()
	}
	return len(p), nil
}

func (w *cancelOn) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
