package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/spec"
)

// buildGwnomad builds the command into a temporary directory with the
// given -ldflags, VCS stamping on (this workplace's go env turns it off,
// the Makefile turns it on), and returns the binary's path.
func buildGwnomad(t *testing.T, ldflags string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds gwnomad (skipped with -short)")
	}
	bin := filepath.Join(t.TempDir(), "gwnomad")
	cmd := exec.Command("go", "build", "-buildvcs=auto", "-ldflags", ldflags, "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func versionJSON(t *testing.T, out string) Versions {
	t.Helper()
	var v Versions
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("version -o json: %v\n%s", err, out)
	}
	return v
}

func TestVersionFlagAndClient(t *testing.T) {
	for _, arg := range []string{"--version", "-version", "-v"} {
		var out, errb bytes.Buffer
		if code := run([]string{arg}, &out, &errb); code != exitOK {
			t.Fatalf("gwnomad %s: exit %d\n%s", arg, code, errb.String())
		}
		if l := out.String(); !strings.HasPrefix(l, "gwnomad ") || !strings.Contains(l, runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH) || strings.Count(l, "\n") != 1 {
			t.Errorf("gwnomad %s: %q, want one line with the Go version and platform", arg, l)
		}
	}
	code, out, errs := gw(t, "version", "--client", "-o", "json")
	if code != exitOK || errs != "" {
		t.Fatalf("version --client: exit %d\n%s", code, errs)
	}
	v := versionJSON(t, out)
	if v.Gwnomad.Version == "" || v.Gwnomad.Go != runtime.Version() || v.Nomad != nil || v.Job != nil {
		t.Errorf("version --client -o json: %+v", v)
	}
	for _, args := range [][]string{{"--client", "--cluster"}, {"-o", "yaml"}, {"extra"}, {"-f", "/nonexistent.toml"}} {
		if code, _, _ := gw(t, append([]string{"version"}, args...)...); code != exitInvalid {
			t.Errorf("version %v: exit %d, want 3", args, code)
		}
	}
	if code, out, _ := gw(t, "version", "--help"); code != exitOK || !strings.Contains(out, "--cluster") {
		t.Errorf("version --help: exit %d\n%s", code, out)
	}
}

// Nothing listens: version says so and exits 0, unless --cluster.
func TestVersionUnreachable(t *testing.T) {
	t.Setenv("NOMAD_ADDR", "http://127.0.0.1:1")
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
	code, out, errs := gw(t, "version")
	if code != exitOK {
		t.Fatalf("version: exit %d, want 0\n%s\n%s", code, out, errs)
	}
	for _, want := range []string{"gwnomad  ", "nomad    unreachable at http://127.0.0.1:1", "consul   unreachable at 127.0.0.1:1", "job      unknown"} {
		if !strings.Contains(out, want) {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
	code, out, errs = gw(t, "version", "--cluster", "-o", "json")
	if code != exitUnreachable || !strings.Contains(errs, "NOMAD_ADDR") {
		t.Fatalf("version --cluster: exit %d, want 4\n%s", code, errs)
	}
	if v := versionJSON(t, out); v.Nomad == nil || v.Nomad.Reachable || v.Nomad.Error == "" || v.Consul.Reachable {
		t.Errorf("version --cluster -o json: %s", out)
	}
}

// The binary built as the Makefile builds it: the stamped version and the
// commit from the build info.
func TestVersionStamped(t *testing.T) {
	out, err := exec.Command("make", "-n", "-C", "../..", "build", "VERSION=v1.2.3-make").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `-X main.version=v1.2.3-make`) {
		t.Errorf("make build does not stamp main.version:\n%s", out)
	}
	bin := buildGwnomad(t, "-X main.version=v9.8.7-test")
	line, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(line), "gwnomad v9.8.7-test ") {
		t.Errorf("--version: %q", line)
	}
	js, err := exec.Command(bin, "version", "--client", "-o", "json").Output()
	if err != nil {
		t.Fatal(err)
	}
	v := versionJSON(t, string(js))
	if err := exec.Command("git", "rev-parse", "HEAD").Run(); err != nil {
		t.Logf("no git checkout (%v): commit not checked", err)
		return
	}
	// HEAD itself may have moved on since the build (others commit too).
	if b := v.Gwnomad; len(b.Commit) != 40 || b.CommitTime == "" || b.Modified == nil ||
		exec.Command("git", "merge-base", "--is-ancestor", b.Commit, "HEAD").Run() != nil {
		t.Fatalf("build info: %+v, want HEAD's commit with its time and modified", b)
	}
	if !strings.Contains(string(line), "commit "+v.Gwnomad.Commit[:12]) {
		t.Errorf("--version lacks the commit: %q", line)
	}
}

// Against real agents with ACLs on: the server versions and the job's,
// with the management tokens and with deploy/acl's least-privilege ones;
// a token that may not read the members is reported, exit 4 only with
// --cluster.
func TestVersionCluster(t *testing.T) {
	st := testenv.Start(t, devstack.Config{NomadServer: true, ACL: true})
	consul, nomad := st.ConsulAPI(), st.NomadAPI() // management tokens
	for _, kv := range st.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	nomadVer, consulVer := agentVersion(t, "nomad"), agentVersion(t, "consul")

	s, _, err := spec.Load(writeSpec(t, t.TempDir(), "gw.toml", string(spec.DefaultTOML)))
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs := gw(t, "version", "-o", "json")
	if code != exitOK {
		t.Fatalf("version: exit %d\n%s", code, errs)
	}
	v := versionJSON(t, out)
	if v.Job == nil || v.Job.Registered || v.Job.ID != s.Cluster.Name {
		t.Errorf("job before it is registered: %+v", v.Job)
	}

	// Registered twice: version 1. No client runs it; the versions are Nomad's.
	job, err := jobs.Build(s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		job.Meta["test"] = strings.Repeat("x", i+1)
		if _, _, err := nomad.Jobs().Register(job, nil); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errs = gw(t, "version", "--cluster", "-o", "json")
	if code != exitOK {
		t.Fatalf("version --cluster: exit %d\n%s", code, errs)
	}
	v = versionJSON(t, out)
	if v.Nomad == nil || !v.Nomad.Reachable || len(v.Nomad.Servers) != 1 || strings.Join(v.Nomad.Versions, ",") != nomadVer {
		t.Errorf("nomad: %+v, want one server at %s", v.Nomad, nomadVer)
	}
	if v.Consul == nil || !v.Consul.Reachable || len(v.Consul.Servers) != 1 || strings.Join(v.Consul.Versions, ",") != consulVer {
		t.Errorf("consul: %+v, want one server at %s", v.Consul, consulVer)
	}
	if j := v.Job; j == nil || !j.Registered || j.Version != 1 || j.ProductVersion != s.Gateway.ProductVersion || j.Status == "" || j.SubmitTime == "" {
		t.Errorf("job: %+v, want version 1 of %s", j, s.Gateway.ProductVersion)
	}
	_, text, _ := gw(t, "version")
	for _, want := range []string{
		"nomad    " + nomadVer + " on 1 server at http://" + st.NomadServer.HTTPAddr,
		"consul   " + consulVer + " on 1 server at " + st.Consul.HTTPAddr,
		"job      apim-gw version 1, ",
		"WSO2 API-M " + s.Gateway.ProductVersion,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("version lacks %q:\n%s", want, text)
		}
	}

	// deploy/acl's tokens read the members (node:read).
	t.Setenv("CONSUL_HTTP_TOKEN", consulTokenFor(t, consul, "gwnomad", readFile(t, "../../deploy/acl/consul-gwnomad.policy.hcl")))
	t.Setenv("NOMAD_TOKEN", nomadTokenFor(t, nomad, "gwnomad", readFile(t, "../../deploy/acl/nomad-gwnomad.policy.hcl")))
	if code, out, errs := gw(t, "version", "--cluster", "-o", "json"); code != exitOK {
		t.Errorf("version --cluster with deploy/acl's tokens: exit %d\n%s\n%s", code, out, errs)
	} else if v := versionJSON(t, out); len(v.Nomad.Versions) != 1 || len(v.Consul.Versions) != 1 || v.Job == nil || v.Job.Version != 1 {
		t.Errorf("with deploy/acl's tokens: %s", out)
	}

	// Tokens without node:read.
	t.Setenv("CONSUL_HTTP_TOKEN", consulTokenFor(t, consul, "kv-only", `key_prefix "gwnomad/" { policy = "read" }`))
	t.Setenv("NOMAD_TOKEN", nomadTokenFor(t, nomad, "jobs-only", `namespace "default" { capabilities = ["read-job"] }`))
	code, text, _ = gw(t, "version")
	if code != exitOK || !strings.Contains(text, "nomad    permission denied") {
		t.Errorf("version with a token lacking node:read: exit %d\n%s", code, text)
	}
	// Consul filters the members a token may not read rather than refusing.
	if !strings.Contains(text, "consul   no server listed") && !strings.Contains(text, "consul   permission denied") {
		t.Errorf("consul with a token lacking node:read:\n%s", text)
	}
	if code, _, _ := gw(t, "version", "--cluster"); code != exitUnreachable {
		t.Errorf("version --cluster with a token lacking node:read: exit %d, want 4", code)
	}
}

// agentVersion is what `nomad version` / `consul version` prints: "Nomad
// v1.6.0" -> "1.6.0".
func agentVersion(t *testing.T, name string) string {
	t.Helper()
	dir, err := devstack.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(dir, name), "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		t.Fatalf("%s version: %q", name, out)
	}
	return strings.TrimPrefix(f[1], "v")
}
