package testenv_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/internal/gatewaysim"
	"github.com/gwnomad/gwnomad/internal/testenv"
)

// The foundation test of the issue: a 2-node job of the simulator on the exec
// driver, the shared host volume mounted at <home>/repository/deployment/server,
// deployment.toml rendered by a Nomad template block from a Consul KV value,
// both Consul checks passing on both nodes, and an API file written once into
// the shared directory served by both nodes. The job is written by hand here
// on purpose: it checks the harness, not package jobs.
func TestClusterRunsSimulatorOnSharedVolume(t *testing.T) {
	st := testenv.Cluster(t, testenv.Options{Clients: 2})
	consul, nomad := st.ConsulAPI(), st.NomadAPI()

	if _, err := consul.KV().Put(&consulapi.KVPair{Key: "gwnomad/harness/hostname", Value: []byte("gw.am.wso2.com")}, nil); err != nil {
		t.Fatal(err)
	}
	job := simulatorJob("harness-gw", 2)
	if _, _, err := nomad.Jobs().Register(job, nil); err != nil {
		t.Fatalf("registering job: %v", err)
	}

	// Both instances pass both checks (liveness and readiness).
	var passing []*consulapi.ServiceEntry
	testenv.WaitFor(t, 3*time.Minute, "2 passing instances in Consul", func() error {
		var err error
		passing, _, err = consul.Health().Service("harness-gw", "", true, nil)
		if err != nil {
			return err
		}
		if len(passing) != 2 {
			return fmt.Errorf("%d passing instances; allocations: %s", len(passing), allocSummary(nomad, "harness-gw"))
		}
		for _, e := range passing {
			if len(e.Checks) < 3 { // serf health + liveness + readiness
				return fmt.Errorf("instance %s has %d checks", e.Service.ID, len(e.Checks))
			}
		}
		return nil
	})
	nodes := map[string]bool{}
	for _, e := range passing {
		nodes[e.Node.Node] = true
	}
	if len(nodes) != 2 {
		t.Fatalf("instances share a Consul node: %v", nodes)
	}

	// All clients share 127.0.0.1, so their dynamic port ranges must not
	// overlap: otherwise Nomad gives two nodes' gateways the same port and
	// one of them fails to bind (seen in CI).
	stubs, _, err := nomad.Nodes().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	type portRange struct {
		node   string
		lo, hi int
	}
	var ranges []portRange
	for _, s := range stubs {
		n, _, err := nomad.Nodes().Info(s.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		r := portRange{n.Name, n.NodeResources.MinDynamicPort, n.NodeResources.MaxDynamicPort}
		for _, o := range ranges {
			if r.lo <= o.hi && o.lo <= r.hi {
				t.Fatalf("dynamic port ranges overlap: %s %d-%d and %s %d-%d", r.node, r.lo, r.hi, o.node, o.lo, o.hi)
			}
		}
		ranges = append(ranges, r)
	}

	// The rendered deployment.toml carries the KV value.
	allocs, _, err := nomad.Jobs().Allocations("harness-gw", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range allocs {
		if a.ClientStatus != "running" {
			continue
		}
		b, err := readAllocFile(nomad, a.ID, "gateway/wso2am/repository/conf/deployment.toml")
		if err != nil {
			t.Fatalf("reading rendered deployment.toml: %v", err)
		}
		if !strings.Contains(b, `hostname = "gw.am.wso2.com"`) {
			t.Fatalf("rendered deployment.toml lacks the KV value:\n%s", b)
		}
	}

	// One file written once into the shared directory is served by both.
	apiDir := filepath.Join(st.SharedDir, "synapse-configs", "default", "api")
	if err := os.MkdirAll(apiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(apiDir, "PizzaShackAPI.xml"), gatewaysim.SampleAPI, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, e := range passing {
		url := fmt.Sprintf("http://%s:%d/pizzashack/1.0.0/menu", e.Service.Address, e.Service.Port)
		testenv.WaitFor(t, 30*time.Second, "API served by "+e.Node.Node, func() error {
			resp, err := http.Get(url)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				return fmt.Errorf("%s: %s %s", url, resp.Status, body)
			}
			if resp.Header.Get("X-Gateway-Node") == "" {
				return fmt.Errorf("%s: no X-Gateway-Node header", url)
			}
			return nil
		})
	}
}

func simulatorJob(name string, count int) *nomadapi.Job {
	job := nomadapi.NewServiceJob(name, name, "global", 50)
	job.Datacenters = []string{"dc1"}
	tg := nomadapi.NewTaskGroup("gateway", count)
	tg.Constraints = []*nomadapi.Constraint{nomadapi.NewConstraint("", "distinct_hosts", "true")}
	tg.Networks = []*nomadapi.NetworkResource{{DynamicPorts: []nomadapi.Port{
		{Label: "http"}, {Label: "https"}, {Label: "passthru_http"}, {Label: "passthru_https"},
	}}}
	tg.Volumes = map[string]*nomadapi.VolumeRequest{
		"shared": {Name: "shared", Type: "host", Source: "apim-shared"},
	}
	task := nomadapi.NewTask("gateway", "exec")
	task.Config = map[string]any{
		"command": "/opt/gwnomad/bin/gatewaysim",
		"args":    []string{"-home", "/wso2am", "-node", "${node.unique.name}"},
	}
	task.VolumeMounts = []*nomadapi.VolumeMount{{
		Volume: ptr("shared"), Destination: ptr("/wso2am/repository/deployment/server"),
	}}
	task.Templates = []*nomadapi.Template{{
		DestPath:   ptr("wso2am/repository/conf/deployment.toml"),
		ChangeMode: ptr("noop"),
		EmbeddedTmpl: ptr(`[server]
hostname = "{{ key "gwnomad/harness/hostname" }}"
node_ip = "{{ env "NOMAD_IP_http" }}"
[transport.http]
properties.port = {{ env "NOMAD_PORT_http" }}
[transport.https]
properties.port = {{ env "NOMAD_PORT_https" }}
[transport.passthru_http]
listener.port = {{ env "NOMAD_PORT_passthru_http" }}
[transport.passthru_https]
listener.port = {{ env "NOMAD_PORT_passthru_https" }}
`),
	}}
	task.Resources = &nomadapi.Resources{CPU: ptr(100), MemoryMB: ptr(64)}
	task.Services = []*nomadapi.Service{{
		Name: name, PortLabel: "passthru_http", Provider: "consul",
		Checks: []nomadapi.ServiceCheck{
			{Name: "liveness", Type: "http", PortLabel: "http", Path: "/services/Version", Interval: time.Second, Timeout: time.Second},
			{Name: "readiness", Type: "http", Protocol: "https", TLSSkipVerify: true, PortLabel: "https",
				Path: "/api/am/gateway/v2/server-startup-healthcheck", Interval: time.Second, Timeout: time.Second},
		},
	}}
	tg.Tasks = []*nomadapi.Task{task}
	job.TaskGroups = []*nomadapi.TaskGroup{tg}
	return job
}

func readAllocFile(nomad *nomadapi.Client, allocID, path string) (string, error) {
	alloc, _, err := nomad.Allocations().Info(allocID, nil)
	if err != nil {
		return "", err
	}
	r, err := nomad.AllocFS().Cat(alloc, path, nil)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	return string(b), err
}

func allocSummary(nomad *nomadapi.Client, job string) string {
	allocs, _, err := nomad.Jobs().Allocations(job, false, nil)
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, a := range allocs {
		s := a.ClientStatus
		for _, ts := range a.TaskStates {
			if n := len(ts.Events); n > 0 {
				s += ": " + ts.Events[n-1].DisplayMessage
			}
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func ptr[T any](v T) *T { return &v }
