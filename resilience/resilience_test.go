// Package resilience is `make resilience`: the load balancer keeps answering
// while the cluster behind it changes or breaks. Real Consul and Nomad from
// the harness (1 Nomad server, 4 clients each with its own Consul agent), the
// simulator as the gateway (the embedded default spec: 3 nodes on exec), the
// balancer in this process in front. Every scenario drives a steady, bounded
// stream of GETs through the balancer, prints sent / failed / retried, and
// fails on any failed request.
//
// Scenarios, in order, on one cluster: a rolling deploy of a config change,
// SIGKILL of one gateway, the Consul agent the balancer talks to stopped for
// 60 s, a whole node killed (Nomad client, its Consul agent and its gateway)
// with the gateway rescheduled on the spare client, and one gateway task's
// view of the shared directory made unreadable (breakdir, inside that task's
// mount namespace, since all clients share one directory on this machine).
//
// It needs the agents (make tools), root (the exec driver, nsenter) and the
// go command (it builds breakdir); -short skips it. It takes about 5 minutes
// on 2 cores.
package resilience

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/gatewaysim"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb"
	"github.com/gwnomad/gwnomad/lb/lbtest"
	"github.com/gwnomad/gwnomad/scheduler"
	"github.com/gwnomad/gwnomad/spec"
)

const (
	host    = "gw.am.wso2.com"
	apiPath = "/pizzashack/1.0.0/menu"
	// rate is the total request rate of the load during a scenario.
	rate    = 100
	workers = 4
	// maxScenario bounds one scenario's load whatever happens.
	maxScenario = 5 * time.Minute
)

func TestResilience(t *testing.T) {
	if testing.Short() {
		t.Skip("resilience suite: real Consul and Nomad, minutes")
	}
	st := testenv.Cluster(t, testenv.Options{Clients: 4})
	for _, kv := range st.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // scheduler.New reads NOMAD_ADDR / CONSUL_HTTP_ADDR
	}
	v1 := parseSpec(t, string(spec.DefaultTOML))
	if v1.Gateway.Count != 3 {
		t.Fatalf("default spec count %d, want 3", v1.Gateway.Count)
	}
	rel, ok := v1.SharedPath(gatewaysim.APIDirRelPath)
	if !ok {
		t.Fatalf("the spec does not share %s", gatewaysim.APIDirRelPath)
	}
	if err := gatewaysim.WriteSampleAPI(filepath.Join(st.SharedDir, rel)); err != nil {
		t.Fatal(err)
	}
	consul := st.ConsulAPI()

	deploy(t, v1)
	waitPassing(t, consul, v1.Gateway.Service, 3, nil)

	l := startLB(t, st, v1.Gateway.Service)
	testenv.WaitFor(t, 30*time.Second, "3 gateways in the balancer's table", func() error {
		if n := len(l.Table().Routes[0].Upstreams); n != 3 {
			return fmt.Errorf("%d upstreams", n)
		}
		return nil
	})

	t.Run("rolling deploy of a config change", func(t *testing.T) {
		toml := strings.Replace(string(spec.DefaultTOML), "https://km.am.wso2.com:9443/services/", "https://km2.am.wso2.com:9443/services/", 1)
		if toml == string(spec.DefaultTOML) {
			t.Fatal("the default spec's key_manager service_url changed; update the scenario")
		}
		v2 := parseSpec(t, toml)
		ld := startLoad(t, l)
		deploy(t, v2)
		waitPassing(t, consul, v2.Gateway.Service, 3, nil)
		for _, r := range status(t, newClient(t, v2)).Nodes {
			if r.JobVersion == 0 {
				t.Errorf("node %s still on job version 0 after the deploy", r.Node)
			}
		}
		ld.runFor(3 * time.Second)
		ld.stop(t, "rolling deploy")
	})

	t.Run("SIGKILL of one gateway", func(t *testing.T) {
		c := newClient(t, v1)
		ld := startLoad(t, l)
		ld.runFor(2 * time.Second)
		rows := status(t, c).Nodes
		pid := gatewayPid(t, rows[0].AllocID, 0)
		t.Logf("SIGKILL gatewaysim pid %d (alloc %s on %s)", pid, rows[0].Alloc, rows[0].Node)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// Nomad restarts the task in the same allocation: wait for a new
		// process, then for its checks to pass again.
		testenv.WaitFor(t, 90*time.Second, "the killed gateway dead", func() error {
			if processAlive(pid) {
				return errors.New("still running")
			}
			return nil
		})
		t.Logf("restarted as pid %d", gatewayPid(t, rows[0].AllocID, pid))
		testenv.WaitFor(t, 90*time.Second, "the restarted gateway ready", func() error {
			for _, r := range status(t, c).Nodes {
				if r.AllocID == rows[0].AllocID {
					if r.Restarts <= rows[0].Restarts || !r.Ready() {
						return fmt.Errorf("restarts %d, liveness %s, readiness %s", r.Restarts, r.Liveness, r.Readiness)
					}
					return nil
				}
			}
			return errors.New("allocation gone")
		})
		waitPassing(t, consul, v1.Gateway.Service, 3, nil)
		ld.runFor(3 * time.Second)
		ld.stop(t, "SIGKILL")
	})

	t.Run("Consul agent stopped for 60s", func(t *testing.T) {
		ld := startLoad(t, l)
		ld.runFor(2 * time.Second)
		if err := st.Consul.Proc.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		// The outage lasts 60 s while the load runs; the balancer must
		// keep its last good table (asserted at the end by the counts).
		ld.runFor(60*time.Second - time.Since(stopped))
		if err := st.Consul.Proc.Start(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := st.Consul.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		waitPassing(t, consul, v1.Gateway.Service, 3, nil)
		testenv.WaitFor(t, 60*time.Second, "the balancer's discovery fresh again", func() error {
			r := l.Table().Routes[0]
			if r.Snapshot == nil || !r.Snapshot.StaleSince.IsZero() {
				return errors.New("table still stale")
			}
			if len(r.Upstreams) != 3 {
				return fmt.Errorf("%d upstreams", len(r.Upstreams))
			}
			return nil
		})
		ld.runFor(3 * time.Second)
		ld.stop(t, "Consul outage")
	})

	t.Run("Nomad client killed: rescheduled on the spare", func(t *testing.T) {
		c := newClient(t, v1)
		rows := status(t, c).Nodes
		var victim *devstack.NomadAgent
		for _, nc := range st.NomadClients {
			if nc.Name == rows[0].Node {
				victim = nc
			}
		}
		if victim == nil {
			t.Fatalf("no harness client named %q", rows[0].Node)
		}
		var pids []int
		for _, r := range rows {
			if r.Node == victim.Name {
				pids = append(pids, gatewayPid(t, r.AllocID, 0))
			}
		}
		ld := startLoad(t, l)
		ld.runFor(2 * time.Second)
		// The node dies: its Nomad client, its Consul agent and its tasks.
		t.Logf("killing node %s (nomad client, consul agent %s, gateway pids %v)", victim.Name, victim.Consul.Node, pids)
		if err := victim.Proc.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := victim.Consul.Proc.Kill(); err != nil {
			t.Fatal(err)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		waitPassing(t, consul, v1.Gateway.Service, 3, func(e *consulapi.ServiceEntry) bool { return e.Node.Node != victim.Consul.Node })
		testenv.WaitFor(t, 30*time.Second, "3 gateways in the balancer's table, none on the dead node", func() error {
			r := l.Table().Routes[0]
			if len(r.Members) != 3 {
				return fmt.Errorf("%d members", len(r.Members))
			}
			for _, m := range r.Members {
				if m.Node == victim.Consul.Node {
					return fmt.Errorf("%s still in the table", m.ID)
				}
			}
			return nil
		})
		ld.runFor(3 * time.Second)
		ld.stop(t, "node killed")
	})

	t.Run("shared directory unreadable on one client", func(t *testing.T) {
		// All clients share one directory here, so it is made unreadable
		// in one gateway task's mount namespace only: a tmpfs over
		// synapse-configs/default holding a *file* named api, so the
		// simulator's scan fails (ENOTDIR) as it would on a stale mount.
		c := newClient(t, v1)
		var row scheduler.NodeRow
		for _, r := range status(t, c).Nodes {
			if r.Ready() {
				row = r
				break
			}
		}
		if row.AllocID == "" {
			t.Fatal("no ready node")
		}
		pid := gatewayPid(t, row.AllocID, 0)
		helper := filepath.Join(t.TempDir(), "breakdir")
		build := exec.Command("go", "build", "-o", helper, "./breakdir")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build breakdir: %v\n%s", err, out)
		}
		inTask := "/.gwnomad-breakdir"
		b, err := os.ReadFile(helper)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/root%s", pid, inTask), b, 0o755); err != nil {
			t.Fatalf("copy the helper into the task's root: %v", err)
		}
		apiDir := filepath.Join(v1.Gateway.Home, gatewaysim.APIDirRelPath)
		nsenter := func(action string) error {
			out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-m", inTask, action, apiDir).CombinedOutput()
			if err != nil {
				return fmt.Errorf("nsenter %s: %w: %s", action, err, out)
			}
			return nil
		}
		ld := startLoad(t, l)
		ld.runFor(2 * time.Second)
		t.Logf("making %s unreadable for %s only (alloc %s, pid %d)", apiDir, row.Node, row.Alloc, pid)
		if err := nsenter("break"); err != nil {
			t.Fatal(err)
		}
		restored := false
		defer func() {
			if !restored {
				_ = nsenter("restore")
			}
		}()
		testenv.WaitFor(t, 60*time.Second, "gwnomad status reports "+row.Node+" unhealthy", func() error {
			cmd := exec.Command(filepath.Join(binDir(t), "gwnomad"), "status", "-o", "json")
			out, err := cmd.Output()
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				return err
			}
			var st scheduler.Status
			if err := json.Unmarshal(out, &st); err != nil {
				return fmt.Errorf("status output: %w: %s", err, out)
			}
			if cmd.ProcessState.ExitCode() != 1 {
				return fmt.Errorf("exit code %d, want 1 (not every node ready)", cmd.ProcessState.ExitCode())
			}
			for _, r := range st.Nodes {
				if r.AllocID == row.AllocID {
					if r.Readiness == "passing" {
						return errors.New("readiness still passing")
					}
					t.Logf("gwnomad status: %s readiness %s: %s", r.Node, r.Readiness, r.ReadinessOutput)
					return nil
				}
			}
			return errors.New("node not listed")
		})
		testenv.WaitFor(t, 30*time.Second, "the balancer's table without "+row.Node, func() error {
			for _, m := range l.Table().Routes[0].Members {
				if strings.Contains(m.ID, row.AllocID) {
					return fmt.Errorf("%s still in the table", m.ID)
				}
			}
			return nil
		})
		for i := range 60 {
			node, err := getNode(l)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			if node == row.Node {
				t.Fatalf("request %d answered by %s, whose directory is unreadable", i, node)
			}
		}
		if err := nsenter("restore"); err != nil {
			t.Fatal(err)
		}
		restored = true
		waitPassing(t, consul, v1.Gateway.Service, 3, nil)
		ld.runFor(2 * time.Second)
		ld.stop(t, "unreadable shared directory")
	})
}

func binDir(t *testing.T) string {
	t.Helper()
	d, err := devstack.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// getNode sends one GET through the balancer and returns the node that
// answered.
func getNode(l *lb.LB) (string, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+l.Addrs().HTTP+apiPath, nil)
	if err != nil {
		return "", err
	}
	req.Host = host
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.Header.Get(gatewaysim.NodeHeader), nil
}

func parseSpec(t *testing.T, toml string) *spec.Spec {
	t.Helper()
	s, _, err := spec.Parse("gwnomad.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newClient(t *testing.T, s *spec.Spec) *scheduler.Client {
	t.Helper()
	c, err := scheduler.New(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func deploy(t *testing.T, s *spec.Spec) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	sum, err := newClient(t, s).Deploy(ctx, scheduler.DeployOptions{})
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	t.Logf("deployed in %s: %+v", time.Since(start).Round(time.Second), sum)
}

func status(t *testing.T, c *scheduler.Client) *scheduler.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Nodes) == 0 {
		t.Fatal("status: no nodes")
	}
	return s
}

// waitPassing waits for n passing instances of service (that keep says
// yes to, when keep is not nil).
func waitPassing(t *testing.T, c *consulapi.Client, service string, n int, keep func(*consulapi.ServiceEntry) bool) {
	t.Helper()
	testenv.WaitFor(t, 3*time.Minute, fmt.Sprintf("%d passing %s instances", n, service), func() error {
		es, _, err := c.Health().Service(service, "", true, nil)
		if err != nil {
			return err
		}
		got := 0
		for _, e := range es {
			if keep == nil || keep(e) {
				got++
			}
		}
		if got != n {
			return fmt.Errorf("%d passing", got)
		}
		return nil
	})
}

// gatewayPid finds the simulator process of an allocation: a gatewaysim
// whose environment holds NOMAD_ALLOC_ID=<alloc>, other than not.
func gatewayPid(t *testing.T, allocID string, not int) int {
	t.Helper()
	var pid int
	testenv.WaitFor(t, 30*time.Second, "the gatewaysim process of alloc "+allocID, func() error {
		ents, err := os.ReadDir("/proc")
		if err != nil {
			return err
		}
		want := []byte("NOMAD_ALLOC_ID=" + allocID + "\x00")
		for _, e := range ents {
			p, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
			if strings.TrimSpace(string(comm)) != "gatewaysim" {
				continue
			}
			env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p))
			if p != not && processAlive(p) && strings.Contains(string(env), string(want)) {
				pid = p
				return nil
			}
		}
		return errors.New("not found in /proc")
	})
	return pid
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie is dead for our purpose.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func startLB(t *testing.T, st *devstack.Stack, service string) *lb.LB {
	t.Helper()
	l, _ := lbtest.Start(t, lbtest.Config(st, lbtest.Route(host, service)))
	return l
}

// load is a steady stream of GETs through the balancer: workers share
// rate requests per second, until stop (or maxScenario).
type load struct {
	l       *lb.LB
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	sent    atomic.Int64
	failed  atomic.Int64
	retries float64 // the balancer's retries counter at the start
	mu      sync.Mutex
	errs    []string
	start   time.Time
}

var httpClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}

func startLoad(t *testing.T, l *lb.LB) *load {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), maxScenario)
	ld := &load{l: l, cancel: cancel, retries: retriesTotal(t, l), start: time.Now()}
	url := "http://" + l.Addrs().HTTP + apiPath
	every := time.Duration(workers) * time.Second / rate
	for range workers {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if err := ld.get(ctx, url); err != nil {
					if ctx.Err() != nil {
						return // the end of the scenario, not a failure
					}
					ld.failed.Add(1)
					ld.mu.Lock()
					if len(ld.errs) < 20 {
						ld.errs = append(ld.errs, time.Now().Format("15:04:05.000 ")+err.Error())
					}
					ld.mu.Unlock()
				}
				ld.sent.Add(1)
			}
		}()
	}
	return ld
}

func (ld *load) get(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Host = host
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

// runFor lets the load run for d (the scenario's own duration, e.g. the 60 s
// outage: not a wait for a condition).
func (ld *load) runFor(d time.Duration) {
	if d > 0 {
		time.Sleep(d)
	}
}

func (ld *load) stop(t *testing.T, name string) {
	t.Helper()
	ld.cancel()
	ld.wg.Wait()
	retried := retriesTotal(t, ld.l) - ld.retries
	sent, failed := ld.sent.Load(), ld.failed.Load()
	msg := fmt.Sprintf("%s: sent %d, failed %d, retried %.0f (%s at %d req/s)", name, sent, failed, retried, time.Since(ld.start).Round(time.Second), rate)
	fmt.Println("resilience:", msg)
	t.Log(msg)
	if failed > 0 {
		t.Errorf("%s: %d failed requests, first ones:\n  %s", name, failed, strings.Join(ld.errs, "\n  "))
	}
	if sent < rate {
		t.Errorf("%s: only %d requests sent", name, sent)
	}
}

// retriesTotal sums gwnomad_lb_retries_total over routes.
func retriesTotal(t *testing.T, l *lb.LB) float64 {
	t.Helper()
	mfs, err := l.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "gwnomad_lb_retries_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}
