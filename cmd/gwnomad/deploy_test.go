package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/lb/lbtest"
	"github.com/gwnomad/gwnomad/scheduler"
	"github.com/gwnomad/gwnomad/spec"
	"github.com/gwnomad/gwnomad/templates"
)

// The "Done when", against one harness cluster (real Nomad: 1
// server + 3 clients sharing the host volume; real Consul; the simulator
// as the gateway on exec), scenario after scenario on the same cluster:
// plan, a deploy that cannot be placed, a healthy deploy, a config change
// rolled out node by node, a version whose readiness never passes, status,
// stop, and a deploy with Nomad down.
func TestDeployEndToEnd(t *testing.T) {
	st := testenv.Cluster(t, testenv.Options{Clients: 3})
	for _, kv := range st.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // not parallel: the commands read the environment
	}
	consul, nomad := st.ConsulAPI(), st.NomadAPI()
	dir := t.TempDir()
	base := testSpec(t)
	v1 := writeSpec(t, dir, "v1.toml", base)
	changed := mustReplace(t, base, "https://km.am.wso2.com:9443/services/", "https://km2.am.wso2.com:9443/services/")
	v2 := writeSpec(t, dir, "v2.toml", changed)
	// A new config value and a gateway whose readiness never passes.
	broken := writeSpec(t, dir, "broken.toml", mustReplace(t,
		mustReplace(t, changed, "https://km2.am.wso2.com:9443/services/", "https://km3.am.wso2.com:9443/services/"),
		`"${node.unique.name}"]`, `"${node.unique.name}", "-fail-readiness"]`))
	novol := writeSpec(t, dir, "novol.toml", mustReplace(t, base, `name = "apim-shared"`, `name = "nfs-missing"`))
	s, _, err := spec.Load(v1)
	if err != nil {
		t.Fatal(err)
	}
	service, tag := s.Gateway.Service, jobs.ClusterTag(s)

	t.Run("plan before the first deploy", func(t *testing.T) {
		code, out, errs := gw(t, "plan", "-f", v1)
		if code != exitFailed {
			t.Fatalf("plan: exit %d, want 1 (changes)\n%s\n%s", code, out, errs)
		}
		for _, want := range []string{"not registered yet", "Consul KV gwnomad/apim-gw/config/", "+ apim/key_manager/service_url", "to place"} {
			if !strings.Contains(out, want) {
				t.Errorf("plan output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("missing host volume: exit 2 naming it, nothing written", func(t *testing.T) {
		code, out, errs := gw(t, "deploy", "-f", novol)
		if code != exitPlacement {
			t.Fatalf("deploy: exit %d, want 2\n%s\n%s", code, out, errs)
		}
		if !strings.Contains(errs, `host volume "nfs-missing"`) || !strings.Contains(errs, "nomad-client") {
			t.Errorf("the error does not name the volume and the nodes:\n%s", errs)
		}
		if keys := kvKeys(t, consul); len(keys) != 0 {
			t.Errorf("KV written despite the failure: %v", keys)
		}
	})

	t.Run("deploy 3 nodes", func(t *testing.T) {
		code, out, errs := gw(t, "deploy", "-f", v1)
		if code != exitOK {
			t.Fatalf("deploy: exit %d, want 0\n%s\n%s", code, out, errs)
		}
		for _, want := range []string{"HEALTHY", "3 of 3 nodes ready", "deployment"} {
			if !strings.Contains(out, want) {
				t.Errorf("deploy output lacks %q:\n%s", want, out)
			}
		}
		passing := passingInstances(t, consul, service, tag)
		if len(passing) != 3 {
			t.Fatalf("%d passing instances, want 3", len(passing))
		}
		nodes := map[string]bool{}
		for _, e := range passing {
			nodes[e.Node.Node] = true
			names := map[string]bool{}
			for _, c := range e.Checks {
				if c.Status == consulapi.HealthPassing {
					names[c.Name] = true
				}
			}
			if !names[jobs.LivenessCheckName] || !names[jobs.ReadinessCheckName] {
				t.Errorf("instance %s lacks a passing check: %v", e.Service.ID, names)
			}
		}
		if len(nodes) != 3 {
			t.Errorf("instances not on 3 different clients: %v", nodes)
		}
		// KV holds the spec's values, in the folder the job names.
		want, err := templates.KV(s)
		if err != nil {
			t.Fatal(err)
		}
		job, _, err := nomad.Jobs().Info("apim-gw", nil)
		if err != nil {
			t.Fatal(err)
		}
		prefix := job.Meta[jobs.MetaKVPrefix]
		for k, v := range want {
			if !strings.HasPrefix(k, prefix) {
				t.Errorf("KV key %s outside the job's folder %s", k, prefix)
			}
			if p, _, err := consul.KV().Get(k, nil); err != nil || p == nil || string(p.Value) != string(v) {
				t.Errorf("KV %s: %v (%v), want %s", k, p, err, v)
			}
		}
	})

	t.Run("plan without change and status -o json", func(t *testing.T) {
		code, out, errs := gw(t, "plan", "-f", v1)
		if code != exitOK || !strings.Contains(out, "No changes") {
			t.Fatalf("plan: exit %d, want 0 (no change)\n%s\n%s", code, out, errs)
		}
		code, out, errs = gw(t, "status", "-f", v1, "-o", "json")
		if code != exitOK {
			t.Fatalf("status: exit %d\n%s\n%s", code, out, errs)
		}
		var stat scheduler.Status
		if err := json.Unmarshal([]byte(out), &stat); err != nil {
			t.Fatalf("status JSON: %v\n%s", err, out)
		}
		if !stat.Registered || stat.Ready != 3 || len(stat.Nodes) != 3 || stat.InProgress {
			t.Fatalf("status: %+v", stat)
		}
		job, _, err := nomad.Jobs().Info("apim-gw", nil)
		if err != nil {
			t.Fatal(err)
		}
		folder := path.Base(job.Meta[jobs.MetaKVPrefix])
		nodes := map[string]bool{}
		for _, n := range stat.Nodes {
			nodes[n.Node] = true
			if n.Config != folder {
				t.Errorf("node %s renders configuration %q, want the job's %q", n.Node, n.Config, folder)
			}
			if n.Nomad != "running" || n.Liveness != "passing" || n.Readiness != "passing" || n.Address == "" ||
				n.Ports["https"] == 0 || n.Ports["passthru_https"] == 0 || n.Uptime == "" || n.JobVersion != stat.JobVersion {
				t.Errorf("status row: %+v", n)
			}
		}
		if len(nodes) != 3 {
			t.Errorf("rows not on 3 nodes: %v", nodes)
		}
		code, out, _ = gw(t, "status", "-f", v1)
		if code != exitOK || !strings.Contains(out, "3 of 3 gateway nodes ready") || !strings.Contains(out, "READINESS") {
			t.Errorf("status text: exit %d\n%s", code, out)
		}
		if !strings.Contains(out, `No load balancer is registered in Consul as "gwnomad-lb".`) {
			t.Errorf("status text without a load balancer:\n%s", out)
		}

		// A load balancer registers itself; status lists it with its check.
		// One in front of another service is not this cluster's.
		l, _ := lbtest.Start(t, lbtest.Config(st, lbtest.Route("gw.test.local", service)))
		other := lbtest.Config(st, lbtest.Route("other.test.local", "other-service"))
		other.Consul.ServiceID = "gwnomad-lb-other"
		lbtest.Start(t, other)
		testenv.WaitFor(t, 60*time.Second, "both load balancers registered", func() error {
			entries, _, err := consul.Health().Service("gwnomad-lb", "", false, nil)
			if err != nil || len(entries) != 2 {
				return fmt.Errorf("%d instances of gwnomad-lb, %v", len(entries), err)
			}
			return nil
		})
		testenv.WaitFor(t, 60*time.Second, "the load balancer passing in status", func() error {
			code, out, _ := gw(t, "status", "-f", v1, "-o", "json")
			var stat scheduler.Status
			if err := json.Unmarshal([]byte(out), &stat); err != nil || code != exitOK {
				return fmt.Errorf("exit %d, %v", code, err)
			}
			if len(stat.LoadBalancers) != 1 || stat.LoadBalancers[0].Check != "passing" {
				return fmt.Errorf("load balancers %+v", stat.LoadBalancers)
			}
			lbr := stat.LoadBalancers[0]
			_, port, _ := net.SplitHostPort(l.Addrs().HTTP)
			if stat.LBService != "gwnomad-lb" || strconv.Itoa(lbr.Ports["http"]) != port || lbr.Admin != l.Addrs().Admin || lbr.Address == "" {
				t.Errorf("load balancer row %+v (lb at %+v)", lbr, l.Addrs())
			}
			return nil
		})
		code, out, _ = gw(t, "status", "-f", v1)
		if code != exitOK || !strings.Contains(out, `Load balancers (Consul service "gwnomad-lb"): 1 of 1 passing`) || !strings.Contains(out, "HEALTHZ") {
			t.Errorf("status text with a load balancer: exit %d\n%s", code, out)
		}
	})

	t.Run("a KV key deleted by hand: plan shows it, deploy writes it back, same job version", func(t *testing.T) {
		job, _, err := nomad.Jobs().Info("apim-gw", nil)
		if err != nil {
			t.Fatal(err)
		}
		key := job.Meta[jobs.MetaKVPrefix] + "apim/key_manager/service_url"
		if _, err := consul.KV().Delete(key, nil); err != nil {
			t.Fatal(err)
		}
		code, out, errs := gw(t, "plan", "-f", v1)
		if code != exitFailed || !strings.Contains(out, "+ apim/key_manager/service_url") {
			t.Fatalf("plan: exit %d, want 1 with the key to add\n%s\n%s", code, out, errs)
		}
		code, out, errs = gw(t, "deploy", "-f", v1)
		if code != exitOK || !strings.Contains(out, "repaired") {
			t.Fatalf("deploy: exit %d, want 0 (repaired)\n%s\n%s", code, out, errs)
		}
		if p, _, err := consul.KV().Get(key, nil); err != nil || p == nil {
			t.Errorf("%s not written back (%v)", key, err)
		}
		after, _, err := nomad.Jobs().Info("apim-gw", nil)
		if err != nil {
			t.Fatal(err)
		}
		if *after.Version != *job.Version {
			t.Errorf("job version %d, was %d: a KV repair is no new version", *after.Version, *job.Version)
		}
	})

	t.Run("config change rolls out node by node", func(t *testing.T) {
		code, out, errs := gw(t, "plan", "-f", v2)
		if code != exitFailed || !strings.Contains(out, "km2.am.wso2.com") || !strings.Contains(out, jobs.MetaConfigChecksum) {
			t.Fatalf("plan: exit %d, want 1 with the KV and checksum change\n%s\n%s", code, out, errs)
		}
		// A folder of a configuration no job version uses any more.
		stale := "gwnomad/apim-gw/config/000000000000/x"
		if _, err := consul.KV().Put(&consulapi.KVPair{Key: stale, Value: []byte("1")}, nil); err != nil {
			t.Fatal(err)
		}
		poll := startPoller(t, consul, service, tag)
		code, out, errs = gw(t, "deploy", "-f", v2, "-o", "json")
		minSeen, polls := poll()
		if p, _, err := consul.KV().Get(stale, nil); err != nil || p != nil {
			t.Errorf("stale configuration folder still in KV (%v)", err)
		}
		versions, _, _, err := nomad.Jobs().Versions("apim-gw", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		folders := map[string]bool{}
		for _, v := range versions {
			k := v.Meta[jobs.MetaKVPrefix] + "apim/key_manager/service_url"
			folders[v.Meta[jobs.MetaKVPrefix]] = true
			if p, _, err := consul.KV().Get(k, nil); err != nil || p == nil {
				t.Errorf("job version %d: %s missing (%v)", *v.Version, k, err)
			}
		}
		if len(folders) != 2 {
			t.Errorf("job versions name %d configuration folders, want 2 (v1's and v2's): %v", len(folders), folders)
		}
		if code != exitOK {
			t.Fatalf("deploy: exit %d, want 0\n%s\n%s", code, out, errs)
		}
		if polls < 10 || minSeen < 2 {
			t.Errorf("during the rollout %d polls saw at least %d passing instances, want >= 2", polls, minSeen)
		}
		events := parseEvents(t, out)
		if last := events[len(events)-1]; last.Type != scheduler.EventSummary || last.Summary.Outcome != "healthy" || last.Summary.Ready != 3 {
			t.Errorf("last event: %+v", last)
		}
		for _, a := range runningAllocs(t, nomad) {
			body := allocFile(t, nomad, a.ID, "gateway"+jobs.ConfigPath(s))
			if !strings.Contains(body, "https://km2.am.wso2.com:9443/services/") {
				t.Errorf("alloc %s on %s: deployment.toml lacks the new value:\n%s", a.ID[:8], a.NodeName, body)
			}
		}
	})

	t.Run("Nomad lost between the KV write and the registration: KV as before", func(t *testing.T) {
		before := kvDump(t, consul)
		sb, _, err := spec.Load(broken) // a [config] change
		if err != nil {
			t.Fatal(err)
		}
		c, err := scheduler.New(sb)
		if err != nil {
			t.Fatal(err)
		}
		var (
			events  []scheduler.Event
			stopped bool
		)
		defer func() {
			if stopped {
				startNomad(t, st)
			}
		}()
		rep := scheduler.ReporterFunc(func(e scheduler.Event) {
			events = append(events, e)
			if e.Type == scheduler.EventKV && !stopped { // written; not registered yet
				stopped = true
				if err := st.NomadServer.Proc.Stop(20 * time.Second); err != nil {
					t.Error(err)
				}
			}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		_, err = c.Deploy(ctx, scheduler.DeployOptions{Report: rep})
		var ue *scheduler.UnreachableError
		if !errors.As(err, &ue) || !scheduler.NothingChanged(err) {
			t.Fatalf("Deploy: %v (%T), want Nomad unreachable and nothing changed", err, err)
		}
		if !stopped || !strings.Contains(events[len(events)-1].Message, "deleted again") {
			t.Errorf("no event tells the new KV folder is gone: %+v", events)
		}
		if after := kvDump(t, consul); after != before {
			t.Errorf("KV not as before the deploy:\nbefore %s\nafter  %s", before, after)
		}
	})

	t.Run("readiness never passes: exit 1, auto-reverted, old version and its KV values serving", func(t *testing.T) {
		job, _, err := nomad.Jobs().Info("apim-gw", nil)
		if err != nil {
			t.Fatal(err)
		}
		goodSum, goodPrefix := job.Meta[jobs.MetaConfigChecksum], job.Meta[jobs.MetaKVPrefix]
		code, out, errs := gw(t, "deploy", "-f", broken)
		if code != exitFailed {
			t.Fatalf("deploy: exit %d, want 1\n%s\n%s", code, out, errs)
		}
		for _, want := range []string{"auto-reverted to job version", "readiness"} {
			if !strings.Contains(out+errs, want) {
				t.Errorf("output lacks %q:\nstdout:\n%s\nstderr:\n%s", want, out, errs)
			}
		}
		testenv.WaitFor(t, 3*time.Minute, "3 passing instances of the old version", func() error {
			passing, _, err := consul.Health().Service(service, tag, true, nil)
			if err != nil {
				return err
			}
			if len(passing) != 3 {
				return fmt.Errorf("%d passing", len(passing))
			}
			for _, e := range passing {
				if !strings.HasPrefix(goodSum, e.Service.Meta["config_checksum"]) {
					return fmt.Errorf("instance %s runs config %s, want %s", e.Service.ID, e.Service.Meta["config_checksum"], goodSum[:12])
				}
			}
			return nil
		})
		for _, a := range runningAllocs(t, nomad) {
			full, _, err := nomad.Allocations().Info(a.ID, nil)
			if err != nil {
				t.Fatal(err)
			}
			if args := fmt.Sprint(full.Job.TaskGroups[0].Tasks[0].Config["args"]); strings.Contains(args, "fail-readiness") {
				t.Errorf("alloc %s still runs the broken version: %s", a.ID[:8], args)
			}
		}
		// The reverted version reads its own folder, untouched by the failed
		// deploy: every node renders its value, with nothing restored.
		job, _, err = nomad.Jobs().Info("apim-gw", nil)
		if err != nil {
			t.Fatal(err)
		}
		if p := job.Meta[jobs.MetaKVPrefix]; p != goodPrefix {
			t.Errorf("the reverted job reads %s, want %s", p, goodPrefix)
		}
		p, _, err := consul.KV().Get(goodPrefix+"apim/key_manager/service_url", nil)
		if err != nil || p == nil || string(p.Value) != `"https://km2.am.wso2.com:9443/services/"` {
			t.Fatalf("the reverted version's KV folder changed: %v %v", p, err)
		}
		testenv.WaitFor(t, time.Minute, "every node rendering the reverted version's value", func() error {
			for _, a := range runningAllocs(t, nomad) {
				if body := allocFile(t, nomad, a.ID, "gateway"+jobs.ConfigPath(s)); !strings.Contains(body, "https://km2.am.wso2.com:9443/services/") {
					return fmt.Errorf("alloc %s on %s renders:\n%s", a.ID[:8], a.NodeName, body)
				}
			}
			return nil
		})
	})

	t.Run("stop leaves no allocation running and keeps KV", func(t *testing.T) {
		code, out, errs := gw(t, "stop", "-f", v2)
		if code != exitOK {
			t.Fatalf("stop: exit %d\n%s\n%s", code, out, errs)
		}
		if n := len(runningAllocs(t, nomad)); n != 0 {
			t.Errorf("%d allocations still running after stop", n)
		}
		if len(kvKeys(t, consul)) == 0 {
			t.Error("stop without --purge deleted the KV values")
		}
	})

	t.Run("interrupted monitoring leaves the deployment going", func(t *testing.T) {
		sp, _, err := spec.Load(v2)
		if err != nil {
			t.Fatal(err)
		}
		c, err := scheduler.New(sp)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		var events []string
		_, err = c.Deploy(ctx, scheduler.DeployOptions{Report: scheduler.ReporterFunc(func(e scheduler.Event) {
			events = append(events, e.Type+": "+e.Message)
			if e.Type == scheduler.EventDeployment {
				cancel() // Ctrl-C while monitoring
			}
		})})
		var intr *scheduler.InterruptedError
		if !errors.As(err, &intr) || intr.DeploymentID == "" {
			t.Fatalf("Deploy after cancel: %v, want *InterruptedError with the deployment", err)
		}
		if last := events[len(events)-1]; !strings.Contains(strings.Join(events, "\n"), "gwnomad status") || !strings.HasPrefix(last, "summary") {
			t.Errorf("events do not say how to resume:\n%s", strings.Join(events, "\n"))
		}
		testenv.WaitFor(t, 3*time.Minute, "the deployment to finish without gwnomad", func() error {
			d, _, err := nomad.Deployments().Info(intr.DeploymentID, nil)
			if err != nil {
				return err
			}
			if d.Status != nomadapi.DeploymentStatusSuccessful {
				return fmt.Errorf("deployment %s: %s", d.Status, d.StatusDescription)
			}
			return nil
		})
	})

	t.Run("--detach returns once registered; the rollout finishes without gwnomad", func(t *testing.T) {
		code, out, errs := gw(t, "deploy", "-f", v1, "--detach", "-o", "json")
		if code != exitOK {
			t.Fatalf("deploy --detach: exit %d, want 0\n%s\n%s", code, out, errs)
		}
		events := parseEvents(t, out)
		last := events[len(events)-1]
		if last.Type != scheduler.EventSummary || last.Summary == nil || last.Summary.Outcome != "detached" {
			t.Fatalf("last event %+v, want the summary with outcome detached", last)
		}
		for _, e := range events {
			if e.Type == scheduler.EventDeployment || e.Type == scheduler.EventNode {
				t.Errorf("--detach followed the rollout: %+v", e)
			}
		}
		sp, _, err := spec.Load(v1)
		if err != nil {
			t.Fatal(err)
		}
		c, err := scheduler.New(sp)
		if err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 4*time.Minute, "the detached rollout to finish on 3 nodes", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			st, err := c.Status(ctx)
			if err != nil {
				return err
			}
			if st.JobVersion != last.Summary.JobVersion || st.InProgress || st.Ready != 3 {
				return fmt.Errorf("job version %d (want %d), in progress %v, %d ready", st.JobVersion, last.Summary.JobVersion, st.InProgress, st.Ready)
			}
			for _, n := range st.Nodes {
				if n.JobVersion != st.JobVersion {
					return fmt.Errorf("node %s runs version %d", n.Node, n.JobVersion)
				}
			}
			return nil
		})
		if code, out, _ := gw(t, "status", "-f", v1); code != exitOK || !strings.Contains(out, "3 of 3 gateway nodes ready") {
			t.Errorf("status after the detached rollout: exit %d\n%s", code, out)
		}
	})

	t.Run("canaries: unplaceable names the constraint; auto-promote rolls on", func(t *testing.T) {
		canary := mustReplace(t, mustReplace(t, changed, "max_parallel = 1", "max_parallel = 1\ncanary = 1"),
			"https://km2.am.wso2.com:9443/services/", "https://km4.am.wso2.com:9443/services/")
		// Three nodes on three clients, never two on one: no room for a canary.
		full := writeSpec(t, dir, "canary3.toml", canary)
		before := kvDump(t, consul)
		code, out, errs := gw(t, "deploy", "-f", full)
		if code != exitPlacement || !strings.Contains(errs, "distinct_hosts") {
			t.Fatalf("deploy: exit %d, want 2 naming distinct_hosts\n%s\n%s", code, out, errs)
		}
		if kvDump(t, consul) != before {
			t.Error("KV written although the plan could not place the canary")
		}
		// Two nodes: the canary goes to the third client, then is promoted.
		two := writeSpec(t, dir, "canary2.toml", mustReplace(t, canary, "count = 3", "count = 2"))
		code, out, errs = gw(t, "deploy", "-f", two, "--auto-promote")
		if code != exitOK {
			t.Fatalf("deploy --auto-promote: exit %d, want 0\n%s\n%s", code, out, errs)
		}
		if !strings.Contains(out, "promoted (--auto-promote)") || !strings.Contains(out, "2 of 2 nodes ready") {
			t.Errorf("deploy output:\n%s", out)
		}
		if n := len(passingInstances(t, consul, service, tag)); n != 2 {
			t.Errorf("%d passing instances, want 2", n)
		}
	})

	t.Run("an old node restarting mid-rollout renders the old values", func(t *testing.T) {
		// A canary waiting for promotion holds the rollout half-way.
		mid := writeSpec(t, dir, "canary-mid.toml", mustReplace(t, mustReplace(t,
			mustReplace(t, changed, "max_parallel = 1", "max_parallel = 1\ncanary = 1"), "count = 3", "count = 2"),
			"https://km2.am.wso2.com:9443/services/", "https://km5.am.wso2.com:9443/services/"))
		code, out, errs := gw(t, "deploy", "-f", mid, "--detach")
		if code != exitOK {
			t.Fatalf("deploy --detach: exit %d\n%s\n%s", code, out, errs)
		}
		job, _, err := nomad.Jobs().Info("apim-gw", nil)
		if err != nil {
			t.Fatal(err)
		}
		newVersion := *job.Version
		var canary, old *nomadapi.AllocationListStub
		testenv.WaitFor(t, 3*time.Minute, "a healthy canary and a running old node", func() error {
			canary, old = nil, nil
			for _, a := range runningAllocs(t, nomad) {
				switch {
				case a.JobVersion == newVersion && a.DeploymentStatus != nil && a.DeploymentStatus.Healthy != nil && *a.DeploymentStatus.Healthy:
					canary = a
				case a.JobVersion < newVersion:
					old = a
				}
			}
			if canary == nil || old == nil {
				return fmt.Errorf("canary %v, old node %v", canary != nil, old != nil)
			}
			return nil
		})
		full, _, err := nomad.Allocations().Info(old.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		restarts := full.TaskStates[jobs.TaskName].Restarts
		if err := nomad.Allocations().Restart(full, jobs.TaskName, nil); err != nil {
			t.Fatalf("restarting alloc %s: %v", old.ID[:8], err)
		}
		testenv.WaitFor(t, 2*time.Minute, "the old node restarted and running", func() error {
			a, _, err := nomad.Allocations().Info(old.ID, nil)
			if err != nil {
				return err
			}
			ts := a.TaskStates[jobs.TaskName]
			if ts == nil || ts.Restarts <= restarts || ts.State != "running" {
				return fmt.Errorf("task %+v", ts)
			}
			return nil
		})
		if body := allocFile(t, nomad, old.ID, "gateway"+jobs.ConfigPath(s)); !strings.Contains(body, "https://km4.am.wso2.com:9443/services/") {
			t.Errorf("the restarted old node renders:\n%s", body)
		}
		if body := allocFile(t, nomad, canary.ID, "gateway"+jobs.ConfigPath(s)); !strings.Contains(body, "https://km5.am.wso2.com:9443/services/") {
			t.Errorf("the canary renders:\n%s", body)
		}
		d, _, err := nomad.Jobs().LatestDeployment("apim-gw", nil)
		if err != nil || d == nil {
			t.Fatalf("latest deployment: %v %v", d, err)
		}
		if _, _, err := nomad.Deployments().PromoteAll(d.ID, nil); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 3*time.Minute, "the promoted rollout to finish", func() error {
			d, _, err := nomad.Deployments().Info(d.ID, nil)
			if err != nil {
				return err
			}
			if d.Status != nomadapi.DeploymentStatusSuccessful {
				return fmt.Errorf("deployment %s: %s", d.Status, d.StatusDescription)
			}
			return nil
		})
	})

	t.Run("Nomad stopped: exit 4, nothing written", func(t *testing.T) {
		before := kvDump(t, consul)
		if err := st.NomadServer.Proc.Stop(20 * time.Second); err != nil {
			t.Fatal(err)
		}
		defer startNomad(t, st) // leave the stack whole for its cleanup
		code, out, errs := gw(t, "deploy", "-f", broken, "-o", "json")
		if code != exitUnreachable {
			t.Fatalf("deploy: exit %d, want 4\n%s\n%s", code, out, errs)
		}
		if evs := parseEvents(t, out); evs[len(evs)-1].Type != scheduler.EventError {
			t.Errorf("the JSON stream does not end with the error: %+v", evs[len(evs)-1])
		}
		if !strings.Contains(errs, "Nomad at http://"+st.NomadServer.HTTPAddr+" is unreachable") || !strings.Contains(errs, "nothing was changed") {
			t.Errorf("unclear message:\n%s", errs)
		}
		if after := kvDump(t, consul); after != before {
			t.Errorf("KV changed while Nomad was down:\nbefore %s\nafter %s", before, after)
		}
	})
}

// testSpec is the embedded demo spec with deadlines short enough for a test.
func testSpec(t *testing.T) string {
	s := string(spec.DefaultTOML)
	s = mustReplace(t, s, `healthy_deadline = "1m"`, `healthy_deadline = "20s"`)
	return mustReplace(t, s, `progress_deadline = "2m"`, `progress_deadline = "35s"`)
}

func mustReplace(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("spec lacks %q", old)
	}
	return strings.Replace(s, old, new, 1)
}

func writeSpec(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// gw runs one gwnomad command in-process.
func gw(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	start := time.Now()
	code = commands[args[0]].run(ctx, args[1:], &out, &errb)
	t.Logf("gwnomad %s: exit %d in %s", strings.Join(args, " "), code, time.Since(start).Truncate(time.Second))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("gwnomad %s:\n--- stdout\n%s--- stderr\n%s", strings.Join(args, " "), out.String(), errb.String())
		}
	})
	if dir := os.Getenv("GWNOMAD_E2E_OUT"); dir != "" { // to read what an SRE sees
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		f := fmt.Sprintf("%s/%s-%s.txt", dir, name, args[0])
		_ = os.WriteFile(f, []byte(fmt.Sprintf("$ gwnomad %s\nexit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(args, " "), code, out.String(), errb.String())), 0o644)
	}
	return code, out.String(), errb.String()
}

func passingInstances(t *testing.T, consul *consulapi.Client, service, tag string) []*consulapi.ServiceEntry {
	t.Helper()
	e, _, err := consul.Health().Service(service, tag, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// startPoller counts passing instances every 100ms until the returned
// function is called; that returns the minimum seen and the number of polls.
func startPoller(t *testing.T, consul *consulapi.Client, service, tag string) func() (int, int) {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	minSeen, polls := 1<<30, 0
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			q := (&consulapi.QueryOptions{}).WithContext(ctx)
			e, _, err := consul.Health().Service(service, tag, true, q)
			if err == nil {
				mu.Lock()
				polls++
				if len(e) < minSeen {
					minSeen = len(e)
					t.Logf("poller: %d passing instances", len(e))
				}
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() (int, int) {
		cancel()
		wg.Wait()
		return minSeen, polls
	}
}

func parseEvents(t *testing.T, out string) []scheduler.Event {
	t.Helper()
	var evs []scheduler.Event
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var e scheduler.Event
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("not a JSON event: %q: %v", l, err)
		}
		evs = append(evs, e)
	}
	if len(evs) == 0 {
		t.Fatal("no events")
	}
	return evs
}

func runningAllocs(t *testing.T, nomad *nomadapi.Client) []*nomadapi.AllocationListStub {
	t.Helper()
	stubs, _, err := nomad.Jobs().Allocations("apim-gw", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []*nomadapi.AllocationListStub
	for _, a := range stubs {
		if a.ClientStatus == "running" || a.ClientStatus == "pending" {
			out = append(out, a)
		}
	}
	return out
}

func allocFile(t *testing.T, nomad *nomadapi.Client, id, path string) string {
	t.Helper()
	a, _, err := nomad.Allocations().Info(id, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := nomad.AllocFS().Cat(a, path, nil)
	if err != nil {
		t.Fatalf("reading %s of alloc %s: %v", path, id[:8], err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func kvKeys(t *testing.T, consul *consulapi.Client) []string {
	t.Helper()
	keys, _, err := consul.KV().Keys("gwnomad/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// startNomad starts the stopped Nomad server again and waits for its leader.
func startNomad(t *testing.T, st *devstack.Stack) {
	t.Helper()
	if err := st.NomadServer.Proc.Start(); err != nil {
		t.Error(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := st.NomadServer.WaitLeader(ctx); err != nil {
		t.Error(err)
	}
}

func kvDump(t *testing.T, consul *consulapi.Client) string {
	t.Helper()
	pairs, _, err := consul.KV().List("gwnomad/", nil)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, p := range pairs {
		fmt.Fprintf(&b, "%s=%s;", p.Key, p.Value)
	}
	return b.String()
}
