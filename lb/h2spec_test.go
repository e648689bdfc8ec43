package lb_test

import (
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/devstack"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/lb/config"
)

// h2spec (tools/h2spec) runs against the LB's HTTPS listener and against a
// plain net/http TLS server built by the same Go: the LB, whose h2 side is
// net/http's HTTP/2 server, must pass every case that the reference passes.
// The reference decides, not a list, so that a Go release that fixes or
// breaks a case moves both runs together.
//
// The cases net/http's own server fails (h2spec v2.2.1, Go 1.27.3), for
// the reader; the LB fails the same ones, each decided by net/http's HTTP/2
// server itself (the settings, the frame size, its 400 handler), not by the
// LB's handler:
//
//	http2/4.2/3      HEADERS frame larger than h2spec's assumed 16 KiB
//	                 SETTINGS_MAX_FRAME_SIZE: net/http advertises 1 MiB
//	                 (HTTP2Config.MaxReadFrameSize), reads it and answers
//	http2/6.5.3/1    SETTINGS with SETTINGS_INITIAL_WINDOW_SIZE twice:
//	                 net/http rejects duplicate settings (connection error
//	                 PROTOCOL_ERROR) where h2spec wants the last one applied
//	http2/8.1.2.2/1  connection-specific header field (Connection): net/http
//	                 answers 400 where h2spec wants a PROTOCOL_ERROR stream
//	                 error
//	http2/8.1.2.2/2  TE other than "trailers": the same 400
const h2specReferenceFailures = "http2/4.2/3 http2/6.5.3/1 http2/8.1.2.2/1 http2/8.1.2.2/2"

// h2specTimeout is h2spec's -o: how long a case waits for the server's
// answer. Cases that expect a frame or a close and do not get one take
// that long, so it bounds the runs' time; 2 s is h2spec's default.
const h2specTimeout = 2

func TestH2specHTTPSListener(t *testing.T) {
	st := testenv.Consul(t) // skips with -short, as the other integration tests
	bin, err := devstack.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	h2spec := filepath.Join(bin, "h2spec")
	if _, err := os.Stat(h2spec); err != nil {
		t.Fatalf("h2spec not built (run `make tools`): %v", err)
	}

	// Answers of 5 bytes or more: h2spec skips http2/6.9.2/2 (a negative
	// flow-control window) below that.
	const gwName = "h2spec-gw"
	register(t, st.ConsulAPI(), inProcessGateway(t, gwName), true)
	certFile, keyFile, pool := testenv.CertFiles(t, t.TempDir(), host)
	// h2spec cannot set :authority: it sends "127.0.0.1:<port>", which the
	// route must accept for its requests to reach the gateway.
	l, _ := startLBWith(t, st, "p2c", func(cfg *config.Config) {
		cfg.Listen.HTTPS = "127.0.0.1:0"
		cfg.TLS.Mode, cfg.TLS.CertFile, cfg.TLS.KeyFile = "files", certFile, keyFile
		cfg.Routes[0].Hosts = append(cfg.Routes[0].Hosts, "127.0.0.1")
	})
	waitInstances(t, l, 30*time.Second, gwName)
	lbAddr := l.Addrs().HTTPS

	// What h2spec's requests get: the gateway's answer over h2, not the
	// LB's 404 or 502.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	testenv.WaitFor(t, 10*time.Second, "the gateway's answer over h2 for host 127.0.0.1", func() error {
		req, _ := http.NewRequest("GET", "https://"+lbAddr+"/", nil)
		resp, err := cl.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != gwName || resp.ProtoMajor != 2 {
			return fmt.Errorf("%s %d %q", resp.Proto, resp.StatusCode, b)
		}
		return nil
	})

	// The reference reads the request body before it answers, as the LB
	// does: a handler that answers first races h2spec's DATA frames, and
	// http2/8.1.2.6/1 (content-length above the DATA's length) then passes
	// or fails by that race.
	ref := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, "net/http")
	}))
	ref.EnableHTTP2 = true
	ref.Config.ErrorLog = log.New(io.Discard, "", 0) // h2spec's protocol errors, on purpose
	ref.StartTLS()
	defer ref.Close()

	lbRun := runH2spec(t, h2spec, "lb", lbAddr)
	refRun := runH2spec(t, h2spec, "net/http", ref.Listener.Addr().String())
	t.Logf("h2spec against the LB: %s", lbRun.summary())
	t.Logf("h2spec against net/http (reference): %s", refRun.summary())

	if len(lbRun.cases) == 0 || len(lbRun.cases) != len(refRun.cases) {
		t.Fatalf("h2spec ran %d cases against the LB, %d against net/http", len(lbRun.cases), len(refRun.cases))
	}
	var worse []string
	for _, id := range lbRun.ids(h2Failed) {
		if refRun.cases[id].outcome == h2Passed {
			worse = append(worse, id)
			t.Errorf("h2spec %s (%s): the LB fails it, net/http passes it:\n%s", id, lbRun.cases[id].desc, lbRun.cases[id].detail)
		}
	}
	if len(worse) == 0 {
		if got := strings.Join(refRun.ids(h2Failed), " "); got != h2specReferenceFailures {
			t.Logf("net/http's own failures changed: %q, the comment lists %q", got, h2specReferenceFailures)
		}
	}
}

type h2Outcome int

const (
	h2Passed h2Outcome = iota
	h2Failed
	h2Skipped
)

type h2Case struct {
	desc, detail string
	outcome      h2Outcome
}

// h2Run is one h2spec run: its cases by ID ("http2/5.1/5": the group and
// the case's number in it, as h2spec names them).
type h2Run struct {
	cases map[string]h2Case
}

func (r h2Run) ids(o h2Outcome) []string {
	var ids []string
	for id, c := range r.cases {
		if c.outcome == o {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, compareCaseIDs)
	return ids
}

func (r h2Run) summary() string {
	failed, skipped := r.ids(h2Failed), r.ids(h2Skipped)
	var b strings.Builder
	fmt.Fprintf(&b, "%d passed, %d failed, %d skipped, of %d cases", len(r.ids(h2Passed)), len(failed), len(skipped), len(r.cases))
	for _, id := range failed {
		fmt.Fprintf(&b, "\n\tfailed  %s %s", id, r.cases[id].desc)
	}
	for _, id := range skipped {
		fmt.Fprintf(&b, "\n\tskipped %s %s", id, r.cases[id].desc)
	}
	return b.String()
}

// compareCaseIDs orders "http2/5.1/10" after "http2/5.1/9".
func compareCaseIDs(a, b string) int {
	pa, pb := strings.FieldsFunc(a, isIDSep), strings.FieldsFunc(b, isIDSep)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] == pb[i] {
			continue
		}
		var na, nb int
		_, ea := fmt.Sscan(pa[i], &na)
		_, eb := fmt.Sscan(pb[i], &nb)
		if ea == nil && eb == nil && na != nb {
			return na - nb
		}
		return strings.Compare(pa[i], pb[i])
	}
	return len(pa) - len(pb)
}

func isIDSep(r rune) bool { return r == '/' || r == '.' }

// junitReport is h2spec's -j output: one suite per group of cases, in
// h2spec's order of the cases, so a case's position in its suite is its
// number.
type junitReport struct {
	Suites []struct {
		Package string `xml:"package,attr"`
		Cases   []struct {
			Desc    string    `xml:"classname,attr"`
			Failure *xmlInner `xml:"failure"`
			Error   *xmlInner `xml:"error"`
			Skipped *xmlInner `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

type xmlInner struct {
	Text string `xml:",innerxml"`
}

// runH2spec runs every h2spec case against addr over TLS and reads its
// JUnit report. h2spec exits 1 when a case fails: the report says which.
func runH2spec(t *testing.T, h2spec, name, addr string) h2Run {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	// About 145 cases, most in milliseconds, the few that wait for
	// something up to h2specTimeout each: a run that takes minutes hangs.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, h2spec, "-h", "127.0.0.1", "-p", port, "-t", "-k",
		"-o", fmt.Sprint(h2specTimeout), "-j", report)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1 && ctx.Err() == nil) {
		t.Fatalf("h2spec against %s (%s): %v\n%s", name, addr, err, out)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("h2spec against %s wrote no report: %v\n%s", name, err, out)
	}
	var rep junitReport
	if err := xml.Unmarshal(b, &rep); err != nil {
		t.Fatalf("h2spec's report for %s: %v", name, err)
	}
	run := h2Run{cases: map[string]h2Case{}}
	for _, s := range rep.Suites {
		for i, c := range s.Cases {
			hc := h2Case{desc: c.Desc}
			switch {
			case c.Failure != nil:
				hc.outcome, hc.detail = h2Failed, c.Failure.Text
			case c.Error != nil:
				hc.outcome, hc.detail = h2Failed, c.Error.Text
			case c.Skipped != nil:
				hc.outcome = h2Skipped
			}
			run.cases[fmt.Sprintf("%s/%d", s.Package, i+1)] = hc
		}
	}
	t.Logf("h2spec against %s (%s): %d cases in %s", name, addr, len(run.cases), time.Since(start).Round(time.Millisecond))
	return run
}
