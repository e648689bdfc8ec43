package scheduler

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
)

func TestDiffKVRedactsSecrets(t *testing.T) {
	cur := map[string][]byte{
		"p/apim/key_manager/service_url": []byte(`"https://km:9443/services/"`),
		"p/super_admin/password":         []byte(`"old-secret"`),
		"p/stale":                        []byte(`1`),
	}
	want := map[string][]byte{
		"p/apim/key_manager/service_url": []byte(`"https://km2:9443/services/"`),
		"p/super_admin/password":         []byte(`"new-secret"`),
		"p/db/url":                       []byte(`"$secret{db_url}"`),
		"p/x/creds":                      []byte(`[{user = "u", password = "inline-secret"}]`),
	}
	ch := diffKV(cur, want)
	var b bytes.Buffer
	(&Plan{KV: ch, JobDiff: &nomadapi.JobDiff{Type: "None"}}).Write(&b)
	out := b.String()
	for _, secret := range []string{"old-secret", "new-secret", "db_url", "inline-secret"} {
		if strings.Contains(out, secret) {
			t.Errorf("plan shows secret %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{
		`~ p/apim/key_manager/service_url: "https://km:9443/services/" => "https://km2:9443/services/"`,
		`~ p/super_admin/password: <redacted> => <redacted>`,
		`+ p/db/url = <redacted>`,
		`- p/stale (was 1)`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	// The real value is kept for the transaction.
	for _, c := range ch {
		if c.Key == "p/super_admin/password" && string(c.value) != `"new-secret"` {
			t.Errorf("value to write lost: %q", c.value)
		}
	}
}

func TestExplainMetricNamesVolumeAndConstraint(t *testing.T) {
	lines := explainMetric("gateway", &nomadapi.AllocationMetric{
		NodesEvaluated: 3, NodesFiltered: 3, NodesInPool: 3, CoalescedFailures: 2,
		ConstraintFiltered: map[string]int{"missing compatible host volumes": 2, "${node.unique.id} distinct_hosts": 1},
	}, "apim-shared")
	out := strings.Join(lines, "\n")
	for _, want := range []string{`3 allocation(s) could not be placed`, `missing compatible host volumes (host volume "apim-shared") filtered 2`, `distinct_hosts filtered 1`} {
		if !strings.Contains(out, want) {
			t.Errorf("explanation lacks %q:\n%s", want, out)
		}
	}
}

func TestJobDiffRedactsSecretFields(t *testing.T) {
	lines := formatJobDiff(&nomadapi.JobDiff{Type: "Edited", ID: "apim-gw", TaskGroups: []*nomadapi.TaskGroupDiff{{
		Type: "Edited", Name: "gateway", Tasks: []*nomadapi.TaskDiff{{Type: "Edited", Name: "gateway", Fields: []*nomadapi.FieldDiff{
			{Type: "Edited", Name: "Env[DB_PASSWORD]", Old: "hunter2", New: "hunter3"},
			{Type: "Edited", Name: "Config.args[4]", Old: "", New: "-fail-readiness"},
		}}},
	}}})
	out := strings.Join(lines, "\n")
	if strings.Contains(out, "hunter") || !strings.Contains(out, "-fail-readiness") {
		t.Errorf("job diff:\n%s", out)
	}
}

// A Nomad or Consul that refuses the token: a real agent needs ACLs
// bootstrapped to show it, so a fake answers 403 here.
func TestPermissionDeniedIsUnreachableKind(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "Permission denied", http.StatusForbidden)
	}))
	defer srv.Close()
	nc, _ := nomadapi.NewClient(&nomadapi.Config{Address: srv.URL})
	_, _, err := nc.Jobs().Info("x", nil)
	var ue *UnreachableError
	if e := classify("Nomad", srv.URL, "reading job", err); !errors.As(e, &ue) || !ue.Denied || !strings.Contains(e.Error(), "permission denied") {
		t.Errorf("Nomad 403 classified as %T %v", e, e)
	}
	cc, _ := consulapi.NewClient(&consulapi.Config{Address: strings.TrimPrefix(srv.URL, "http://")})
	_, _, err = cc.KV().Get("x", nil)
	if e := classify("Consul", srv.URL, "reading KV", err); !errors.As(e, &ue) || !ue.Denied {
		t.Errorf("Consul 403 classified as %T %v", e, e)
	}
	// Connection refused.
	nc2, _ := nomadapi.NewClient(&nomadapi.Config{Address: "http://127.0.0.1:1"})
	_, err = nc2.Status().Leader()
	if e := classify("Nomad", "http://127.0.0.1:1", "leader", err); !errors.As(e, &ue) || ue.Denied {
		t.Errorf("connection refused classified as %T %v", e, e)
	}
}

func TestLiveReporterRedrawsBoard(t *testing.T) {
	var b bytes.Buffer
	r := NewLiveReporter(&b)
	yes := true
	r.Report(Event{Type: EventDeployment, Message: "deployment d1 running", Deployment: &DeploymentView{ID: "d1234567890", Status: "running"}})
	r.Report(Event{Type: EventGroup, Group: "gateway", GroupState: &GroupView{Desired: 3, Placed: 1}})
	r.Report(Event{Type: EventNode, Node: &NodeRow{AllocID: "a1", Alloc: "a1", Node: "n1", Nomad: "running", Liveness: "passing", Readiness: "critical"}})
	r.Report(Event{Type: EventNode, Node: &NodeRow{AllocID: "a1", Alloc: "a1", Node: "n1", Nomad: "running", Liveness: "passing", Readiness: "passing", Healthy: &yes}})
	out := b.String()
	if !strings.Contains(out, "\x1b[") || !strings.Contains(out, "desired 3, placed 1") || strings.Count(out, "READINESS") < 2 {
		t.Errorf("live view:\n%q", out)
	}
	// The last board shows the last state only once.
	last := out[strings.LastIndex(out, "\x1b[J"):]
	if strings.Contains(last, "critical") || !strings.Contains(last, "passing") {
		t.Errorf("last board:\n%s", last)
	}
}
