package scheduler

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/spec"
	"github.com/gwnomad/gwnomad/templates"
)

// Client is one gateway cluster (one spec) as Nomad and Consul see it. It
// holds one Nomad and one Consul API client; every method takes a context
// that bounds it.
type Client struct {
	spec   *spec.Spec
	job    *nomadapi.Job
	nomad  *nomadapi.Client
	consul *consulapi.Client

	nomadAddr  string
	consulAddr string
}

// New checks the spec (the job builds, deployment.toml renders offline) and
// makes the API clients from the spec and the environment (NOMAD_ADDR,
// CONSUL_HTTP_ADDR, tokens...: see spec.NomadConfig). It talks to nobody:
// an invalid spec is an *InvalidError and nothing has been touched.
func New(s *spec.Spec) (*Client, error) {
	job, err := jobs.Build(s)
	if err != nil {
		return nil, &InvalidError{Err: err}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := templates.Render(ctx, s, templates.Options{}); err != nil {
		return nil, &InvalidError{Err: fmt.Errorf("rendering deployment.toml: %w", err)}
	}
	ncfg := s.NomadConfig()
	nomad, err := nomadapi.NewClient(ncfg)
	if err != nil {
		return nil, &InvalidError{Err: fmt.Errorf("nomad client: %w", err)}
	}
	ccfg := s.ConsulConfig()
	consul, err := consulapi.NewClient(ccfg)
	if err != nil {
		return nil, &InvalidError{Err: fmt.Errorf("consul client: %w", err)}
	}
	caddr := ccfg.Address
	if ccfg.Scheme == "https" {
		caddr = "https://" + caddr
	}
	return &Client{spec: s, job: job, nomad: nomad, consul: consul, nomadAddr: ncfg.Address, consulAddr: caddr}, nil
}

// Spec is the spec the client deploys.
func (c *Client) Spec() *spec.Spec { return c.spec }

// Job is the Nomad job built from the spec.
func (c *Client) Job() *nomadapi.Job { return c.job }

// JobID is the Nomad job ID ([cluster] name).
func (c *Client) JobID() string { return c.spec.Cluster.Name }

// NomadAddr and ConsulAddr are the addresses in use (for messages).
func (c *Client) NomadAddr() string  { return c.nomadAddr }
func (c *Client) ConsulAddr() string { return c.consulAddr }

func (c *Client) nerr(what string, err error) error { return classify("Nomad", c.nomadAddr, what, err) }
func (c *Client) cerr(what string, err error) error {
	return classify("Consul", c.consulAddr, what, err)
}

func (c *Client) q(ctx context.Context) *nomadapi.QueryOptions {
	return (&nomadapi.QueryOptions{}).WithContext(ctx)
}
func (c *Client) w(ctx context.Context) *nomadapi.WriteOptions {
	return (&nomadapi.WriteOptions{}).WithContext(ctx)
}
func (c *Client) cq(ctx context.Context) *consulapi.QueryOptions {
	return (&consulapi.QueryOptions{}).WithContext(ctx)
}

// NodeCheck is one Nomad client node as the preflight sees it.
type NodeCheck struct {
	Name       string `json:"name"`
	ID         string `json:"id"`
	Address    string `json:"address"`
	Datacenter string `json:"datacenter"`
	Usable     bool   `json:"usable"`
	// Problem says why the node cannot run a gateway ("" when usable).
	Problem string `json:"problem,omitempty"`
}

// Preflight is what the checks before a deploy found.
type Preflight struct {
	Nodes  []NodeCheck `json:"nodes"`
	Usable int         `json:"usable"`
}

// Preflight checks that Nomad and Consul answer (*UnreachableError
// otherwise) and that enough client nodes can run a gateway for [gateway]
// count: ready, eligible, in one of the job's datacenters, with the task
// driver healthy and the shared host volume. Too few is a *PlacementError
// naming the nodes and what each lacks. It changes nothing.
func (c *Client) Preflight(ctx context.Context) (*Preflight, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.nomad.Status().Leader(); err != nil {
		return nil, c.nerr("asking for the Nomad leader", err)
	}
	if _, _, err := c.nomad.Jobs().Info(c.JobID(), c.q(ctx)); err != nil && !isNotFound(err) {
		return nil, c.nerr("reading job "+c.JobID(), err)
	}
	if _, err := c.consul.Status().Leader(); err != nil {
		return nil, c.cerr("asking for the Consul leader", err)
	}
	if _, _, err := c.consul.KV().Keys(c.root(), "", c.cq(ctx)); err != nil {
		return nil, c.cerr("reading KV "+c.root(), err)
	}

	stubs, _, err := c.nomad.Nodes().List(c.q(ctx))
	if err != nil {
		return nil, c.nerr("listing Nomad nodes", err)
	}
	s := c.spec
	dcs := map[string]bool{}
	for _, dc := range s.Cluster.Datacenters {
		dcs[dc] = true
	}
	vol := s.SharedVolume.Name
	pf := &Preflight{}
	for _, st := range stubs {
		n := NodeCheck{Name: st.Name, ID: st.ID, Address: st.Address, Datacenter: st.Datacenter}
		var problems []string
		if st.Status != "ready" {
			problems = append(problems, "status "+st.Status)
		}
		if st.SchedulingEligibility != "eligible" {
			problems = append(problems, "ineligible for scheduling")
		}
		if st.Drain {
			problems = append(problems, "draining")
		}
		if !dcs[st.Datacenter] && !dcs["*"] {
			problems = append(problems, fmt.Sprintf("datacenter %q not in %v", st.Datacenter, s.Cluster.Datacenters))
		}
		node, _, err := c.nomad.Nodes().Info(st.ID, c.q(ctx))
		if err != nil {
			return nil, c.nerr("reading node "+st.Name, err)
		}
		if _, ok := node.HostVolumes[vol]; !ok {
			problems = append(problems, fmt.Sprintf("no host volume %q", vol))
		}
		if d := node.Drivers[s.Gateway.Driver]; d == nil || !d.Detected {
			problems = append(problems, fmt.Sprintf("driver %q not detected", s.Gateway.Driver))
		} else if !d.Healthy {
			problems = append(problems, fmt.Sprintf("driver %q unhealthy: %s", s.Gateway.Driver, d.HealthDescription))
		}
		n.Usable = len(problems) == 0
		n.Problem = strings.Join(problems, ", ")
		if n.Usable {
			pf.Usable++
		}
		pf.Nodes = append(pf.Nodes, n)
	}
	sort.Slice(pf.Nodes, func(i, j int) bool { return pf.Nodes[i].Name < pf.Nodes[j].Name })
	if pf.Usable < s.Gateway.Count {
		return pf, pf.placementError(s)
	}
	return pf, nil
}

func (pf *Preflight) placementError(s *spec.Spec) error {
	vol := s.SharedVolume.Name
	var lacking []string
	for _, n := range pf.Nodes {
		if strings.Contains(n.Problem, "host volume") {
			lacking = append(lacking, n.Name)
		}
	}
	reasons := []string{fmt.Sprintf("%d gateway nodes wanted ([gateway] count, never two on one client), %d of %d Nomad clients can run one",
		s.Gateway.Count, pf.Usable, len(pf.Nodes))}
	if len(lacking) > 0 {
		reasons = append(reasons, fmt.Sprintf("host volume %q is missing on %d client(s): %s (add a client host_volume %q, or set [shared_volume] name)",
			vol, len(lacking), strings.Join(lacking, ", "), vol))
	}
	for _, n := range pf.Nodes {
		if !n.Usable {
			reasons = append(reasons, fmt.Sprintf("node %s (%s): %s", n.Name, n.Address, n.Problem))
		}
	}
	if len(pf.Nodes) == 0 {
		reasons = append(reasons, "Nomad has no client nodes")
	}
	return &PlacementError{Reasons: reasons}
}

// root is the cluster's KV folder: gwnomad/<cluster>/.
func (c *Client) root() string { return "gwnomad/" + c.spec.Cluster.Name + "/" }
