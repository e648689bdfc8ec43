package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/spec"
)

// version is stamped by `make build` (-ldflags "-X main.version=...", from
// git describe). Left empty, the module version in the build info is used:
// `go install ...@v1.2.3` sets that one.
var version string

func init() {
	register(&command{
		name:    "version",
		summary: "gwnomad's version, commit and Go; the Nomad and Consul servers' and the job's when reachable",
		run:     runVersion,
	})
}

const versionUsage = `Usage: gwnomad version [-f gwnomad.toml] [-o text|json] [--client | --cluster] [--timeout 5s]

version prints gwnomad's own version, the commit it was built from (with
its time, and "modified" when the working tree had uncommitted changes)
and the Go it was built with. Then it asks the cluster the spec points at
(the same [nomad] and [consul] tables and NOMAD_ADDR, CONSUL_HTTP_ADDR...
environment as every command): the version of each Nomad and Consul
server (mixed versions mean an upgrade in progress), and the gateway job:
its Nomad job version, status, and the WSO2 API-M version and image it
runs. Server versions come from the members endpoints, which the tokens
of deploy/acl's policies may read (node:read).

A cluster that does not answer within --timeout is reported, not an
error: version prints what it knows and exits 0, so it works on a laptop
and in a bug report. --cluster makes the cluster required (exit 4 when
Nomad or Consul does not answer or refuses the token), for a CI step that
records what it deploys to; --client never leaves the machine.
'gwnomad --version' prints the first line only.

Examples:
  gwnomad version
  gwnomad --version
  gwnomad version --client -o json | jq -r .gwnomad.version
  gwnomad version -f prod/gwnomad.toml --cluster -o json | jq '{nomad: .nomad.versions, consul: .consul.versions, job: .job.version}'

Exit codes:
  0  printed (the cluster unreachable included, unless --cluster)
  3  invalid flags or spec
  4  --cluster and Nomad or Consul unreachable, or permission denied
`

// BuildInfo is gwnomad's own build.
type BuildInfo struct {
	Version string `json:"version"`
	// Commit, CommitTime and Modified are Go's VCS stamp (vcs.revision,
	// vcs.time, vcs.modified); absent when built outside a checkout.
	Commit     string `json:"commit,omitempty"`
	CommitTime string `json:"commit_time,omitempty"`
	Modified   *bool  `json:"modified,omitempty"`
	Go         string `json:"go"`
	Platform   string `json:"platform"`
}

func readBuildInfo() BuildInfo {
	b := BuildInfo{Version: version, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.GoVersion != "" {
			b.Go = bi.GoVersion
		}
		if b.Version == "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Commit = s.Value
			case "vcs.time":
				b.CommitTime = s.Value
			case "vcs.modified":
				m := s.Value == "true"
				b.Modified = &m
			}
		}
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	return b
}

// line is the build in one line: what --version prints.
func (b BuildInfo) line() string {
	var vcs []string
	if b.Commit != "" {
		vcs = append(vcs, "commit "+shortRev(b.Commit))
	}
	if b.CommitTime != "" {
		vcs = append(vcs, b.CommitTime)
	}
	if b.Modified != nil && *b.Modified {
		vcs = append(vcs, "modified")
	}
	s := "gwnomad " + b.Version
	if len(vcs) > 0 {
		s += " (" + strings.Join(vcs, ", ") + ")"
	}
	return s + " " + b.Go + " " + b.Platform
}

func shortRev(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

func printVersionLine(w io.Writer) { fmt.Fprintln(w, readBuildInfo().line()) }

// Server is one Nomad or Consul server as its members endpoint lists it.
type Server struct {
	Name       string `json:"name"`
	Address    string `json:"address"`
	Version    string `json:"version"`
	Status     string `json:"status"` // alive, failed, left
	Region     string `json:"region,omitempty"`
	Datacenter string `json:"datacenter,omitempty"`
}

// Agents is what one of Nomad or Consul answered.
type Agents struct {
	Address   string `json:"address"`
	Reachable bool   `json:"reachable"`
	Denied    bool   `json:"denied,omitempty"`
	Error     string `json:"error,omitempty"`
	// Versions are the distinct versions of the alive servers.
	Versions []string `json:"versions,omitempty"`
	Servers  []Server `json:"servers,omitempty"`
}

// JobVersion is the gateway job as Nomad has it.
type JobVersion struct {
	ID         string `json:"id"`
	Registered bool   `json:"registered"`
	Version    uint64 `json:"version"`
	Status     string `json:"status,omitempty"`
	Stopped    bool   `json:"stopped,omitempty"`
	Stable     bool   `json:"stable,omitempty"`
	SubmitTime string `json:"submit_time,omitempty"`
	// ProductVersion and Image come from the job itself, so they are what
	// runs (or is being rolled out), whatever the local spec says.
	ProductVersion string `json:"product_version,omitempty"`
	Image          string `json:"image,omitempty"`
	Error          string `json:"error,omitempty"`
}

// Versions is what `gwnomad version` reports.
type Versions struct {
	Gwnomad BuildInfo   `json:"gwnomad"`
	Nomad   *Agents     `json:"nomad,omitempty"`
	Consul  *Agents     `json:"consul,omitempty"`
	Job     *JobVersion `json:"job,omitempty"`
}

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gwnomad version", flag.ContinueOnError)
	file := fs.String("f", "", "spec file: where Nomad and Consul are, the job's name (default: the embedded demo spec)")
	out := fs.String("o", "text", "output: text or json")
	client := fs.Bool("client", false, "gwnomad's own version only: ask no cluster")
	cluster := fs.Bool("cluster", false, "the cluster is required: exit 4 when Nomad or Consul does not answer")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for Nomad and Consul")
	if code, ok := parseFlags(fs, args, versionUsage, stdout, stderr); !ok {
		return code
	}
	if *out != "text" && *out != "json" {
		fmt.Fprintf(stderr, "gwnomad version: -o %q: want text or json\n", *out)
		return exitInvalid
	}
	if *client && *cluster {
		fmt.Fprintln(stderr, "gwnomad version: --client and --cluster exclude each other")
		return exitInvalid
	}
	v := Versions{Gwnomad: readBuildInfo()}
	if !*client {
		// The embedded spec needs no note here (unlike the commands that
		// change things): the output names the addresses it asked.
		s, warns, err := spec.LoadOrDefault(*file)
		if *file != "" {
			for _, w := range warns {
				fmt.Fprintln(stderr, w)
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "gwnomad version: invalid spec:\n%v\n", err)
			return exitInvalid
		}
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		askCluster(ctx, s, &v)
	}
	if *out == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			fmt.Fprintf(stderr, "gwnomad version: %v\n", err)
			return exitFailed
		}
	} else {
		v.writeText(stdout)
	}
	if *cluster && (!v.Nomad.Reachable || !v.Consul.Reachable || v.Nomad.Denied || v.Consul.Denied) {
		fmt.Fprintln(stderr, "gwnomad version: --cluster: the cluster did not answer (set NOMAD_ADDR / CONSUL_HTTP_ADDR or [nomad] / [consul] address in the spec)")
		return exitUnreachable
	}
	return exitOK
}

// askCluster fills v's Nomad, Consul and Job, asking both at once; every
// failure is recorded in v, none is returned.
func askCluster(ctx context.Context, s *spec.Spec, v *Versions) {
	ncfg, ccfg := s.NomadConfig(), s.ConsulConfig()
	caddr := ccfg.Address
	if ccfg.Scheme == "https" {
		caddr = "https://" + caddr
	}
	v.Nomad = &Agents{Address: ncfg.Address}
	v.Consul = &Agents{Address: caddr}
	v.Job = &JobVersion{ID: s.Cluster.Name}
	var wg sync.WaitGroup
	wg.Go(func() {
		nomad, err := nomadapi.NewClient(ncfg)
		if err != nil {
			v.Nomad.fail(err)
			v.Job = nil
			return
		}
		nomadServers(ctx, nomad, v.Nomad)
		if !v.Nomad.Reachable {
			v.Job = nil
			return
		}
		gatewayJob(ctx, nomad, v.Job)
	})
	wg.Go(func() {
		consul, err := consulapi.NewClient(ccfg)
		if err != nil {
			v.Consul.fail(err)
			return
		}
		consulServers(ctx, consul, v.Consul)
	})
	wg.Wait()
}

func nomadServers(ctx context.Context, c *nomadapi.Client, a *Agents) {
	q := (&nomadapi.QueryOptions{}).WithContext(ctx)
	var members nomadapi.ServerMembers
	if _, err := c.Raw().Query("/v1/agent/members", &members, q); err != nil {
		a.fail(err)
		return
	}
	a.Reachable = true
	for _, m := range members.Members {
		a.Servers = append(a.Servers, Server{
			Name: m.Name, Address: fmt.Sprintf("%s:%d", m.Addr, m.Port), Version: m.Tags["build"],
			Status: m.Status, Region: m.Tags["region"], Datacenter: m.Tags["dc"],
		})
	}
	a.sum()
}

func consulServers(ctx context.Context, c *consulapi.Client, a *Agents) {
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	var members []*consulapi.AgentMember
	if _, err := c.Raw().Query("/v1/agent/members", &members, q); err != nil {
		a.fail(err)
		return
	}
	a.Reachable = true
	for _, m := range members {
		if m.Tags["role"] != "consul" { // client agents
			continue
		}
		// The build tag is "1.14.11:b7d3d5b5": version, then commit.
		ver, _, _ := strings.Cut(m.Tags["build"], ":")
		a.Servers = append(a.Servers, Server{
			Name: m.Name, Address: fmt.Sprintf("%s:%d", m.Addr, m.Port), Version: ver,
			Status: consulMemberStatus(m.Status), Datacenter: m.Tags["dc"],
		})
	}
	a.sum()
}

// consulMemberStatus names Serf's member states (consulapi.AgentMember's
// Status: the API has no constants for them) as Nomad's endpoint does.
func consulMemberStatus(s int) string {
	if names := []string{"none", "alive", "leaving", "left", "failed"}; s >= 0 && s < len(names) {
		return names[s]
	}
	return "none"
}

func (a *Agents) fail(err error) {
	a.Error = err.Error()
	a.Denied = isDenied(err)
	// A 403 is an answer: the agent is there, the token lacks node:read.
	a.Reachable = a.Denied
}

func (a *Agents) sum() {
	sort.Slice(a.Servers, func(i, j int) bool { return a.Servers[i].Name < a.Servers[j].Name })
	for _, s := range a.Servers {
		if s.Status == "alive" && !slices.Contains(a.Versions, s.Version) {
			a.Versions = append(a.Versions, s.Version)
		}
	}
	sort.Strings(a.Versions)
}

func isDenied(err error) bool {
	var ure nomadapi.UnexpectedResponseError
	if errors.As(err, &ure) && ure.StatusCode() == 403 {
		return true
	}
	var se consulapi.StatusError
	if errors.As(err, &se) && se.Code == 403 {
		return true
	}
	return strings.Contains(err.Error(), "403") && strings.Contains(strings.ToLower(err.Error()), "permission denied")
}

func gatewayJob(ctx context.Context, c *nomadapi.Client, j *JobVersion) {
	job, _, err := c.Jobs().Info(j.ID, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		var ure nomadapi.UnexpectedResponseError
		if !(errors.As(err, &ure) && ure.StatusCode() == 404) {
			j.Error = err.Error()
		}
		return
	}
	j.Registered = true
	j.Version = deref(job.Version)
	j.Status = deref(job.Status)
	j.Stopped = deref(job.Stop)
	j.Stable = deref(job.Stable)
	if t := deref(job.SubmitTime); t > 0 {
		j.SubmitTime = time.Unix(0, t).UTC().Format(time.RFC3339)
	}
	for _, tg := range job.TaskGroups {
		services := tg.Services
		for _, t := range tg.Tasks {
			services = append(services, t.Services...)
			if img, ok := t.Config["image"].(string); ok && j.Image == "" {
				j.Image = img
			}
		}
		for _, s := range services {
			if pv := s.Meta["product_version"]; pv != "" && j.ProductVersion == "" {
				j.ProductVersion = pv
			}
		}
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func (v Versions) writeText(w io.Writer) {
	b := v.Gwnomad
	fmt.Fprintf(w, "gwnomad  %s\n", b.Version)
	if b.Commit != "" {
		c := b.Commit
		var more []string
		if b.CommitTime != "" {
			more = append(more, b.CommitTime)
		}
		if b.Modified != nil && *b.Modified {
			more = append(more, "modified")
		}
		if len(more) > 0 {
			c += " (" + strings.Join(more, ", ") + ")"
		}
		fmt.Fprintf(w, "commit   %s\n", c)
	}
	fmt.Fprintf(w, "go       %s %s\n", b.Go, b.Platform)
	if v.Nomad == nil {
		return
	}
	fmt.Fprintf(w, "nomad    %s\n", v.Nomad.text())
	fmt.Fprintf(w, "consul   %s\n", v.Consul.text())
	switch j := v.Job; {
	case j == nil:
		fmt.Fprintln(w, "job      unknown: Nomad did not answer")
	case j.Error != "":
		fmt.Fprintf(w, "job      %s: %s\n", j.ID, j.Error)
	case !j.Registered:
		fmt.Fprintf(w, "job      %s: not registered\n", j.ID)
	default:
		s := fmt.Sprintf("%s version %d, %s", j.ID, j.Version, j.Status)
		if j.Stopped {
			s += " (stopped)"
		}
		if j.SubmitTime != "" {
			s += ", submitted " + j.SubmitTime
		}
		if j.ProductVersion != "" {
			s += ", WSO2 API-M " + j.ProductVersion
		}
		if j.Image != "" {
			s += ", image " + j.Image
		}
		fmt.Fprintf(w, "job      %s\n", s)
	}
}

// text is one line: the versions and how many servers run each.
func (a *Agents) text() string {
	switch {
	case a.Denied:
		return fmt.Sprintf("permission denied at %s (the token needs node:read): %s", a.Address, a.Error)
	case !a.Reachable:
		return fmt.Sprintf("unreachable at %s: %s", a.Address, a.Error)
	}
	count := map[string]int{}
	down := 0
	for _, s := range a.Servers {
		if s.Status == "alive" {
			count[s.Version]++
		} else if s.Status != "left" {
			down++
		}
	}
	var parts []string
	for _, ver := range a.Versions {
		parts = append(parts, fmt.Sprintf("%s on %d server%s", ver, count[ver], plural(count[ver])))
	}
	s := strings.Join(parts, ", ")
	switch {
	case len(parts) == 0:
		s = "no server listed (a token without node:read sees none)"
	case len(parts) > 1:
		s += " (mixed versions: an upgrade in progress?)"
	}
	if down > 0 {
		s += fmt.Sprintf(", %d server%s down", down, plural(down))
	}
	return s + " at " + a.Address
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
