package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
	lbconfig "github.com/gwnomad/gwnomad/lb/config"
	"github.com/gwnomad/gwnomad/spec"
)

func glob(t *testing.T, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no files match %s (%v)", pattern, err)
	}
	return files
}

func bin(t *testing.T, name string) string {
	t.Helper()
	dir, err := devstack.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not built (make tools): %v", name, err)
	}
	return p
}

// runOK runs a command and fails the test with its output when it fails.
func runOK(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(append(os.Environ(), "CHECKPOINT_DISABLE=1"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestSpecsParse(t *testing.T) {
	for _, f := range glob(t, "specs/*.toml") {
		if _, warnings, err := spec.Load(f); err != nil {
			t.Errorf("%v", err)
		} else {
			for _, w := range warnings {
				t.Logf("%s: warning: %v", f, w)
			}
		}
	}
}

func TestLBConfigsLoad(t *testing.T) {
	for _, f := range glob(t, "lb/*.toml") {
		cfg, err := lbconfig.Load(f)
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestNomadFilesValidate(t *testing.T) {
	if testing.Short() {
		t.Skip("needs bin/nomad")
	}
	nomad := bin(t, "nomad")
	// No agent: `job validate` parses and checks the job itself.
	env := []string{"NOMAD_ADDR=http://127.0.0.1:1"}
	for _, f := range glob(t, "*/*.nomad.hcl") {
		runOK(t, env, nomad, "job", "validate", f)
	}
	for _, f := range glob(t, "nomad/*.hcl") {
		runOK(t, env, nomad, "config", "validate", f)
	}
}

func TestConsulFilesValidate(t *testing.T) {
	if testing.Short() {
		t.Skip("needs bin/consul")
	}
	consul := bin(t, "consul")
	for _, f := range glob(t, "consul/*.hcl") {
		runOK(t, nil, consul, "validate", f)
	}
}

// TestACLPoliciesApply applies every policy to real agents with ACLs on:
// a policy that Consul or Nomad would refuse fails here first.
func TestACLPoliciesApply(t *testing.T) {
	st := testenv.Start(t, devstack.Config{NomadServer: true, ACL: true})
	consul, nomad := bin(t, "consul"), bin(t, "nomad")
	cenv := []string{"CONSUL_HTTP_ADDR=" + st.Consul.HTTPAddr, "CONSUL_HTTP_TOKEN=" + devstack.ACLManagementToken}
	for _, f := range glob(t, "acl/consul-*.policy.hcl") {
		name := strings.TrimSuffix(filepath.Base(f), ".policy.hcl")
		runOK(t, cenv, consul, "acl", "policy", "create", "-name", name, "-rules", "@"+f)
	}
	nenv := []string{"NOMAD_ADDR=http://" + st.NomadServer.HTTPAddr, "NOMAD_TOKEN=" + devstack.NomadACLManagementToken}
	for _, f := range glob(t, "acl/nomad-*.policy.hcl") {
		name := strings.TrimSuffix(filepath.Base(f), ".policy.hcl")
		runOK(t, nenv, nomad, "acl", "policy", "apply", name, f)
	}
}
