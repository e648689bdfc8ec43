package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs gwnomad in-process with args and returns exit code, stdout, stderr.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	c, ok := commands[args[0]]
	if !ok {
		code := run(args, &out, &errb)
		return code, out.String(), errb.String()
	}
	code := c.run(context.Background(), args[1:], &out, &errb)
	return code, out.String(), errb.String()
}

func TestInitWritesTheDefaultSpecOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gwnomad.toml")
	if code, _, stderr := runCLI(t, "init", "-f", path); code != exitOK {
		t.Fatalf("init: exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), `hostname = "gw.am.wso2.com"`) {
		t.Fatalf("written spec: %v\n%s", err, b)
	}
	if code, _, stderr := runCLI(t, "init", "-f", path); code != exitFailed || !strings.Contains(stderr, "--force") {
		t.Errorf("init over an existing file: exit %d, %q; want 1 and a hint at --force", code, stderr)
	}
	if code, _, _ := runCLI(t, "init", "-f", path, "--force"); code != exitOK {
		t.Errorf("init --force: exit %d", code)
	}
	// What init wrote renders to the same job as the embedded default.
	_, fromFile, _ := runCLI(t, "render", "job", "-f", path)
	_, embedded, _ := runCLI(t, "render", "job")
	if fromFile == "" || fromFile != embedded {
		t.Errorf("the written spec renders differently from the embedded one")
	}
}

func TestRenderJobJSON(t *testing.T) {
	code, stdout, stderr := runCLI(t, "render", "job", "-o", "json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var v struct {
		Job struct {
			ID         string
			TaskGroups []struct{ Count int }
		}
	}
	if err := json.Unmarshal([]byte(stdout), &v); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	if v.Job.ID != "apim-gw" || len(v.Job.TaskGroups) != 1 || v.Job.TaskGroups[0].Count != 3 {
		t.Errorf("job: %+v", v.Job)
	}
}

func TestRenderConfigOfflineRedactsSecrets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gwnomad.toml")
	spec := `[gateway]
driver = "exec"
command = "/bin/gw"
[config]
"super_admin".username = "admin"
"super_admin".password = "hunter2-very-secret"
`
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "render", "config", "-f", path, "--offline")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if strings.Contains(stdout+stderr, "hunter2") {
		t.Fatalf("a secret was printed:\n%s", stdout)
	}
	for _, want := range []string{`hostname = "gw.am.wso2.com"`, `username = "admin"`, "password"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("rendered config lacks %q:\n%s", want, stdout)
		}
	}
}

func TestBadSpecExitsInvalidAndNamesTheLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(path, []byte("[gateway]\ncount = 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "render", "job", "-f", path)
	if code != exitInvalid {
		t.Errorf("exit %d, want %d", code, exitInvalid)
	}
	if !strings.Contains(stderr, "bad.toml:2:") || !strings.Contains(stderr, "gateway.count") {
		t.Errorf("error does not name file:line and key: %q", stderr)
	}
}

// lb.toml gets the same errors as the spec: file:line:column and key, every
// problem at once, exit 3; a value from a flag says so; the Consul token in
// the file never shows.
func TestBadLBConfigExitsInvalidAndNamesTheLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lb.toml")
	if err := os.WriteFile(path, []byte(`[consul]
token = "s3cr3t-token"
[proxy]
tries = 0
[[routes]]
hosts = ["gw.am.wso2.com"]
policy = "random"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "lb", "--config", path, "--check", "--tls-mode", "bogus")
	if code != exitInvalid || stdout != "" {
		t.Errorf("exit %d (want %d), stdout %q", code, exitInvalid, stdout)
	}
	for _, want := range []string{
		"tls.mode: \"bogus\": want \"off\", \"files\" or \"acme\" (set on the command line)",
		"lb.toml:4:1: proxy.tries: must be at least 1 (got 0)",
		"lb.toml:7:1: routes[0].policy: \"random\"",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if err := os.WriteFile(path, []byte("[consul]\ntoken = \"s3cr3t-token\"\ntokn = \"s3cr3t-token\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "lb", "--config", path, "--check")
	if code != exitInvalid || !strings.Contains(stderr, `lb.toml:3:1: consul.tokn: unknown key (did you mean "consul.token"?)`) {
		t.Errorf("exit %d: %s", code, stderr)
	}
	if strings.Contains(stderr, "s3cr3t") {
		t.Errorf("the token shows in an error: %s", stderr)
	}
}

func TestUnknownCommand(t *testing.T) {
	if code, _, stderr := runCLI(t, "frobnicate"); code != exitInvalid || !strings.Contains(stderr, "unknown command") {
		t.Errorf("exit %d, %q", code, stderr)
	}
}
