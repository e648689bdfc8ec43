package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/spec"
	"github.com/gwnomad/gwnomad/templates"
)

// deployDefault runs the embedded default spec (3 simulated gateways) on st,
// the way `gwnomad deploy` does at its core: KV, then the job. It waits
// until every instance passes both checks and returns them.
func deployDefault(t *testing.T, st *devstack.Stack) []*consulapi.ServiceEntry {
	t.Helper()
	s, _, err := spec.Default()
	if err != nil {
		t.Fatal(err)
	}
	kv, err := templates.KV(s)
	if err != nil {
		t.Fatal(err)
	}
	consul := st.ConsulAPI()
	for k, v := range kv {
		if _, err := consul.KV().Put(&consulapi.KVPair{Key: k, Value: v}, nil); err != nil {
			t.Fatal(err)
		}
	}
	job, err := jobs.Build(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.NomadAPI().Jobs().Register(job, nil); err != nil {
		t.Fatalf("registering job: %v", err)
	}
	var passing []*consulapi.ServiceEntry
	testenv.WaitFor(t, 3*time.Minute, "3 gateways passing both checks", func() error {
		passing, _, err = consul.Health().Service(s.Gateway.Service, "", true, nil)
		if err != nil {
			return err
		}
		if len(passing) != s.Gateway.Count {
			return fmt.Errorf("%d of %d passing", len(passing), s.Gateway.Count)
		}
		return nil
	})
	return passing
}

// findChromium returns the browser binary, or fails: .ci/run installs it.
func findChromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: install Debian's chromium package (.ci/run does)")
	return ""
}

// TestConsulUIShowsHealthyGateways is the SRE's view: the Consul UI page of
// the gateway service lists every node with its checks passing. A screenshot
// is saved in the test's output directory (GWNOMAD_ARTIFACTS, else a temp dir).
func TestConsulUIShowsHealthyGateways(t *testing.T) {
	st := testenv.Cluster(t, testenv.Options{Clients: 3})
	chromium := findChromium(t)
	passing := deployDefault(t, st)

	opts := append(chromedp.DefaultExecAllocatorOptions[:0:0],
		chromedp.ExecPath(chromium),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()

	url := fmt.Sprintf("http://%s/ui/dc1/services/%s/instances", st.Consul.HTTPAddr, passing[0].Service.Service)
	var text string
	// The instance list is rendered by the UI's JavaScript after its API
	// calls: wait for the list items, never for a fixed time.
	if err := chromedp.Do(bctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("loading %s: %v", url, err)
	}
	defer func() {
		if t.Failed() {
			saveScreenshot(t, bctx, "consul-ui-failed.png")
			t.Logf("page text:\n%s", text)
		}
	}()
	// Wait until every node is listed (the list fills as the UI polls).
	testenv.WaitFor(t, time.Minute, "every gateway node listed in the Consul UI", func() error {
		var err error
		cctx, cancel := context.WithTimeout(bctx, 5*time.Second)
		defer cancel()
		if text, err = chromedp.Run(cctx, chromedp.Text(`body`)); err != nil {
			return err
		}
		for _, e := range passing {
			if !strings.Contains(text, e.Service.ID) && !strings.Contains(text, e.Node.Node) {
				return fmt.Errorf("instance %s on node %s not on the page", e.Service.ID, e.Node.Node)
			}
		}
		if n := strings.Count(text, "All service checks passing"); n != len(passing) {
			return fmt.Errorf("the page says \"All service checks passing\" %d times, want %d (one per gateway)", n, len(passing))
		}
		return nil
	})
	if strings.Contains(strings.ToLower(text), "critical") {
		t.Errorf("the page shows a critical check")
	}
	saveScreenshot(t, bctx, "consul-ui-gateways.png")
}

// saveScreenshot writes a PNG of the page into the test's output directory
// (GWNOMAD_ARTIFACTS, else a temp dir).
func saveScreenshot(t *testing.T, bctx context.Context, name string) {
	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100)) // png
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	dir := os.Getenv("GWNOMAD_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	_ = os.MkdirAll(dir, 0o755)
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Error(err)
		return
	}
	t.Logf("screenshot: %s", path)
}
