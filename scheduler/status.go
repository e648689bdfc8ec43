package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/internal/contract"
	"github.com/gwnomad/gwnomad/jobs"
)

// Check states as gwnomad reports them ("missing": not registered in Consul).
const (
	CheckPassing  = consulapi.HealthPassing
	CheckWarning  = consulapi.HealthWarning
	CheckCritical = consulapi.HealthCritical
	CheckMissing  = "missing"
)

// NodeRow is one gateway node: its allocation, where it runs, what Nomad
// and Consul say about it.
type NodeRow struct {
	Alloc   string         `json:"alloc"` // short allocation ID
	AllocID string         `json:"alloc_id"`
	Node    string         `json:"node"` // Nomad client name
	Address string         `json:"address"`
	Ports   map[string]int `json:"ports"`
	// Nomad is the allocation's client status (pending, running, failed...).
	Nomad   string `json:"nomad"`
	Desired string `json:"desired"`
	// Liveness and Readiness are the Consul checks: passing, warning,
	// critical or missing.
	Liveness  string `json:"liveness"`
	Readiness string `json:"readiness"`
	// ReadinessOutput is the last output of the readiness check when it
	// does not pass.
	ReadinessOutput string `json:"readiness_output,omitempty"`
	JobVersion      uint64 `json:"job_version"`
	// Config is the ID of the configuration the node renders (the folder
	// gwnomad/<cluster>/config/<id>/ its service meta kv_prefix names).
	Config string `json:"config,omitempty"`
	Canary bool   `json:"canary,omitempty"`
	// Healthy is Nomad's deployment health of the allocation (nil: not set).
	Healthy   *bool     `json:"healthy,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	Uptime    string    `json:"uptime"`
	Restarts  uint64    `json:"restarts"`
}

// Ready reports whether the node passes both checks.
func (r NodeRow) Ready() bool { return r.Liveness == CheckPassing && r.Readiness == CheckPassing }

// Status is the state of a gateway cluster.
type Status struct {
	Job        string `json:"job"`
	Registered bool   `json:"registered"`
	JobStatus  string `json:"job_status,omitempty"`
	JobVersion uint64 `json:"job_version"`
	Stopped    bool   `json:"stopped,omitempty"`
	// Nodes are the allocations Nomad still runs or places (one per gateway node).
	Nodes []NodeRow `json:"nodes"`
	// Ready is how many nodes pass both checks; Count is [gateway] count.
	Ready int `json:"ready"`
	Count int `json:"count"`
	// Deployment is the latest deployment; InProgress when it is running.
	Deployment *DeploymentView `json:"deployment,omitempty"`
	InProgress bool            `json:"deployment_in_progress"`
	// LoadBalancers are the `gwnomad lb` instances registered in Consul as
	// LBService (filled by LoadBalancers; `gwnomad status` does).
	LBService     string  `json:"lb_service,omitempty"`
	LoadBalancers []LBRow `json:"load_balancers"`
}

// LBRow is one load balancer instance as Consul sees it.
type LBRow struct {
	ID      string         `json:"id"`
	Node    string         `json:"node"`
	Address string         `json:"address"`
	Ports   map[string]int `json:"ports,omitempty"` // http, https
	Check   string         `json:"check"`           // passing | warning | critical (its /healthz)
	Admin   string         `json:"admin,omitempty"` // its admin listener (/routes, /metrics)
}

// LoadBalancers lists the instances of the Consul service that `gwnomad lb`
// registers itself as (consul.service_name in lb.toml, "gwnomad-lb" by
// default) that send to this cluster's gateway service (their meta
// "services"), with the state of their /healthz check. A token that may
// not read the service sees none.
func (c *Client) LoadBalancers(ctx context.Context, service string) ([]LBRow, error) {
	entries, _, err := c.consul.Health().Service(service, "", false, c.cq(ctx))
	if err != nil {
		return nil, c.cerr("reading Consul health of "+service, err)
	}
	rows := []LBRow{}
	for _, e := range entries {
		if svcs := e.Service.Meta[contract.MetaServices]; svcs != "" && !slices.Contains(strings.Split(svcs, ","), c.spec.Gateway.Service) {
			continue // in front of another cluster
		}
		r := LBRow{ID: e.Service.ID, Node: e.Node.Node, Address: e.Service.Address, Check: e.Checks.AggregatedStatus(),
			Admin: e.Service.Meta[contract.MetaAdmin], Ports: map[string]int{}}
		if r.Address == "" {
			r.Address = e.Node.Address
		}
		for _, name := range []string{"http", "https"} {
			if p, err := strconv.Atoi(e.Service.Meta[contract.MetaPortPrefix+name]); err == nil {
				r.Ports[name] = p
			}
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Node+rows[i].ID < rows[j].Node+rows[j].ID })
	return rows, nil
}

// DeploymentView is a deployment and its task groups.
type DeploymentView struct {
	ID          string               `json:"id"`
	JobVersion  uint64               `json:"job_version"`
	Status      string               `json:"status"`
	Description string               `json:"description"`
	Groups      map[string]GroupView `json:"groups"`
}

// GroupView is one task group in a deployment.
type GroupView struct {
	Desired         int  `json:"desired"`
	DesiredCanaries int  `json:"desired_canaries,omitempty"`
	Placed          int  `json:"placed"`
	Healthy         int  `json:"healthy"`
	Unhealthy       int  `json:"unhealthy"`
	Promoted        bool `json:"promoted,omitempty"`
	AutoRevert      bool `json:"auto_revert"`
}

func viewOf(d *nomadapi.Deployment) *DeploymentView {
	if d == nil {
		return nil
	}
	v := &DeploymentView{ID: d.ID, JobVersion: d.JobVersion, Status: d.Status, Description: d.StatusDescription, Groups: map[string]GroupView{}}
	for name, g := range d.TaskGroups {
		v.Groups[name] = GroupView{
			Desired: g.DesiredTotal, DesiredCanaries: g.DesiredCanaries, Placed: g.PlacedAllocs,
			Healthy: g.HealthyAllocs, Unhealthy: g.UnhealthyAllocs, Promoted: g.Promoted, AutoRevert: g.AutoRevert,
		}
	}
	return v
}

// Status reads the job, its live allocations, their Consul checks and the
// latest deployment.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	st := &Status{Job: c.JobID(), Count: c.spec.Gateway.Count, Nodes: []NodeRow{}}
	job, _, err := c.nomad.Jobs().Info(c.JobID(), c.q(ctx))
	if err != nil {
		if isNotFound(err) {
			return st, nil
		}
		return nil, c.nerr("reading job "+c.JobID(), err)
	}
	st.Registered = true
	st.JobStatus = deref(job.Status)
	st.JobVersion = deref(job.Version)
	st.Stopped = deref(job.Stop)
	d, _, err := c.nomad.Jobs().LatestDeployment(c.JobID(), c.q(ctx))
	if err != nil {
		return nil, c.nerr("reading the latest deployment", err)
	}
	st.Deployment = viewOf(d)
	st.InProgress = d != nil && (d.Status == nomadapi.DeploymentStatusRunning || d.Status == nomadapi.DeploymentStatusPaused ||
		d.Status == nomadapi.DeploymentStatusPending || d.Status == nomadapi.DeploymentStatusBlocked)
	rows, err := c.nodeRows(ctx, false)
	if err != nil {
		return nil, err
	}
	st.Nodes = rows
	for _, r := range rows {
		if r.Ready() {
			st.Ready++
		}
	}
	return st, nil
}

// watchWait bounds one blocking query; Nomad and Consul answer at the
// latest then, changed or not.
const watchWait = 5 * time.Minute

// watchSettle lets the burst of index changes one event causes (an
// allocation's client update, its deployment health, its Consul checks)
// land before the status is read again, so that one change is one redraw.
const watchSettle = 150 * time.Millisecond

// Watch calls fn with the status now, then again each time it changes,
// until ctx ends (it returns nil) or fn fails (its error). With lbService
// not "", the status holds the load balancers in front, as `gwnomad
// status` shows them. It waits with blocking queries on what the status
// reads: the job, its allocations and latest deployment in Nomad, the
// gateway's and the load balancers' health in Consul; a change that leaves
// the status as it was (uptime aside) calls nothing. The first read's
// error is returned; later errors go to onErr and the query is retried.
func (c *Client) Watch(ctx context.Context, lbService string, fn func(*Status) error, onErr func(error)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.statusWithLBs(ctx, lbService)
	if err != nil {
		return err
	}
	if err := fn(st); err != nil {
		return err
	}
	prev := statusKey(st)
	changed := make(chan struct{}, 1)
	errs := make(chan error, 16)
	for _, q := range c.watchQueries(lbService) {
		go watchIndex(ctx, q, changed, errs)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			onErr(err)
			continue
		case <-changed:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(watchSettle):
		}
		select {
		case <-changed:
		default:
		}
		st, err := c.statusWithLBs(ctx, lbService)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			onErr(err)
			continue
		}
		if k := statusKey(st); k != prev {
			prev = k
			if err := fn(st); err != nil {
				return err
			}
		}
	}
}

func (c *Client) statusWithLBs(ctx context.Context, lbService string) (*Status, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	if lbService != "" {
		st.LBService = lbService
		if st.LoadBalancers, err = c.LoadBalancers(ctx, lbService); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// statusKey is what a redraw would show, but for the uptimes, which
// change every second and are not a change of state.
func statusKey(st *Status) string {
	cp := *st
	cp.Nodes = slices.Clone(st.Nodes)
	for i := range cp.Nodes {
		cp.Nodes[i].Uptime = ""
	}
	b, _ := json.Marshal(&cp)
	return string(b)
}

// indexQuery is one blocking query: it returns when the index of what it
// reads passes index (or its wait ends), with the new index.
type indexQuery func(ctx context.Context, index uint64) (uint64, error)

func (c *Client) watchQueries(lbService string) []indexQuery {
	nq := func(ctx context.Context, index uint64) *nomadapi.QueryOptions {
		return (&nomadapi.QueryOptions{WaitIndex: index, WaitTime: watchWait}).WithContext(ctx)
	}
	cq := func(ctx context.Context, index uint64) *consulapi.QueryOptions {
		return (&consulapi.QueryOptions{WaitIndex: index, WaitTime: watchWait}).WithContext(ctx)
	}
	health := func(service, tag string) indexQuery {
		return func(ctx context.Context, index uint64) (uint64, error) {
			_, m, err := c.consul.Health().Service(service, tag, false, cq(ctx, index))
			if err != nil {
				return 0, c.cerr("watching Consul health of "+service, err)
			}
			return m.LastIndex, nil
		}
	}
	qs := []indexQuery{
		func(ctx context.Context, index uint64) (uint64, error) {
			// The job list rather than the job: it answers (and blocks)
			// before the job is registered and after it is purged.
			q := nq(ctx, index)
			q.Prefix = c.JobID()
			_, m, err := c.nomad.Jobs().List(q)
			if err != nil {
				return 0, c.nerr("watching job "+c.JobID(), err)
			}
			return m.LastIndex, nil
		},
		func(ctx context.Context, index uint64) (uint64, error) {
			_, m, err := c.nomad.Jobs().Allocations(c.JobID(), false, nq(ctx, index))
			if err != nil {
				return 0, c.nerr("watching the allocations of job "+c.JobID(), err)
			}
			return m.LastIndex, nil
		},
		func(ctx context.Context, index uint64) (uint64, error) {
			_, m, err := c.nomad.Jobs().LatestDeployment(c.JobID(), nq(ctx, index))
			if err != nil {
				return 0, c.nerr("watching the deployments of job "+c.JobID(), err)
			}
			return m.LastIndex, nil
		},
		health(c.spec.Gateway.Service, jobs.ClusterTag(c.spec)),
	}
	if lbService != "" {
		qs = append(qs, health(lbService, ""))
	}
	return qs
}

// watchIndex runs q until ctx ends, signalling changed each time the index
// moves (and on its first answer, which may be after a change the first
// status read missed). Errors go to errs, then q is retried after a pause
// that grows to 30s while it keeps failing.
func watchIndex(ctx context.Context, q indexQuery, changed chan<- struct{}, errs chan<- error) {
	var index uint64
	first := true
	pause := time.Second
	for ctx.Err() == nil {
		next, err := q(ctx, index)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			select {
			case errs <- err:
			default:
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, 30*time.Second)
			index, first = 0, true // what changed meanwhile is unknown
			continue
		}
		pause = time.Second
		// Asking from index 0 returns at once: never again after an answer.
		next = max(next, 1)
		if next < index {
			// The index went back (a restored snapshot, a new leader):
			// start over, as after an error.
			index, first = 0, true
			continue
		}
		if first || next != index {
			select {
			case changed <- struct{}{}:
			default:
			}
		}
		index, first = next, false
	}
}

// nodeRows lists the job's allocations that are not terminal (all of them
// with all = true), joined with their Consul checks.
func (c *Client) nodeRows(ctx context.Context, all bool) ([]NodeRow, error) {
	stubs, _, err := c.nomad.Jobs().Allocations(c.JobID(), false, c.q(ctx))
	if err != nil {
		return nil, c.nerr("listing allocations", err)
	}
	health, err := c.instances(ctx)
	if err != nil {
		return nil, err
	}
	var rows []NodeRow
	for _, a := range stubs {
		if !all && (a.ClientStatus == "complete" || a.ClientStatus == "failed" || a.ClientStatus == "lost" || a.DesiredStatus != "run") {
			continue
		}
		rows = append(rows, c.row(ctx, a, health[a.ID]))
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Node != rows[j].Node {
			return rows[i].Node < rows[j].Node
		}
		return rows[i].JobVersion > rows[j].JobVersion
	})
	return rows, nil
}

func (c *Client) row(ctx context.Context, a *nomadapi.AllocationListStub, inst *consulapi.ServiceEntry) NodeRow {
	r := NodeRow{
		Alloc: short(a.ID), AllocID: a.ID, Node: a.NodeName, Nomad: a.ClientStatus, Desired: a.DesiredStatus,
		JobVersion: a.JobVersion, Liveness: CheckMissing, Readiness: CheckMissing, Ports: map[string]int{},
	}
	if ds := a.DeploymentStatus; ds != nil {
		r.Healthy = ds.Healthy
		r.Canary = ds.Canary
	}
	if ts := a.TaskStates[jobs.TaskName]; ts != nil {
		r.Restarts = ts.Restarts
		if ts.State == "running" && !ts.StartedAt.IsZero() {
			r.StartedAt = ts.StartedAt
			r.Uptime = time.Since(ts.StartedAt).Truncate(time.Second).String()
		}
	}
	if inst != nil {
		r.Address = inst.Service.Address
		if p := inst.Service.Meta[contract.MetaKVPrefix]; p != "" {
			r.Config = path.Base(p)
		}
		for k, v := range inst.Service.Meta {
			if label, ok := strings.CutPrefix(k, contract.MetaPortPrefix); ok {
				var p int
				fmt.Sscanf(v, "%d", &p)
				r.Ports[label] = p
			}
		}
		for _, ch := range inst.Checks {
			switch ch.Name {
			case jobs.LivenessCheckName:
				r.Liveness = ch.Status
			case jobs.ReadinessCheckName:
				r.Readiness = ch.Status
				if ch.Status != CheckPassing {
					r.ReadinessOutput = clip(strings.TrimSpace(ch.Output))
				}
			}
		}
	}
	if r.Address == "" || len(r.Ports) == 0 {
		// Not in Consul (yet): the allocation has the ports.
		if full, _, err := c.nomad.Allocations().Info(a.ID, c.q(ctx)); err == nil && full.AllocatedResources != nil {
			for _, p := range full.AllocatedResources.Shared.Ports {
				r.Ports[p.Label] = p.Value
				if r.Address == "" {
					r.Address = p.HostIP
				}
			}
		}
	}
	return r
}

// instances returns the cluster's service instances in Consul, by allocation ID.
func (c *Client) instances(ctx context.Context) (map[string]*consulapi.ServiceEntry, error) {
	entries, _, err := c.consul.Health().Service(c.spec.Gateway.Service, jobs.ClusterTag(c.spec), false, c.cq(ctx))
	if err != nil {
		return nil, c.cerr("reading Consul health of "+c.spec.Gateway.Service, err)
	}
	out := map[string]*consulapi.ServiceEntry{}
	for _, e := range entries {
		id := e.Service.Meta[contract.MetaAllocID]
		if id == "" {
			// Nomad's service ID: _nomad-task-<alloc>-<task>-<service>-<port>
			id = strings.TrimPrefix(e.Service.ID, "_nomad-task-")
			if len(id) >= 36 {
				id = id[:36]
			}
		}
		out[id] = e
	}
	return out, nil
}

// WriteText prints the status as a table.
func (st *Status) WriteText(w io.Writer) {
	if !st.Registered {
		fmt.Fprintf(w, "Job %q is not registered in Nomad (run `gwnomad deploy`).\n", st.Job)
		writeLBs(w, st)
		return
	}
	state := st.JobStatus
	if st.Stopped {
		state += ", stopped"
	}
	fmt.Fprintf(w, "Job %q version %d (%s): %d of %d gateway nodes ready (liveness and readiness passing)\n",
		st.Job, st.JobVersion, state, st.Ready, st.Count)
	writeRows(w, st.Nodes)
	if d := st.Deployment; d != nil {
		label := "Latest deployment"
		if st.InProgress {
			label = "Deployment in progress"
		}
		fmt.Fprintf(w, "%s: %s (job version %d) %s: %s\n", label, short(d.ID), d.JobVersion, d.Status, d.Description)
		for _, name := range sortedGroups(d.Groups) {
			fmt.Fprintf(w, "  group %s: %s\n", name, d.Groups[name])
		}
	}
	writeLBs(w, st)
}

func writeLBs(w io.Writer, st *Status) {
	if st.LBService == "" {
		return
	}
	if len(st.LoadBalancers) == 0 {
		fmt.Fprintf(w, "No load balancer is registered in Consul as %q.\n", st.LBService)
		return
	}
	passing := 0
	for _, r := range st.LoadBalancers {
		if r.Check == consulapi.HealthPassing {
			passing++
		}
	}
	fmt.Fprintf(w, "Load balancers (Consul service %q): %d of %d passing\n", st.LBService, passing, len(st.LoadBalancers))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNODE\tADDRESS\tPORTS\tHEALTHZ\tADMIN")
	for _, r := range st.LoadBalancers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Node, orDash(r.Address), portsString(r.Ports), r.Check, orDash(r.Admin))
	}
	tw.Flush()
}

func (g GroupView) String() string {
	s := fmt.Sprintf("desired %d, placed %d, healthy %d, unhealthy %d", g.Desired, g.Placed, g.Healthy, g.Unhealthy)
	if g.DesiredCanaries > 0 {
		s += fmt.Sprintf(", canaries %d (promoted: %v)", g.DesiredCanaries, g.Promoted)
	}
	return s
}

func sortedGroups(m map[string]GroupView) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func writeRows(w io.Writer, rows []NodeRow) {
	if len(rows) == 0 {
		fmt.Fprintln(w, "No allocation is running.")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ALLOC\tNODE\tADDRESS\tPORTS\tNOMAD\tLIVENESS\tREADINESS\tVERSION\tCONFIG\tUPTIME")
	for _, r := range rows {
		v := fmt.Sprint(r.JobVersion)
		if r.Canary {
			v += " (canary)"
		}
		up := r.Uptime
		if up == "" {
			up = "-"
		}
		state := r.Nomad
		if r.Desired != "" && r.Desired != "run" {
			state += " (" + r.Desired + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Alloc, r.Node, orDash(r.Address), portsString(r.Ports),
			state, r.Liveness, r.Readiness, v, orDash(r.Config), up)
	}
	tw.Flush()
}

func portsString(p map[string]int) string {
	if len(p) == 0 {
		return "-"
	}
	order := []string{"http", "https", "passthru_http", "passthru_https", "clustering"}
	var parts []string
	seen := map[string]bool{}
	for _, l := range order {
		if v, ok := p[l]; ok {
			parts = append(parts, fmt.Sprintf("%s=%d", l, v))
			seen[l] = true
		}
	}
	for _, l := range sortedKeys(p) {
		if !seen[l] {
			parts = append(parts, fmt.Sprintf("%s=%d", l, p[l]))
		}
	}
	return strings.Join(parts, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WriteJSON prints the status as one JSON document.
func (st *Status) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(st); err != nil {
		return fmt.Errorf("encoding status: %w", err)
	}
	return nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
