package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/nomad/api"
	"github.com/pelletier/go-toml/v2"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/spec"
	"github.com/gwnomad/gwnomad/templates"
)

// TestJobsOnRealNomad starts a real cluster (Consul, a Nomad server, two
// clients sharing the host volume) once and runs, against it:
//   - every golden job JSON through Nomad's Jobs().Validate;
//   - the job built from the demo spec with the simulator as the task: it
//     renders deployment.toml from Consul KV and both checks pass in Consul
//     on both nodes.
func TestJobsOnRealNomad(t *testing.T) {
	st := testenv.Cluster(t, testenv.Options{Clients: 2})
	nomad := st.NomadAPI()

	t.Run("golden JSON validates", func(t *testing.T) {
		// testdata/docker.toml deploys into its own namespace.
		if _, err := nomad.Namespaces().Register(&api.Namespace{Name: "gateways"}, nil); err != nil {
			t.Fatal(err)
		}
		for _, name := range goldenSpecs {
			b, err := os.ReadFile(filepath.Join("testdata", name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var req struct{ Job *api.Job }
			if err := json.Unmarshal(b, &req); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			resp, _, err := nomad.Jobs().Validate(req.Job, nil)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			if resp.Error != "" || len(resp.ValidationErrors) > 0 {
				t.Errorf("%s: Nomad rejects the job: %s %v", name, resp.Error, resp.ValidationErrors)
			}
			if resp.Warnings != "" {
				t.Logf("%s: Nomad warns: %s", name, resp.Warnings)
			}
		}
	})

	t.Run("nomad job validate accepts the JSON and HCL files", func(t *testing.T) {
		bin, err := devstack.FindBinDir()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range goldenSpecs {
			for _, args := range [][]string{{"-json", name + ".json"}, {name + ".hcl"}} {
				file := filepath.Join("testdata", args[len(args)-1])
				cmdArgs := append([]string{"job", "validate", "-address=http://" + st.NomadServer.HTTPAddr}, args[:len(args)-1]...)
				cmd := exec.Command(filepath.Join(bin, "nomad"), append(cmdArgs, file)...)
				cmd.Env = append(os.Environ(), "NOMAD_ADDR=", "NOMAD_TOKEN=")
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("nomad job validate %s: %v\n%s", file, err, out)
				}
			}
		}
	})

	t.Run("simulator runs healthy", func(t *testing.T) {
		s, _, err := spec.Default()
		if err != nil {
			t.Fatal(err)
		}
		s.Gateway.Count = len(st.NomadClients)
		runGateways(t, st.ConsulAPI(), nomad, s)
	})
}

func runGateways(t *testing.T, consul *consulapi.Client, nomad *api.Client, s *spec.Spec) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// What deploy does: the KV first, then the job.
	kv, err := templates.KV(s)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range kv {
		if _, err := consul.KV().Put(&consulapi.KVPair{Key: k, Value: v}, (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
	}
	job, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := nomad.Jobs().Register(job, nil); err != nil {
		t.Fatalf("registering the job: %v", err)
	}
	t.Cleanup(func() { nomad.Jobs().Deregister(*job.ID, true, nil) })

	// Both checks of every node pass in Consul.
	want := s.Gateway.Count
	var entries []*consulapi.ServiceEntry
	testenv.WaitFor(t, 4*time.Minute, fmt.Sprintf("%d gateways passing both checks in Consul", want), func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var err error
		entries, _, err = consul.Health().Service(s.Gateway.Service, ClusterTag(s), true, nil)
		if err != nil {
			return err
		}
		if len(entries) != want {
			return fmt.Errorf("%d passing instances%s", len(entries), allocStates(nomad, *job.ID))
		}
		return nil
	})

	nodes := map[string]bool{}
	for _, e := range entries {
		names := map[string]string{}
		for _, c := range e.Checks {
			names[c.Name] = c.Status
		}
		for _, n := range []string{LivenessCheckName, ReadinessCheckName} {
			if names[n] != consulapi.HealthPassing {
				t.Errorf("%s: check %q is %q", e.Service.ID, n, names[n])
			}
		}
		m := e.Service.Meta
		if m["cluster"] != s.Cluster.Name || m["node"] == "" || strings.Contains(m["node"], "${") {
			t.Errorf("service meta not interpolated: %v", m)
		}
		for _, label := range Labels(s) {
			if p := m[MetaPortPrefix+label]; p == "" || strings.Contains(p, "${") {
				t.Errorf("meta %s%s = %q", MetaPortPrefix, label, p)
			}
		}
		if fmt.Sprint(e.Service.Port) != m["port_passthru_https"] {
			t.Errorf("service port %d, meta port_passthru_https %s", e.Service.Port, m["port_passthru_https"])
		}
		nodes[m["node"]] = true
	}
	if len(nodes) != want {
		t.Errorf("instances on %d distinct clients, want %d", len(nodes), want)
	}

	// Each allocation rendered deployment.toml from KV with its own ports.
	allocs, _, err := nomad.Jobs().Allocations(*job.ID, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, stub := range allocs {
		if stub.ClientStatus != api.AllocClientStatusRunning {
			continue
		}
		alloc, _, err := nomad.Allocations().Info(stub.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := nomad.AllocFS().Cat(alloc, filepath.Join(TaskName, ConfigPath(s)), nil)
		if err != nil {
			t.Fatalf("reading deployment.toml of %s: %v", stub.ID, err)
		}
		var doc struct {
			Server struct {
				Hostname string `toml:"hostname"`
				NodeIP   string `toml:"node_ip"`
			} `toml:"server"`
			Transport struct {
				HTTP struct {
					Properties struct {
						Port int `toml:"port"`
					} `toml:"properties"`
				} `toml:"http"`
			} `toml:"transport"`
			APIM struct {
				KeyManager struct {
					ServiceURL string `toml:"service_url"`
				} `toml:"key_manager"`
			} `toml:"apim"`
		}
		err = toml.NewDecoder(rc).Decode(&doc)
		rc.Close()
		if err != nil {
			t.Fatalf("deployment.toml of %s: %v", stub.ID, err)
		}
		var httpPort int
		for _, p := range alloc.AllocatedResources.Shared.Ports {
			if p.Label == "http" {
				httpPort = p.Value
			}
		}
		if doc.Server.Hostname != s.Gateway.Hostname || doc.Server.NodeIP != "127.0.0.1" ||
			doc.Transport.HTTP.Properties.Port != httpPort-s.Gateway.Offset || httpPort == 0 ||
			doc.APIM.KeyManager.ServiceURL != "https://km.am.wso2.com:9443/services/" {
			t.Errorf("deployment.toml of %s: %+v (http port allocated %d)", stub.ID, doc, httpPort)
		}
	}
}

func allocStates(nomad *api.Client, jobID string) string {
	allocs, _, err := nomad.Jobs().Allocations(jobID, false, nil)
	if err != nil {
		return ""
	}
	var b strings.Builder
	for _, a := range allocs {
		fmt.Fprintf(&b, "; alloc %s on %s: %s", a.ID[:8], a.NodeName, a.ClientStatus)
		for task, ts := range a.TaskStates {
			if n := len(ts.Events); n > 0 {
				fmt.Fprintf(&b, " (%s: %s %s)", task, ts.Events[n-1].Type, ts.Events[n-1].DisplayMessage)
			}
		}
	}
	return b.String()
}

// TestHCLMatchesJSON has the real nomad binary parse each golden HCL file
// (`nomad job run -output`, no agent needed) and compares the job it gets
// with the golden JSON, both canonicalized by the Nomad API package.
func TestHCLMatchesJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("needs bin/nomad (skipped with -short)")
	}
	bin, err := devstack.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range goldenSpecs {
		out, err := exec.Command(filepath.Join(bin, "nomad"), "job", "run", "-output", filepath.Join("testdata", name+".hcl")).Output()
		if err != nil {
			t.Fatalf("%s.hcl: %v", name, err)
		}
		var fromHCL, fromJSON struct{ Job *api.Job }
		if err := json.Unmarshal(out, &fromHCL); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join("testdata", name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &fromJSON); err != nil {
			t.Fatal(err)
		}
		fromHCL.Job.Canonicalize()
		fromJSON.Job.Canonicalize()
		h, _ := JSON(fromHCL.Job)
		j, _ := JSON(fromJSON.Job)
		if string(h) != string(j) {
			t.Errorf("%s.hcl and %s.json differ:\n%s", name, name, firstDiff(string(h), string(j)))
		}
	}
}
