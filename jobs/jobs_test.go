package jobs

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/spec"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenSpecs are the specs under testdata whose job JSON (and HCL) is
// checked in.
var goldenSpecs = []string{"minimal", "docker", "exec", "clustering", "canaries"}

func build(t testing.TB, name string) *api.Job {
	t.Helper()
	s, _, err := spec.Load(filepath.Join("testdata", name+".toml"))
	if err != nil {
		t.Fatal(err)
	}
	job, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	return job
}

func checkGolden(t *testing.T, file string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", file)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (go test ./jobs -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (review, then go test ./jobs -update):\n%s", p, firstDiff(string(got), string(want)))
	}
}

func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + itoa(i+1) + ":\n got: " + gl + "\nwant: " + wl
		}
	}
	return ""
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestGoldenJobs(t *testing.T) {
	for _, name := range goldenSpecs {
		t.Run(name, func(t *testing.T) {
			job := build(t, name)
			b, err := JSON(job)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, name+".json", b)
			checkGolden(t, name+".hcl", HCL(job))
		})
	}
}

func TestJobShape(t *testing.T) {
	job := build(t, "clustering")
	tg := job.TaskGroups[0]
	if *tg.Count != 3 || tg.Constraints[0].Operand != "distinct_hosts" {
		t.Errorf("group: count %d constraint %+v", *tg.Count, tg.Constraints[0])
	}
	var static []string
	for _, p := range tg.Networks[0].ReservedPorts {
		static = append(static, p.Label+"="+itoa(p.Value))
	}
	if got := strings.Join(static, " "); got != "http=9765 https=9445 passthru_http=8282 passthru_https=8245 clustering=4002" {
		t.Errorf("reserved ports (port + offset 2): %s", got)
	}
	task := tg.Tasks[0]
	if *task.Templates[0].ChangeMode != "noop" {
		t.Errorf("change_mode %q: a restart would hit every node at once", *task.Templates[0].ChangeMode)
	}
	if d := *task.Templates[0].DestPath; d != "local/deployment.toml" {
		t.Errorf("docker template destination %q", d)
	}
	if m := task.VolumeMounts[0]; *m.Destination != "/home/wso2carbon/wso2am-4.2.0/repository/deployment/server" {
		t.Errorf("volume mount at %q", *m.Destination)
	}
	svc := task.Services[0]
	if svc.Meta["port_clustering"] != "${NOMAD_HOST_PORT_clustering}" || svc.PortLabel != "passthru_https" {
		t.Errorf("service: port %q meta %v", svc.PortLabel, svc.Meta)
	}
	if c := svc.Checks[0]; c.CheckRestart == nil || c.PortLabel != "http" || c.Path != LivenessPath {
		t.Errorf("liveness check %+v", c)
	}
	if c := svc.Checks[1]; c.CheckRestart != nil || c.PortLabel != "https" || c.Protocol != "https" || !c.TLSSkipVerify {
		t.Errorf("readiness check %+v", c)
	}
	if *tg.Update.HealthCheck != "checks" {
		t.Errorf("update health_check %q", *tg.Update.HealthCheck)
	}

	exec := build(t, "exec").TaskGroups[0].Tasks[0]
	if d := *exec.Templates[0].DestPath; d != "/home/wso2carbon/wso2am-4.2.0/repository/conf/deployment.toml" {
		t.Errorf("exec template destination %q", d)
	}
}

// A [config] change is a new job version whose template reads another
// configuration folder: the running version keeps reading its own.
func TestConfigChangeIsANewVersionReadingItsOwnFolder(t *testing.T) {
	parse := func(doc string) *api.Job {
		s, _, err := spec.Parse("x.toml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		j, err := Build(s)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	a := parse("[config]\nx = 1\n")
	b := parse("[config]\nx = 2\n")
	if a.Meta[MetaConfigChecksum] == b.Meta[MetaConfigChecksum] {
		t.Fatal("a [config] change left the checksum alone: it would not roll out")
	}
	pa, pb := a.Meta[MetaKVPrefix], b.Meta[MetaKVPrefix]
	if pa == pb {
		t.Fatalf("both versions read %s", pa)
	}
	ta, tb := *a.TaskGroups[0].Tasks[0].Templates[0].EmbeddedTmpl, *b.TaskGroups[0].Tasks[0].Templates[0].EmbeddedTmpl
	if !strings.Contains(ta, `{{ key "`+pa+`x" }}`) || !strings.Contains(tb, `{{ key "`+pb+`x" }}`) {
		t.Errorf("the templates do not read their own folders (%s, %s):\n%s\n%s", pa, pb, ta, tb)
	}
	if strings.ReplaceAll(ta, pa, "") != strings.ReplaceAll(tb, pb, "") {
		t.Error("the templates differ in more than the folder")
	}
}
