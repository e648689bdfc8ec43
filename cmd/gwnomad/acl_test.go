package main

import (
	"context"
	"os"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
)

// With ACLs on in both Consul and Nomad (Consul denying by default), the
// tokens made from the policies shipped in deploy/acl are enough for
// deploy, plan, status and stop, and for the Nomad clients to register the
// gateways and render their templates; a
// token that lacks a permission gets exit 4 with an error that says which
// agent refused what, nothing is changed, and no token's secret is printed.
func TestDeployWithLeastPrivilegeTokens(t *testing.T) {
	// The Nomad clients' Consul integration (service registration, the
	// template's KV reads) uses a token of deploy/acl's policy for it too.
	nomadClientRules := readFile(t, "../../deploy/acl/consul-nomad-client.policy.hcl")
	st := testenv.Start(t, devstack.Config{NomadClients: 1, ACL: true,
		NomadConsulToken: func(_ context.Context, c *consulapi.Client) (string, error) {
			if _, _, err := c.ACL().PolicyCreate(&consulapi.ACLPolicy{Name: "nomad-client", Rules: nomadClientRules}, nil); err != nil {
				return "", err
			}
			tok, _, err := c.ACL().TokenCreate(&consulapi.ACLToken{Policies: []*consulapi.ACLTokenPolicyLink{{Name: "nomad-client"}}}, nil)
			if err != nil {
				return "", err
			}
			return tok.SecretID, nil
		}})
	consul, nomad := st.ConsulAPI(), st.NomadAPI() // management tokens
	for _, kv := range st.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}

	// The least-privilege tokens, from the files an SRE would apply.
	consulToken := consulTokenFor(t, consul, "gwnomad", readFile(t, "../../deploy/acl/consul-gwnomad.policy.hcl"))
	nomadToken := nomadTokenFor(t, nomad, "gwnomad", readFile(t, "../../deploy/acl/nomad-gwnomad.policy.hcl"))
	// Tokens that each lack one permission gwnomad needs.
	consulReadOnly := consulTokenFor(t, consul, "kv-read", `key_prefix "gwnomad/" { policy = "read" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }`)
	nomadReadOnly := nomadTokenFor(t, nomad, "read-only", `namespace "default" { capabilities = ["list-jobs", "read-job"] }
node { policy = "read" }`)
	secrets := []string{consulToken, nomadToken, consulReadOnly, nomadReadOnly,
		devstack.ACLManagementToken, devstack.NomadACLManagementToken}
	use := func(t *testing.T, consulSecret, nomadSecret string) {
		t.Setenv("CONSUL_HTTP_TOKEN", consulSecret)
		t.Setenv("NOMAD_TOKEN", nomadSecret)
	}
	noSecrets := func(t *testing.T, outputs ...string) {
		t.Helper()
		for _, o := range outputs {
			for _, s := range secrets {
				if strings.Contains(o, s) {
					t.Errorf("a token's secret is printed:\n%s", o)
				}
			}
		}
	}

	dir := t.TempDir()
	base := mustReplace(t, testSpec(t), "count = 3", "count = 1")
	v1 := writeSpec(t, dir, "v1.toml", base)
	v2 := writeSpec(t, dir, "v2.toml", mustReplace(t, base,
		"https://km.am.wso2.com:9443/services/", "https://km2.am.wso2.com:9443/services/"))

	t.Run("the deploy/acl policies are enough", func(t *testing.T) {
		use(t, consulToken, nomadToken)
		code, out, errs := gw(t, "deploy", "-f", v1)
		if code != exitOK || !strings.Contains(out, "1 of 1 nodes ready") {
			t.Fatalf("deploy: exit %d, want 0 with 1 of 1 nodes ready\n%s\n%s", code, out, errs)
		}
		noSecrets(t, out, errs)
		code, out, errs = gw(t, "status", "-f", v1)
		if code != exitOK || !strings.Contains(out, "passing") {
			t.Fatalf("status: exit %d, want 0 with passing checks\n%s\n%s", code, out, errs)
		}
		code, out, errs = gw(t, "plan", "-f", v2)
		if code != exitFailed || !strings.Contains(out, "km2.am.wso2.com") {
			t.Fatalf("plan: exit %d, want 1 (changes) naming the new value\n%s\n%s", code, out, errs)
		}
	})

	for _, tc := range []struct {
		name                string
		consulTok, nomadTok string
		want                []string // in stderr
	}{
		{"Consul token that cannot write KV", consulReadOnly, nomadToken,
			[]string{"Consul at " + st.Consul.HTTPAddr + ": permission denied", "CONSUL_HTTP_TOKEN", "may not write gwnomad/apim-gw/"}},
		{"Nomad token that cannot submit jobs", consulToken, nomadReadOnly,
			[]string{"Nomad at http://" + st.NomadServer.HTTPAddr + ": permission denied", "NOMAD_TOKEN"}},
	} {
		t.Run(tc.name+": exit 4, nothing changed", func(t *testing.T) {
			use(t, tc.consulTok, tc.nomadTok)
			before, version := kvDump(t, consul), jobVersion(t, nomad)
			code, out, errs := gw(t, "deploy", "-f", v2)
			if code != exitUnreachable {
				t.Fatalf("deploy: exit %d, want 4\n%s\n%s", code, out, errs)
			}
			for _, want := range append(tc.want, "nothing was changed") {
				if !strings.Contains(errs, want) {
					t.Errorf("the error lacks %q:\n%s", want, errs)
				}
			}
			noSecrets(t, out, errs)
			if after := kvDump(t, consul); after != before {
				t.Errorf("KV changed:\nbefore %s\nafter %s", before, after)
			}
			if v := jobVersion(t, nomad); v != version {
				t.Errorf("job version %d, was %d", v, version)
			}
		})
	}

	t.Run("logs with the deploy/acl policies; without read-logs exit 4", func(t *testing.T) {
		use(t, consulToken, nomadToken)
		code, out, errs := gw(t, "logs", "--spec", v1, "--stderr", "--tail", "5")
		if code != exitOK || !strings.Contains(out, "gatewaysim: ") {
			t.Fatalf("logs: exit %d, want 0 with the gateway's stderr\n%s\n%s", code, out, errs)
		}
		noSecrets(t, out, errs)
		use(t, consulToken, nomadReadOnly) // may read the job, not its logs
		code, out, errs = gw(t, "logs", "--spec", v1, "--stderr")
		if code != exitUnreachable || !strings.Contains(errs, "permission denied") || !strings.Contains(errs, "NOMAD_TOKEN") {
			t.Fatalf("logs without read-logs: exit %d, want 4 saying the token may not\n%s\n%s", code, out, errs)
		}
		noSecrets(t, out, errs)
	})

	t.Run("restart with the deploy/acl policies; without alloc-lifecycle exit 4", func(t *testing.T) {
		use(t, consulToken, nomadToken)
		code, out, errs := gw(t, "restart", "-f", v1, "--lb-service", "")
		if code != exitOK {
			t.Fatalf("restart: exit %d, want 0\n%s\n%s", code, out, errs)
		}
		noSecrets(t, out, errs)
		use(t, consulReadOnly, nomadToken) // may not put the node in maintenance
		code, out, errs = gw(t, "restart", "-f", v1, "--lb-service", "")
		if code != exitUnreachable || !strings.Contains(errs, "permission denied") {
			t.Fatalf("restart without service:write: exit %d, want 4 saying permission denied\n%s\n%s", code, out, errs)
		}
		noSecrets(t, out, errs)
	})

	t.Run("stop with the deploy/acl policies", func(t *testing.T) {
		use(t, consulToken, nomadToken)
		code, out, errs := gw(t, "stop", "-f", v1)
		if code != exitOK {
			t.Fatalf("stop: exit %d, want 0\n%s\n%s", code, out, errs)
		}
		noSecrets(t, out, errs)
		job, _, err := nomad.Jobs().Info("apim-gw", nil)
		if err == nil && (job.Stop == nil || !*job.Stop) {
			t.Errorf("job not stopped: status %s", *job.Status)
		}
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// consulTokenFor creates a Consul policy from rules and returns the secret
// of a new token with only that policy.
func consulTokenFor(t *testing.T, consul *consulapi.Client, name, rules string) string {
	t.Helper()
	if _, _, err := consul.ACL().PolicyCreate(&consulapi.ACLPolicy{Name: name, Rules: rules}, nil); err != nil {
		t.Fatalf("consul policy %s: %v", name, err)
	}
	tok, _, err := consul.ACL().TokenCreate(&consulapi.ACLToken{Policies: []*consulapi.ACLTokenPolicyLink{{Name: name}}}, nil)
	if err != nil {
		t.Fatalf("consul token %s: %v", name, err)
	}
	return tok.SecretID
}

// nomadTokenFor does the same in Nomad.
func nomadTokenFor(t *testing.T, nomad *nomadapi.Client, name, rules string) string {
	t.Helper()
	if _, err := nomad.ACLPolicies().Upsert(&nomadapi.ACLPolicy{Name: name, Rules: rules}, nil); err != nil {
		t.Fatalf("nomad policy %s: %v", name, err)
	}
	tok, _, err := nomad.ACLTokens().Create(&nomadapi.ACLToken{Name: name, Type: "client", Policies: []string{name}}, nil)
	if err != nil {
		t.Fatalf("nomad token %s: %v", name, err)
	}
	return tok.SecretID
}

func jobVersion(t *testing.T, nomad *nomadapi.Client) uint64 {
	t.Helper()
	job, _, err := nomad.Jobs().Info("apim-gw", nil)
	if err != nil {
		t.Fatal(err)
	}
	return *job.Version
}
