package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/jobs"
)

// RestartOptions tune Restart.
type RestartOptions struct {
	// Nodes are the Nomad client names whose gateway to restart; empty:
	// every node of the cluster.
	Nodes []string
	// Timeout bounds each step of a node that waits: the drain (until no
	// load balancer routes to it), and its return (from the restart
	// request until it passes its checks and every load balancer routes
	// to it again). 0: the spec's [update] healthy_deadline.
	Timeout time.Duration
	// LBService is the Consul service the load balancers register as
	// ("gwnomad-lb"); "" leaves them out: the drain and the return then
	// wait for Consul's view only.
	LBService string
	// Report receives the events; nil discards them.
	Report Reporter
}

// RestartError is a rolling restart that stopped before the end: a node
// that did not come back ready in time, a load balancer that kept routing
// to a drained node, a restart Nomad refused, or the caller's interrupt.
// Node names the node (or batch) it stopped at; Restarted are the nodes
// restarted and back in service before it, NotRestarted those never
// restarted (a batch put back after an interrupted drain among them).
type RestartError struct {
	Node         string
	Interrupted  bool
	Reason       string
	Restarted    []string
	NotRestarted []string
	// Explanation: why the node failed (task events, check output, the
	// tail of its stderr), as deploy explains a failed allocation.
	Explanation []string
	Err         error
}

func (e *RestartError) Error() string {
	var b strings.Builder
	switch {
	case e.Interrupted && e.Node != "":
		fmt.Fprintf(&b, "interrupted while draining node %s: %s", e.Node, e.Reason)
	case e.Interrupted:
		b.WriteString("interrupted")
	default:
		fmt.Fprintf(&b, "node %s: %s", e.Node, e.Reason)
	}
	fmt.Fprintf(&b, "; restarted: %s; not restarted: %s", listOrNone(e.Restarted), listOrNone(e.NotRestarted))
	if len(e.NotRestarted) > 0 {
		b.WriteString(" (`gwnomad restart --node NODE` restarts one)")
	}
	return b.String()
}

func (e *RestartError) Unwrap() error { return e.Err }

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

// restartPoll is how often the restart reads Nomad, Consul and the load
// balancers while it waits; the balancers follow Consul with blocking
// queries, so a drain is usually seen within one or two polls.
const restartPoll = 250 * time.Millisecond

// target is one gateway node being restarted.
type target struct {
	row     NodeRow
	nodeID  string // Nomad node ID
	svcID   string // its Consul service instance ("" when not registered)
	tags    []string
	cnode   string            // the Consul node holding the instance
	agent   *consulapi.Client // that node's agent (maintenance is per agent)
	agentAt string
	maint   bool // maintenance enabled by this restart

	started    time.Time // the task's StartedAt before the restart
	index      uint64    // Consul's index just before the restart
	restarted  time.Time // when Nomad's restart returned (the old task exited)
	passSince  time.Time // both checks passing since (our clock)
	readyAt    time.Time
	readyAgain bool
}

// Restart restarts the gateway nodes in place, a batch at a time, without
// a new job version, so that no request through the load balancers fails.
//
// A batch is one node, or [update] max_parallel nodes, but never every
// node: with more than one gateway at least one keeps serving. Before a
// batch, every node outside it must pass both checks, or the restart
// stops (restarting then would leave fewer ready gateways than the spec
// asks for). Nodes go in the order of their names.
//
// The rule, for every node of a batch:
//
//  1. drain: its service instance goes into Consul maintenance mode, on
//     the node's own Consul agent (maintenance is the agent's state: a
//     catalog write would be undone by the agent's anti-entropy). Nomad's
//     restart alone would deregister the instance only as it signals the
//     task (shutdown_delay holds for stops, not restarts), leaving the
//     balancers' next requests to a stopping gateway. Every
//     load balancer then drops it, as they drop any instance that does
//     not pass. Restart waits until each registered load balancer
//     (LBService, /healthz passing, in front of this cluster's service)
//     no longer lists it among the instances of any route to the service
//     in its /routes, and at least [gateway] shutdown_delay since the
//     maintenance began: the time a Nomad stop gives requests in flight.
//     Without load balancers, until Consul no longer reports it passing.
//  2. restart: Nomad's allocation restart of the gateway task, in place:
//     same allocation, version, ports and node. Nomad deregisters the
//     instance before it stops the task and registers it again once the
//     task runs (its checks start critical).
//  3. ready: the task runs again (a StartedAt later than before), and
//     Consul reports liveness and readiness passing with a result newer
//     than the restart (a check that changed since Consul's index before
//     the restart, or passing for a whole check interval and timeout since
//     the new start was seen). Within Timeout, else the restart stops,
//     naming the node and explaining why (task events, check output,
//     stderr).
//  4. return: maintenance is lifted (if the instance kept it), and
//     Restart waits until every load balancer routes to it again (listed,
//     not ejected, in every route to the service), within Timeout.
//
// The node's Consul agent is the first of these that holds the instance
// (GET /v1/agent/service/<id>): the agent gwnomad talks to; the agent at
// the instance's Consul node address on gwnomad's Consul port; the agent
// the node's Nomad client uses (its consul.address, read from the client's
// /v1/agent/self at the HTTP address Nomad registered for it, a loopback
// host replaced by that address's host). Agents and load balancers are
// found before any node is touched: one that cannot be reached stops the
// restart as *UnreachableError with nothing changed.
//
// Cancelling ctx (Ctrl-C) finishes the batch in progress, then stops with
// a *RestartError (Interrupted): a batch still draining is put back
// (maintenance lifted, routed again) without a restart; a batch already
// restarted is waited for until it is ready and routed again.
//
// Tokens: Nomad alloc-lifecycle (the restart), read-job, node:read and,
// for the third way to the agent, agent:read; Consul service:write on the
// gateway service (maintenance) and service:read on the load balancers'.
//
// Errors: *InvalidError (an unknown node), *UnreachableError,
// *RestartError. The Summary (Outcome "restarted", "failed" or
// "interrupted") is returned with every outcome it can describe.
func (c *Client) Restart(ctx context.Context, opts RestartOptions) (*Summary, error) {
	rep := opts.Report
	if rep == nil {
		rep = Discard
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = c.spec.Update.HealthyDeadline.Duration
	}
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	start := time.Now()
	emit := func(e Event) {
		e.Time = time.Now()
		rep.Report(e)
	}
	sum := &Summary{Job: c.JobID(), Count: c.spec.Gateway.Count, Restarted: []string{}}
	finish := func(outcome, msg string) *Summary {
		// The caller's context may be done: read the nodes with a short one.
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		c.fillNodes(qctx, sum)
		cancel()
		sum.Outcome, sum.Message = outcome, msg
		sum.Duration = time.Since(start).Truncate(100 * time.Millisecond).String()
		emit(Event{Type: EventSummary, Message: outcome, Summary: sum})
		return sum
	}

	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	targets, lbs, err := c.restartPreflight(pctx, opts, sum)
	cancel()
	if err != nil {
		return nil, err
	}
	names := nodeNames(targets)
	size := batchSize(len(targets), c.spec.Update.MaxParallel, len(sum.Nodes))
	msg := fmt.Sprintf("Nomad at %s and Consul at %s answer; job %q version %d: restarting %d of %d gateway node(s) (%s), %d at a time; %s",
		c.nomadAddr, c.consulAddr, c.JobID(), sum.JobVersion, len(targets), len(sum.Nodes), strings.Join(names, ", "), size, lbLine(opts.LBService, lbs))
	var lines []string
	for _, t := range targets {
		if t.svcID == "" {
			lines = append(lines, fmt.Sprintf("node %s: not registered in Consul (nothing to drain)", t.row.Node))
			continue
		}
		lines = append(lines, fmt.Sprintf("node %s: instance %s on the Consul agent at %s", t.row.Node, t.svcID, t.agentAt))
	}
	if len(sum.Nodes) == 1 {
		lines = append(lines, "warning: the cluster has one gateway: it does not serve while it restarts")
	}
	emit(Event{Type: EventPreflight, Message: msg, Lines: lines})

	rw := &rowWatch{rows: map[string]NodeRow{}}
	var sent []string // the batch restarted, not back yet
	fail := func(outcome string, e *RestartError) (*Summary, error) {
		e.Restarted = slices.Clone(sum.Restarted)
		for _, n := range names {
			if !slices.Contains(e.Restarted, n) && !slices.Contains(sent, n) {
				e.NotRestarted = append(e.NotRestarted, n)
			}
		}
		if e.Interrupted {
			emit(Event{Type: EventInterrupted, Message: e.Error()})
		}
		finish(outcome, e.Error())
		return sum, e
	}
	// Work already begun is never cut by the caller's cancel; the
	// timeouts bound it.
	work := context.WithoutCancel(ctx)
	for i := 0; i < len(targets); {
		batch := targets[i:min(i+size, len(targets))]
		i += len(batch)
		if ctx.Err() != nil {
			return fail("interrupted", &RestartError{Interrupted: true, Err: ctx.Err()})
		}
		if err := c.othersReady(work, batch); err != nil {
			return fail("failed", err)
		}
		if err := c.drain(ctx, work, batch, opts.LBService, timeout, rw, emit); err != nil {
			return fail(failOutcome(err), err)
		}
		if err := c.restartBatch(work, batch, emit); err != nil {
			return fail("failed", err)
		}
		sent = nodeNames(batch)
		if err := c.waitReady(work, batch, timeout, rw, emit); err != nil {
			return fail("failed", err)
		}
		if err := c.putBack(work, batch, opts.LBService, timeout, rw, emit); err != nil {
			return fail("failed", err)
		}
		sum.Restarted, sent = append(sum.Restarted, sent...), nil
	}
	return finish("restarted", fmt.Sprintf("restarted in place: %s (job version %d, no new version)", strings.Join(sum.Restarted, ", "), sum.JobVersion)), nil
}

func failOutcome(err error) string {
	var re *RestartError
	if errors.As(err, &re) && re.Interrupted {
		return "interrupted"
	}
	return "failed"
}

func lbLine(service string, lbs []LBRow) string {
	switch {
	case service == "":
		return "no load balancers asked (--lb-service \"\"): the drain waits for Consul only"
	case len(lbs) == 0:
		return fmt.Sprintf("no load balancer registered as %q passes in front of this cluster: the drain waits for Consul only", service)
	}
	ids := make([]string, len(lbs))
	for i, l := range lbs {
		ids[i] = l.ID
	}
	return fmt.Sprintf("each node waits for %d load balancer(s) (%s) to stop and to start routing to it", len(lbs), strings.Join(ids, ", "))
}

// batchSize is how many of n targets restart together: [update]
// max_parallel, but fewer than the live nodes when there are several, so
// that one keeps serving.
func batchSize(n, maxParallel, live int) int {
	size := max(maxParallel, 1)
	if live > 1 {
		size = min(size, live-1)
	}
	return max(min(size, n), 1)
}

// restartPreflight reads the job, picks the targets, finds their Consul
// agents and reads every load balancer's /routes once. It changes nothing.
func (c *Client) restartPreflight(ctx context.Context, opts RestartOptions, sum *Summary) ([]*target, []LBRow, error) {
	if _, err := c.nomad.Status().Leader(); err != nil {
		return nil, nil, c.nerr("asking for the Nomad leader", err)
	}
	if _, err := c.consul.Status().Leader(); err != nil {
		return nil, nil, c.cerr("asking for the Consul leader", err)
	}
	job, _, err := c.nomad.Jobs().Info(c.JobID(), c.q(ctx))
	if err != nil {
		if isNotFound(err) {
			return nil, nil, fmt.Errorf("job %q is not registered in Nomad: nothing to restart (`gwnomad deploy` first)", c.JobID())
		}
		return nil, nil, c.nerr("reading job "+c.JobID(), err)
	}
	if deref(job.Stop) {
		return nil, nil, fmt.Errorf("job %q is stopped: nothing to restart (`gwnomad deploy` starts it)", c.JobID())
	}
	sum.JobVersion, sum.ServingVersion = deref(job.Version), deref(job.Version)
	d, _, err := c.nomad.Jobs().LatestDeployment(c.JobID(), c.q(ctx))
	if err != nil {
		return nil, nil, c.nerr("reading the latest deployment", err)
	}
	if d != nil && (d.Status == nomadapi.DeploymentStatusRunning || d.Status == nomadapi.DeploymentStatusPaused ||
		d.Status == nomadapi.DeploymentStatusPending || d.Status == nomadapi.DeploymentStatusBlocked) {
		return nil, nil, fmt.Errorf("deployment %s of job version %d is %s: restart once it ends (`gwnomad status` follows it)", short(d.ID), d.JobVersion, d.Status)
	}
	stubs, _, err := c.nomad.Jobs().Allocations(c.JobID(), false, c.q(ctx))
	if err != nil {
		return nil, nil, c.nerr("listing allocations", err)
	}
	health, err := c.instances(ctx)
	if err != nil {
		return nil, nil, err
	}
	byNode := map[string]*target{}
	var live []string
	for _, a := range stubs {
		if terminalStatus(a.ClientStatus) || a.DesiredStatus != "run" {
			continue
		}
		t := &target{row: c.row(ctx, a, health[a.ID]), nodeID: a.NodeID}
		if e := health[a.ID]; e != nil {
			t.svcID, t.tags, t.cnode = e.Service.ID, e.Service.Tags, e.Node.Node
		}
		if _, dup := byNode[a.NodeName]; dup {
			return nil, nil, fmt.Errorf("node %s runs two allocations of job %q (a rollout in between?): see `gwnomad status`", a.NodeName, c.JobID())
		}
		byNode[a.NodeName] = t
		live = append(live, a.NodeName)
		sum.Nodes = append(sum.Nodes, t.row)
	}
	sort.Strings(live)
	if len(live) == 0 {
		return nil, nil, fmt.Errorf("job %q runs no allocation: nothing to restart (see `gwnomad status`)", c.JobID())
	}
	want := opts.Nodes
	if len(want) == 0 {
		want = live
	}
	var targets []*target
	var unknown []string
	for _, n := range want {
		t := byNode[n]
		switch {
		case t == nil:
			unknown = append(unknown, n)
		case !slices.Contains(targets, t):
			targets = append(targets, t)
		}
	}
	if len(unknown) > 0 {
		return nil, nil, &InvalidError{Err: fmt.Errorf("no gateway of job %q runs on node(s) %s: the gateway nodes are %s", c.JobID(), strings.Join(unknown, ", "), strings.Join(live, ", "))}
	}
	sort.Slice(targets, func(i, j int) bool { return targets[i].row.Node < targets[j].row.Node })

	for _, t := range targets {
		if t.svcID == "" {
			continue
		}
		if t.agent, t.agentAt, err = c.nodeAgent(ctx, t); err != nil {
			return nil, nil, err
		}
	}
	var lbs []LBRow
	if opts.LBService != "" {
		all, err := c.LoadBalancers(ctx, opts.LBService)
		if err != nil {
			return nil, nil, err
		}
		for _, l := range all {
			if l.Check != consulapi.HealthPassing {
				continue // draining or gone: it takes no new requests
			}
			if _, err := readRoutes(ctx, l); err != nil {
				return nil, nil, err
			}
			lbs = append(lbs, l)
		}
	}
	return targets, lbs, nil
}

// nodeAgent finds the Consul agent that holds t's instance (see Restart).
func (c *Client) nodeAgent(ctx context.Context, t *target) (*consulapi.Client, string, error) {
	var tried []string
	try := func(addr string, tls bool) *consulapi.Client {
		cfg := c.spec.ConsulConfig()
		cfg.Address = addr
		if tls {
			cfg.Scheme = "https"
		}
		cl, err := consulapi.NewClient(cfg)
		if err == nil {
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, _, err = cl.Agent().Service(t.svcID, c.cq(qctx))
			cancel()
		}
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s (%s)", addr, clip(err.Error())))
			return nil
		}
		return cl
	}
	own := c.spec.ConsulConfig()
	if cl := try(own.Address, own.Scheme == "https"); cl != nil {
		return cl, c.consulAddr, nil
	}
	_, port, _ := net.SplitHostPort(own.Address)
	if port == "" {
		port = "8500"
	}
	if n, _, err := c.consul.Catalog().Node(t.cnode, c.cq(ctx)); err == nil && n != nil && n.Node != nil && n.Node.Address != "" {
		if addr := net.JoinHostPort(n.Node.Address, port); addr != own.Address {
			if cl := try(addr, own.Scheme == "https"); cl != nil {
				return cl, addr, nil
			}
		}
	}
	addr, tls, err := c.nomadClientConsul(ctx, t.nodeID)
	if err != nil {
		tried = append(tried, "the node's Nomad client: "+clip(err.Error()))
	} else if cl := try(addr, tls); cl != nil {
		return cl, addr, nil
	}
	return nil, "", &UnreachableError{Service: "Consul", Addr: "the agent of node " + t.row.Node,
		Err: fmt.Errorf("no agent found that holds the gateway instance %s (Consul node %s), needed to take it out of the load balancers before its restart; tried %s",
			t.svcID, t.cnode, strings.Join(tried, "; "))}
}

// nomadClientConsul reads the Consul address a Nomad client's agent uses.
func (c *Client) nomadClientConsul(ctx context.Context, nodeID string) (addr string, tls bool, err error) {
	node, _, err := c.nomad.Nodes().Info(nodeID, c.q(ctx))
	if err != nil {
		return "", false, c.nerr("reading node "+short(nodeID), err)
	}
	nc, err := c.nomad.GetNodeClientWithTimeout(nodeID, 5*time.Second, c.q(ctx))
	if err != nil {
		return "", false, err
	}
	self, err := nc.Agent().Self()
	if err != nil {
		return "", false, fmt.Errorf("agent self at %s: %w", node.HTTPAddr, err)
	}
	cc, _ := self.Config["Consul"].(map[string]any)
	a, _ := cc["Addr"].(string)
	ssl, _ := cc["EnableSSL"].(bool)
	if a == "" {
		return "", false, fmt.Errorf("the Nomad client at %s names no Consul address", node.HTTPAddr)
	}
	addr, tls = consulAddrFrom(a, ssl, node.HTTPAddr)
	return addr, tls, nil
}

// consulAddrFrom turns a Nomad client's consul.address into one gwnomad
// can dial: the scheme cut off, and a loopback or unspecified host
// replaced by the host of the client's own HTTP address (it means the
// agent beside that client).
func consulAddrFrom(addr string, ssl bool, nomadHTTP string) (string, bool) {
	if rest, ok := strings.CutPrefix(addr, "https://"); ok {
		addr, ssl = rest, true
	} else {
		addr = strings.TrimPrefix(addr, "http://")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, ssl
	}
	if localHost(host) {
		if nh, _, err := net.SplitHostPort(nomadHTTP); err == nil && nh != "" {
			host = nh
		}
	}
	return net.JoinHostPort(host, port), ssl
}

func localHost(h string) bool {
	if h == "" || h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

// othersReady fails when a node outside the batch does not pass both checks.
func (c *Client) othersReady(ctx context.Context, batch []*target) *RestartError {
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rows, err := c.nodeRows(qctx, false)
	if err != nil {
		return &RestartError{Node: batch[0].row.Node, Reason: "reading the nodes before its restart: " + err.Error(), Err: err}
	}
	for _, r := range rows {
		if slices.ContainsFunc(batch, func(t *target) bool { return t.row.AllocID == r.AllocID }) || r.Ready() {
			continue
		}
		return &RestartError{Node: batch[0].row.Node, Reason: fmt.Sprintf("not restarted: node %s does not pass its checks (liveness %s, readiness %s%s), and restarting %s now would leave fewer ready gateways; fix it or restart it first (--node %s)",
			r.Node, r.Liveness, r.Readiness, suffix(r.ReadinessOutput), batchNames(batch), r.Node)}
	}
	return nil
}

func nodeNames(b []*target) []string {
	n := make([]string, len(b))
	for i, t := range b {
		n[i] = t.row.Node
	}
	return n
}

func batchNames(b []*target) string { return strings.Join(nodeNames(b), ", ") }

// drain puts the batch in maintenance and waits until no load balancer
// routes to it and shutdown_delay has passed. Cancelling ctx puts the
// batch back and returns an interrupted *RestartError.
func (c *Client) drain(ctx, work context.Context, batch []*target, lbService string, timeout time.Duration, rw *rowWatch, emit emitFunc) *RestartError {
	began := time.Now()
	for _, t := range batch {
		if t.svcID == "" {
			continue
		}
		mctx, cancel := context.WithTimeout(work, 10*time.Second)
		err := t.agent.Agent().EnableServiceMaintenanceOpts(t.svcID, "gwnomad restart: drained before a restart in place", c.cq(mctx))
		cancel()
		if err != nil {
			c.liftAll(work, batch, emit)
			err = classify("Consul", t.agentAt, "enabling maintenance of "+t.svcID, err)
			return &RestartError{Node: t.row.Node, Reason: "not restarted: " + err.Error(), Err: err}
		}
		t.maint = true
		emit(Event{Type: EventDrain, Message: fmt.Sprintf("node %s: maintenance on for %s (Consul agent at %s): the load balancers drop it", t.row.Node, t.svcID, t.agentAt), Node: ptrRow(t.row)})
	}
	delay := c.spec.Gateway.ShutdownDelay.Duration
	deadline := began.Add(timeout)
	var last string
	for {
		ok, why, err := c.routing(work, batch, lbService, false)
		if err == nil && ok && time.Since(began) >= delay {
			break
		}
		if err != nil {
			why = err.Error()
		}
		last = why
		if time.Now().After(deadline) {
			c.putBackAfterAbort(work, batch, lbService, emit)
			return &RestartError{Node: batchNames(batch), Reason: fmt.Sprintf("not restarted: not drained within %s (%s); maintenance lifted", timeout, last)}
		}
		select {
		case <-ctx.Done():
			c.putBackAfterAbort(work, batch, lbService, emit)
			return &RestartError{Node: batchNames(batch), Interrupted: true, Reason: "not restarted, put back in the load balancers", Err: ctx.Err()}
		case <-time.After(restartPoll):
		}
		c.watchRows(work, rw, emit)
	}
	for _, t := range batch {
		msg := fmt.Sprintf("node %s: drained in %s (no load balancer routes to it; shutdown_delay %s)", t.row.Node, time.Since(began).Truncate(100*time.Millisecond), delay)
		if lbService == "" {
			msg = fmt.Sprintf("node %s: drained in %s (Consul reports it in maintenance; shutdown_delay %s)", t.row.Node, time.Since(began).Truncate(100*time.Millisecond), delay)
		}
		emit(Event{Type: EventDrain, Message: msg, Node: ptrRow(t.row)})
	}
	return nil
}

// putBackAfterAbort lifts the batch's maintenance and waits (briefly)
// until the load balancers route to it again.
func (c *Client) putBackAfterAbort(ctx context.Context, batch []*target, lbService string, emit emitFunc) {
	c.liftAll(ctx, batch, emit)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if ok, _, err := c.routing(ctx, batch, lbService, true); err == nil && ok {
			for _, t := range batch {
				emit(Event{Type: EventDrain, Message: fmt.Sprintf("node %s: put back without a restart: maintenance lifted, routed again", t.row.Node), Node: ptrRow(t.row)})
			}
			return
		}
		time.Sleep(restartPoll)
	}
	emit(Event{Type: EventMessage, Message: fmt.Sprintf("maintenance of %s lifted, but not every load balancer routes to it again yet (see `gwnomad status`)", batchNames(batch))})
}

// liftAll lifts the maintenance this restart put on the batch. An agent
// that no longer knows the instance (the restart deregistered it) has
// nothing to lift.
func (c *Client) liftAll(ctx context.Context, batch []*target, emit emitFunc) {
	for _, t := range batch {
		if !t.maint {
			continue
		}
		mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := t.agent.Agent().DisableServiceMaintenanceOpts(t.svcID, c.cq(mctx))
		cancel()
		var se consulapi.StatusError
		if err != nil && !(errors.As(err, &se) && se.Code == http.StatusNotFound) && !strings.Contains(err.Error(), "Unknown service") {
			emit(Event{Type: EventMessage, Message: fmt.Sprintf("warning: node %s: lifting maintenance of %s on the Consul agent at %s: %v (lift it with `consul maint -disable -service %s`)", t.row.Node, t.svcID, t.agentAt, err, t.svcID)})
			continue
		}
		t.maint = false
	}
}

// restartBatch restarts the batch's allocations in place, in parallel.
func (c *Client) restartBatch(ctx context.Context, batch []*target, emit emitFunc) *RestartError {
	idx := uint64(0)
	if _, qm, err := c.consul.Health().Service(c.spec.Gateway.Service, jobs.ClusterTag(c.spec), false, c.cq(ctx)); err == nil {
		idx = qm.LastIndex
	}
	allocs := make([]*nomadapi.Allocation, len(batch))
	for i, t := range batch {
		a, _, err := c.nomad.Allocations().Info(t.row.AllocID, c.q(ctx))
		if err != nil {
			c.liftAll(ctx, batch, emit)
			err = c.nerr("reading allocation "+t.row.Alloc, err)
			return &RestartError{Node: t.row.Node, Reason: "not restarted: " + err.Error(), Err: err}
		}
		if ts := a.TaskStates[jobs.TaskName]; ts != nil {
			t.started = ts.StartedAt
		}
		t.index = idx
		allocs[i] = a
	}
	// The restart call returns once the old task has exited (up to
	// kill_timeout): a batch's nodes stop together, as a rollout's do.
	errs := make([]error, len(batch))
	var wg sync.WaitGroup
	for i, t := range batch {
		a := allocs[i]
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, c.spec.Gateway.KillTimeout.Duration+time.Minute)
			defer cancel()
			if err := c.nomad.Allocations().Restart(a, jobs.TaskName, c.q(rctx)); err != nil {
				errs[i] = c.nerr("restarting allocation "+t.row.Alloc, err)
				return
			}
			t.restarted = time.Now()
		})
	}
	wg.Wait()
	for i, t := range batch {
		if errs[i] != nil {
			c.liftAll(ctx, batch, emit)
			return &RestartError{Node: t.row.Node, Reason: "Nomad did not restart it: " + errs[i].Error(), Err: errs[i]}
		}
		emit(Event{Type: EventRestart, Message: fmt.Sprintf("node %s alloc %s: restarted in place by Nomad (job version %d, same allocation): waiting for its checks", t.row.Node, t.row.Alloc, t.row.JobVersion), Node: ptrRow(t.row)})
	}
	return nil
}

// waitReady waits until every node of the batch runs again and passes
// both checks with a result newer than its restart (see Restart, 3).
func (c *Client) waitReady(ctx context.Context, batch []*target, timeout time.Duration, rw *rowWatch, emit emitFunc) *RestartError {
	fresh := c.spec.Gateway.Checks.Interval.Duration + c.spec.Gateway.Checks.Timeout.Duration
	deadline := time.Now().Add(timeout)
	for {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		stubs, _, err := c.nomad.Jobs().Allocations(c.JobID(), false, c.q(qctx))
		var health map[string]*consulapi.ServiceEntry
		if err == nil {
			health, err = c.instances(qctx)
		}
		cancel()
		done := err == nil
		if err == nil {
			byID := map[string]*nomadapi.AllocationListStub{}
			for _, a := range stubs {
				byID[a.ID] = a
			}
			for _, t := range batch {
				if !t.readyAgain {
					t.check(byID[t.row.AllocID], health[t.row.AllocID], fresh)
				}
				if t.readyAgain {
					continue
				}
				done = false
			}
			rw.update(c.rowsOf(ctx, stubs, health), emit)
		}
		if done {
			for _, t := range batch {
				emit(Event{Type: EventMessage, Message: fmt.Sprintf("node %s: liveness and readiness passing %s after the restart", t.row.Node, t.readyAt.Sub(t.restarted).Truncate(100*time.Millisecond)), Node: ptrRow(rw.rows[t.row.AllocID])})
			}
			return nil
		}
		if time.Now().After(deadline) {
			var late []*target
			for _, t := range batch {
				if !t.readyAgain {
					late = append(late, t)
				}
			}
			c.liftAll(ctx, batch, emit)
			t := late[0]
			r := rw.rows[t.row.AllocID]
			reason := fmt.Sprintf("did not come back ready within %s of its restart (Nomad %s, liveness %s, readiness %s%s)", timeout, orDash(r.Nomad), orDash(r.Liveness), orDash(r.Readiness), suffix(r.ReadinessOutput))
			if err != nil {
				reason += "; last read: " + err.Error()
			}
			ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
			inst, _ := c.instances(ectx)
			lines := c.ExplainAlloc(ectx, t.row.AllocID, inst[t.row.AllocID])
			cancel()
			if len(lines) > 0 {
				emit(Event{Type: EventExplain, Message: lines[0], Lines: lines[1:]})
			}
			return &RestartError{Node: batchNames(late), Reason: reason, Explanation: lines}
		}
		time.Sleep(restartPoll * 2)
	}
}

// check marks t ready again once its task runs since a new start and
// Consul has a passing result of both checks from after the restart.
func (t *target) check(a *nomadapi.AllocationListStub, inst *consulapi.ServiceEntry, fresh time.Duration) {
	if a == nil {
		t.passSince = time.Time{}
		return
	}
	ts := a.TaskStates[jobs.TaskName]
	running := ts != nil && ts.State == "running" && ts.StartedAt.After(t.started)
	var live, ready *consulapi.HealthCheck
	if inst != nil {
		for _, ch := range inst.Checks {
			switch ch.Name {
			case jobs.LivenessCheckName:
				live = ch
			case jobs.ReadinessCheckName:
				ready = ch
			}
		}
	}
	passing := running && live != nil && ready != nil && live.Status == CheckPassing && ready.Status == CheckPassing
	if !passing {
		t.passSince = time.Time{}
		return
	}
	now := time.Now()
	if t.passSince.IsZero() {
		t.passSince = now
	}
	// A result that changed since the restart is the new process's; one
	// that held for a whole interval after the new start was seen is too
	// (Consul's agent ran the check again meanwhile).
	if ready.ModifyIndex > t.index || now.Sub(t.passSince) >= fresh {
		t.readyAgain, t.readyAt = true, now
	}
}

// putBack lifts the batch's maintenance and waits until every load
// balancer routes to it again.
func (c *Client) putBack(ctx context.Context, batch []*target, lbService string, timeout time.Duration, rw *rowWatch, emit emitFunc) *RestartError {
	c.liftAll(ctx, batch, emit)
	deadline := time.Now().Add(timeout)
	for {
		ok, why, err := c.routing(ctx, batch, lbService, true)
		if err == nil && ok {
			break
		}
		if err != nil {
			why = err.Error()
		}
		if time.Now().After(deadline) {
			return &RestartError{Node: batchNames(batch), Reason: fmt.Sprintf("restarted and ready, but not routed again within %s: %s", timeout, why)}
		}
		time.Sleep(restartPoll)
		c.watchRows(ctx, rw, emit)
	}
	for _, t := range batch {
		by := "every load balancer routes to it again"
		if lbService == "" {
			by = "Consul reports it passing again"
		}
		emit(Event{Type: EventRouted, Message: fmt.Sprintf("node %s: back in service, %s (%s after its restart)", t.row.Node, by, time.Since(t.restarted).Truncate(100*time.Millisecond)), Node: ptrRow(rw.rows[t.row.AllocID])})
	}
	return nil
}

// routing reports whether the batch is drained (routed false: Consul
// reports none of its instances passing and no load balancer routes to
// any) or back (routed true: Consul reports every one passing and every
// load balancer routes to every one). why says what is still missing.
func (c *Client) routing(ctx context.Context, batch []*target, lbService string, routed bool) (ok bool, why string, err error) {
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	health, err := c.instances(qctx)
	if err != nil {
		return false, "", err
	}
	for _, t := range batch {
		if t.svcID == "" {
			continue
		}
		e := health[t.row.AllocID]
		passing := e != nil && e.Checks.AggregatedStatus() == consulapi.HealthPassing
		if passing != routed {
			return false, fmt.Sprintf("Consul reports %s %s", t.row.Node, aggregated(e)), nil
		}
	}
	if lbService == "" {
		return true, "", nil
	}
	lbs, err := c.LoadBalancers(qctx, lbService)
	if err != nil {
		return false, "", err
	}
	for _, l := range lbs {
		if l.Check != consulapi.HealthPassing {
			continue
		}
		tbl, err := readRoutes(qctx, l)
		if err != nil {
			return false, err.Error(), nil
		}
		for _, t := range batch {
			if t.svcID == "" {
				continue
			}
			in, total := tbl.routes(c.spec.Gateway.Service, t.svcID, t.tags)
			switch {
			case routed && in < total:
				return false, fmt.Sprintf("load balancer %s routes to %s in %d of its %d route(s) to %s", l.ID, t.row.Node, in, total, c.spec.Gateway.Service), nil
			case !routed && in > 0:
				return false, fmt.Sprintf("load balancer %s still routes to %s", l.ID, t.row.Node), nil
			}
		}
	}
	return true, "", nil
}

func aggregated(e *consulapi.ServiceEntry) string {
	if e == nil {
		return "not registered"
	}
	return e.Checks.AggregatedStatus()
}

// lbTable is the part of a load balancer's /routes that Restart reads
// (lb/admin.Table).
type lbTable struct {
	Routes []struct {
		Service   string `json:"service"`
		Tag       string `json:"tag"`
		Discovery struct {
			Ready bool `json:"ready"`
		} `json:"discovery"`
		Instances []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"instances"`
	} `json:"routes"`
}

// routes counts the routes to service that may send to instance id (its
// tag, if the route has one, among tags): total, and in, those that list
// it (not ejected) with a live discovery. A route lists only the
// instances it sends new requests to.
func (tb *lbTable) routes(service, id string, tags []string) (in, total int) {
	for _, r := range tb.Routes {
		if r.Service != service || (r.Tag != "" && !slices.Contains(tags, r.Tag)) {
			continue
		}
		total++
		for _, i := range r.Instances {
			if i.ID == id && i.State != "ejected" && r.Discovery.Ready {
				in++
				break
			}
		}
	}
	return in, total
}

var lbHTTP = &http.Client{Timeout: 5 * time.Second}

// readRoutes reads a load balancer's /routes on its admin listener (meta
// "admin"; an unspecified host means the balancer's address).
func readRoutes(ctx context.Context, l LBRow) (*lbTable, error) {
	url, err := lbRoutesURL(l)
	if err != nil {
		return nil, &UnreachableError{Service: "load balancer " + l.ID, Addr: l.Node, Err: err}
	}
	unreachable := func(err error) error {
		return &UnreachableError{Service: "load balancer " + l.ID, Addr: url,
			Err: fmt.Errorf("%w (restart reads every balancer's /routes to know it stopped and started routing to a node; reach its admin listener, or pass --lb-service \"\")", err)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, unreachable(err)
	}
	resp, err := lbHTTP.Do(req)
	if err != nil {
		return nil, unreachable(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, unreachable(fmt.Errorf("GET /routes: %s", resp.Status))
	}
	var tb lbTable
	if err := json.NewDecoder(resp.Body).Decode(&tb); err != nil {
		return nil, unreachable(fmt.Errorf("GET /routes: %w", err))
	}
	return &tb, nil
}

func lbRoutesURL(l LBRow) (string, error) {
	if l.Admin == "" {
		return "", errors.New("registered without its admin address (meta \"admin\")")
	}
	host, port, err := net.SplitHostPort(l.Admin)
	if err != nil {
		return "", fmt.Errorf("admin address %q: %w", l.Admin, err)
	}
	// An admin listener on every interface is reached at the balancer's
	// address; one on loopback only from the balancer's own host.
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = l.Address
		if host == "" {
			host = "127.0.0.1"
		}
	}
	return "http://" + net.JoinHostPort(host, port) + "/routes", nil
}

// rowWatch turns successive node reads into EventNode changes (the live
// view's board).
type rowWatch struct {
	rows map[string]NodeRow
	read time.Time // last watchRows
}

func (w *rowWatch) update(rows []NodeRow, emit emitFunc) {
	for _, r := range rows {
		old, ok := w.rows[r.AllocID]
		w.rows[r.AllocID] = r
		if !ok || nodeChanged(old, r) {
			emit(Event{Type: EventNode, Message: nodeLine(r), Node: ptrRow(r)})
		}
	}
}

// watchRows reads the nodes for the board, at most once a second: the
// waits poll faster for what they wait for.
func (c *Client) watchRows(ctx context.Context, w *rowWatch, emit emitFunc) {
	if time.Since(w.read) < time.Second {
		return
	}
	w.read = time.Now()
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if rows, err := c.nodeRows(qctx, false); err == nil {
		w.update(rows, emit)
	}
}

func (c *Client) rowsOf(ctx context.Context, stubs []*nomadapi.AllocationListStub, health map[string]*consulapi.ServiceEntry) []NodeRow {
	var rows []NodeRow
	for _, a := range stubs {
		if terminalStatus(a.ClientStatus) || a.DesiredStatus != "run" {
			continue
		}
		rows = append(rows, c.row(ctx, a, health[a.ID]))
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Node < rows[j].Node })
	return rows
}

func ptrRow(r NodeRow) *NodeRow { return &r }
