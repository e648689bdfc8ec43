package scheduler

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/templates"
)

// pollWait bounds each blocking query of the monitor: the deployment is
// watched with blocking queries, the nodes' Consul checks are read at least
// this often.
const pollWait = 2 * time.Second

var revertRe = regexp.MustCompile(`rolling back to job version (\d+)`)

type emitFunc func(Event)
type finishFunc func(outcome string) *Summary

// monitor waits for the registration's evaluation, then follows its deployment.
func (c *Client) monitor(ctx context.Context, evalID string, version uint64, opts DeployOptions, sum *Summary, emit emitFunc, finish finishFunc) (*Summary, error) {
	ev, err := c.waitEval(ctx, evalID)
	if err != nil {
		if ctx.Err() != nil {
			return c.interrupted(ctx, "", sum, emit, finish)
		}
		return nil, err
	}
	emit(Event{Type: EventEvaluation, Message: fmt.Sprintf("evaluation %s %s%s", short(ev.ID), ev.Status, suffix(ev.StatusDescription))})
	if len(ev.FailedTGAllocs) > 0 {
		var reasons []string
		for _, tg := range sortedTG(ev.FailedTGAllocs) {
			reasons = append(reasons, explainMetric(tg, ev.FailedTGAllocs[tg], c.spec.SharedVolume.Name)...)
		}
		if ev.BlockedEval != "" {
			reasons = append(reasons, fmt.Sprintf("the job stays registered: Nomad places the missing nodes when a client can take them (blocked evaluation %s); `gwnomad stop` to give up", short(ev.BlockedEval)))
		}
		c.fillNodes(ctx, sum)
		sum.DeploymentID = ev.DeploymentID
		sum.Message = "placement failed: " + strings.Join(reasons, "; ")
		finish("placement_failed")
		return sum, &PlacementError{Reasons: reasons}
	}
	if ev.Status != "complete" {
		return nil, fmt.Errorf("evaluation %s %s: %s", short(ev.ID), ev.Status, ev.StatusDescription)
	}
	did := ev.DeploymentID
	if did == "" {
		if d, _, err := c.nomad.Jobs().LatestDeployment(c.JobID(), c.q(ctx)); err == nil && d != nil && d.JobVersion == version {
			did = d.ID
		}
	}
	if did == "" {
		c.fillNodes(ctx, sum)
		if sum.Ready < sum.Count {
			finish("failed")
			return sum, fmt.Errorf("no deployment was created and only %d of %d nodes pass both checks", sum.Ready, sum.Count)
		}
		return finish("healthy"), nil
	}
	return c.follow(ctx, did, version, opts, sum, emit, finish)
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

func sortedTG(m map[string]*nomadapi.AllocationMetric) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// waitEval waits with blocking queries until the evaluation is no longer pending.
func (c *Client) waitEval(ctx context.Context, id string) (*nomadapi.Evaluation, error) {
	var idx uint64
	for {
		q := (&nomadapi.QueryOptions{WaitIndex: idx, WaitTime: pollWait}).WithContext(ctx)
		ev, qm, err := c.nomad.Evaluations().Info(id, q)
		if err != nil {
			return nil, c.nerr("reading evaluation "+short(id), err)
		}
		if ev.Status != "pending" && ev.Status != "blocked" {
			return ev, nil
		}
		idx = qm.LastIndex
	}
}

func (c *Client) interrupted(ctx context.Context, did string, sum *Summary, emit emitFunc, finish finishFunc) (*Summary, error) {
	emit(Event{Type: EventInterrupted, Message: fmt.Sprintf("stopped monitoring; the deployment %sgoes on in Nomad: run `gwnomad status` to follow it", idWord(did))})
	sum.DeploymentID = did
	sum.Message = "monitoring interrupted: run `gwnomad status`"
	// The caller's context is done: read the nodes with a fresh, short one.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	c.fillNodes(qctx, sum)
	cancel()
	finish("interrupted")
	return sum, &InterruptedError{DeploymentID: did, Err: ctx.Err()}
}

func idWord(id string) string {
	if id == "" {
		return ""
	}
	return short(id) + " "
}

// follow watches a deployment to its end and handles a failure and Nomad's
// auto-revert.
func (c *Client) follow(ctx context.Context, did string, version uint64, opts DeployOptions, sum *Summary, emit emitFunc, finish finishFunc) (*Summary, error) {
	sum.DeploymentID = did
	w := newWatcher(c, emit)
	d, err := w.watch(ctx, did, opts.AutoPromote)
	if err != nil {
		if ctx.Err() != nil {
			return c.interrupted(ctx, did, sum, emit, finish)
		}
		return nil, err
	}
	if d.Status == nomadapi.DeploymentStatusSuccessful {
		c.fillNodes(ctx, sum)
		return finish("healthy"), nil
	}

	de := &DeployError{DeploymentID: d.ID, JobVersion: d.JobVersion, Description: d.StatusDescription, Explanation: w.explained}
	if m := revertRe.FindStringSubmatch(d.StatusDescription); m != nil {
		to, _ := strconv.ParseUint(m[1], 10, 64)
		de.Reverted, de.RevertedTo = true, to
		sum.Reverted, sum.RevertedTo = true, to
		emit(Event{Type: EventRevert, Message: fmt.Sprintf("Nomad auto-reverted job %q to version %d", c.JobID(), to)})
		c.afterRevert(ctx, w, version, sum, emit)
	} else {
		emit(Event{Type: EventMessage, Message: fmt.Sprintf("not reverted (auto_revert off, or no stable version): the failed version %d stays registered; fix the spec and deploy again, or `nomad job revert %s <version>`", d.JobVersion, c.JobID())})
	}
	c.fillNodes(ctx, sum)
	sum.Message = de.Error()
	finish("failed")
	return sum, de
}

// afterRevert follows the rollback deployment, so that the report ends
// with what serves.
func (c *Client) afterRevert(ctx context.Context, w *watcher, failed uint64, sum *Summary, emit emitFunc) {
	job, _, err := c.nomad.Jobs().Info(c.JobID(), c.q(ctx))
	if err != nil {
		emit(Event{Type: EventMessage, Message: "reading the reverted job: " + c.nerr("reading job", err).Error()})
		return
	}
	sum.ServingVersion = deref(job.Version)
	if p := job.Meta[jobs.MetaKVPrefix]; p != "" && p != c.configPrefix() {
		emit(Event{Type: EventRevert, Message: fmt.Sprintf("the reverted version renders its own configuration, %s", p)})
	}
	// Nomad registers the reverted job as a new version and deploys it.
	var rd *nomadapi.Deployment
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		d, qm, err := c.nomad.Jobs().LatestDeployment(c.JobID(), c.q(ctx))
		if err == nil && d != nil && d.JobVersion > failed {
			rd = d
			break
		}
		// Block on the job's deployments changing, at most pollWait.
		var idx uint64
		if qm != nil {
			idx = qm.LastIndex
		}
		c.nomad.Jobs().Deployments(c.JobID(), false, (&nomadapi.QueryOptions{WaitIndex: idx, WaitTime: pollWait}).WithContext(ctx))
	}
	if rd == nil {
		emit(Event{Type: EventMessage, Message: "no rollback deployment seen within a minute: see `gwnomad status`"})
		return
	}
	emit(Event{Type: EventRevert, Message: fmt.Sprintf("following the rollback deployment %s (job version %d)", short(rd.ID), rd.JobVersion)})
	sum.ServingVersion = rd.JobVersion
	d, err := w.watch(ctx, rd.ID, false)
	if err != nil {
		emit(Event{Type: EventMessage, Message: "following the rollback: " + err.Error()})
		return
	}
	emit(Event{Type: EventRevert, Message: fmt.Sprintf("rollback deployment %s %s: %s", short(d.ID), d.Status, d.StatusDescription)})
}

// watcher turns successive reads of a deployment, its allocations and
// their Consul checks into change events.
type watcher struct {
	c         *Client
	emit      emitFunc
	dep       string // status + description last reported
	groups    map[string]GroupView
	nodes     map[string]NodeRow
	seen      map[string]bool // allocations explained
	explained []string
}

func newWatcher(c *Client, emit emitFunc) *watcher {
	return &watcher{c: c, emit: emit, groups: map[string]GroupView{}, nodes: map[string]NodeRow{}, seen: map[string]bool{}}
}

func (w *watcher) watch(ctx context.Context, id string, autoPromote bool) (*nomadapi.Deployment, error) {
	var idx uint64
	errs := 0
	waitingSaid, promoted := false, false
	w.dep = ""
	for {
		q := (&nomadapi.QueryOptions{WaitIndex: idx, WaitTime: pollWait}).WithContext(ctx)
		d, qm, err := w.c.nomad.Deployments().Info(id, q)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errs++; errs > 5 {
				return nil, w.c.nerr("reading deployment "+short(id), err)
			}
			w.emit(Event{Type: EventMessage, Message: fmt.Sprintf("reading deployment %s: %v (retrying)", short(id), err)})
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		errs = 0
		idx = qm.LastIndex
		w.deployment(d)
		if err := w.allocs(ctx, d); err != nil && ctx.Err() == nil {
			w.emit(Event{Type: EventMessage, Message: err.Error()})
		}
		switch d.Status {
		case nomadapi.DeploymentStatusSuccessful, nomadapi.DeploymentStatusFailed, nomadapi.DeploymentStatusCancelled:
			return d, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if canariesReady(d) && !promoted {
			if autoPromote {
				if _, _, err := w.c.nomad.Deployments().PromoteAll(d.ID, w.c.w(ctx)); err != nil {
					w.emit(Event{Type: EventPromote, Message: "promoting canaries failed: " + err.Error()})
				} else {
					promoted = true
					w.emit(Event{Type: EventPromote, Message: fmt.Sprintf("canaries healthy: deployment %s promoted (--auto-promote)", short(d.ID))})
				}
			} else if !waitingSaid {
				waitingSaid = true
				w.emit(Event{Type: EventPromote, Message: fmt.Sprintf("canaries healthy, waiting for promotion: `nomad deployment promote %s` (or deploy with --auto-promote)", d.ID)})
			}
		}
	}
}

// canariesReady: every group with canaries has them all healthy and is not promoted.
func canariesReady(d *nomadapi.Deployment) bool {
	any := false
	for _, g := range d.TaskGroups {
		if g.DesiredCanaries == 0 {
			continue
		}
		if g.Promoted || g.HealthyAllocs < g.DesiredCanaries {
			return false
		}
		any = true
	}
	return any && d.Status == nomadapi.DeploymentStatusRunning
}

func (w *watcher) deployment(d *nomadapi.Deployment) {
	v := viewOf(d)
	if key := d.Status + "|" + d.StatusDescription; key != w.dep {
		w.dep = key
		w.emit(Event{Type: EventDeployment, Message: fmt.Sprintf("deployment %s (job version %d) %s: %s", short(d.ID), d.JobVersion, d.Status, d.StatusDescription), Deployment: v})
	}
	for _, name := range sortedGroups(v.Groups) {
		g := v.Groups[name]
		if old, ok := w.groups[d.ID+"/"+name]; ok && old == g {
			continue
		}
		w.groups[d.ID+"/"+name] = g
		w.emit(Event{Type: EventGroup, Message: fmt.Sprintf("group %s: %s", name, g), Group: name, GroupState: &g})
	}
}

// allocs reports node changes and explains the deployment's failed allocations.
func (w *watcher) allocs(ctx context.Context, d *nomadapi.Deployment) error {
	c := w.c
	stubs, _, err := c.nomad.Jobs().Allocations(c.JobID(), false, c.q(ctx))
	if err != nil {
		return c.nerr("listing allocations", err)
	}
	health, err := c.instances(ctx)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, a := range stubs {
		terminal := a.ClientStatus == "complete" || a.ClientStatus == "failed" || a.ClientStatus == "lost"
		old, known := w.nodes[a.ID]
		if terminal {
			if known {
				delete(w.nodes, a.ID)
				r := old
				r.Nomad, r.Desired = a.ClientStatus, a.DesiredStatus
				w.emit(Event{Type: EventNodeGone, Message: fmt.Sprintf("node %s alloc %s (version %d) %s", r.Node, r.Alloc, r.JobVersion, a.ClientStatus), Node: &r})
			}
			if a.ClientStatus == "failed" && a.JobVersion == d.JobVersion && !w.seen[a.ID] {
				w.explain(ctx, a.ID, health[a.ID])
			}
			continue
		}
		live[a.ID] = true
		r := c.row(ctx, a, health[a.ID])
		if !known || nodeChanged(old, r) {
			w.nodes[a.ID] = r
			w.emit(Event{Type: EventNode, Message: nodeLine(r), Node: &r})
		}
		unhealthy := a.DeploymentStatus != nil && a.DeploymentStatus.Healthy != nil && !*a.DeploymentStatus.Healthy
		if a.JobVersion == d.JobVersion && (unhealthy || (known && r.Restarts > old.Restarts)) && !w.seen[a.ID+strconv.FormatUint(r.Restarts, 10)] {
			w.seen[a.ID+strconv.FormatUint(r.Restarts, 10)] = true
			w.explain(ctx, a.ID, health[a.ID])
		}
	}
	return nil
}

func nodeChanged(a, b NodeRow) bool {
	return a.Nomad != b.Nomad || a.Desired != b.Desired || a.Liveness != b.Liveness || a.Readiness != b.Readiness ||
		a.Restarts != b.Restarts || a.JobVersion != b.JobVersion || healthWord(a.Healthy) != healthWord(b.Healthy) ||
		(b.Address != "" && a.Address != b.Address)
}

func healthWord(h *bool) string {
	switch {
	case h == nil:
		return ""
	case *h:
		return "healthy"
	}
	return "UNHEALTHY"
}

func nodeLine(r NodeRow) string {
	s := fmt.Sprintf("node %s alloc %s (version %d", r.Node, r.Alloc, r.JobVersion)
	if r.Canary {
		s += ", canary"
	}
	s += "): Nomad " + r.Nomad
	if r.Desired != "" && r.Desired != "run" {
		s += " (desired: " + r.Desired + ")"
	}
	s += fmt.Sprintf(", liveness %s, readiness %s", r.Liveness, r.Readiness)
	if h := healthWord(r.Healthy); h != "" {
		s += ", " + h
	}
	if r.Address != "" {
		s += ", " + r.Address
		if p := r.Ports["passthru_https"]; p != 0 {
			s += ":" + strconv.Itoa(p)
		}
	}
	if r.Restarts > 0 {
		s += fmt.Sprintf(", %d restart(s)", r.Restarts)
	}
	return s
}

func (w *watcher) explain(ctx context.Context, allocID string, inst *consulapi.ServiceEntry) {
	w.seen[allocID] = true
	lines := w.c.ExplainAlloc(ctx, allocID, inst)
	if len(lines) == 0 {
		return
	}
	w.explained = append(w.explained, lines...)
	w.emit(Event{Type: EventExplain, Message: lines[0], Lines: lines[1:]})
}

// ExplainAlloc says why an allocation is failing: its status, its task's
// recent events (a template waiting for a KV key, a driver error, a
// restart), its Consul checks' output and the last lines of its stderr.
func (c *Client) ExplainAlloc(ctx context.Context, allocID string, inst *consulapi.ServiceEntry) []string {
	a, _, err := c.nomad.Allocations().Info(allocID, c.q(ctx))
	if err != nil {
		return []string{fmt.Sprintf("allocation %s: %v", short(allocID), c.nerr("reading allocation", err))}
	}
	head := fmt.Sprintf("allocation %s on node %s (job version %d): %s", short(a.ID), a.NodeName, deref(a.Job.Version), a.ClientStatus)
	if a.ClientDescription != "" {
		head += " (" + a.ClientDescription + ")"
	}
	if ds := a.DeploymentStatus; ds != nil && ds.Healthy != nil && !*ds.Healthy {
		head += ", marked unhealthy by the deployment"
	}
	lines := []string{head}
	if ts := a.TaskStates[jobs.TaskName]; ts != nil {
		evs := ts.Events
		if len(evs) > 8 {
			evs = evs[len(evs)-8:]
		}
		lines = append(lines, "task events:")
		for _, e := range evs {
			msg := e.DisplayMessage
			if msg == "" {
				msg = e.Message
			}
			lines = append(lines, fmt.Sprintf("  %s %s: %s", time.Unix(0, e.Time).Format("15:04:05"), e.Type, msg))
		}
	}
	if inst != nil {
		for _, ch := range inst.Checks {
			if ch.ServiceID == "" || ch.Status == consulapi.HealthPassing {
				continue
			}
			line := fmt.Sprintf("Consul check %q is %s", ch.Name, ch.Status)
			if out := strings.TrimSpace(ch.Output); out != "" {
				line += ": " + clip(out)
			}
			lines = append(lines, line)
		}
	}
	if tail, err := c.stderrTail(ctx, a, 10); err == nil && len(tail) > 0 {
		lines = append(lines, "last lines of the task's stderr:")
		for _, l := range tail {
			lines = append(lines, "  "+l)
		}
	}
	return lines
}

// stderrTail reads the last n lines of the gateway task's stderr through
// the client's file system API (the newest rotated file).
func (c *Client) stderrTail(ctx context.Context, a *nomadapi.Allocation, n int) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	files, _, err := c.nomad.AllocFS().List(a, "alloc/logs", c.q(ctx))
	if err != nil {
		return nil, c.nerr("listing task logs", err)
	}
	prefix := jobs.TaskName + ".stderr."
	best, bestN := "", -1
	var size int64
	for _, f := range files {
		if num, ok := strings.CutPrefix(f.Name, prefix); ok {
			if i, err := strconv.Atoi(num); err == nil && i > bestN {
				best, bestN, size = f.Name, i, f.Size
			}
		}
	}
	if best == "" || size == 0 {
		return nil, nil
	}
	off := max(size-4096, 0)
	r, err := c.nomad.AllocFS().ReadAt(a, "alloc/logs/"+best, off, size-off, c.q(ctx))
	if err != nil {
		return nil, c.nerr("reading task stderr", err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading task stderr: %w", err)
	}
	text := string(templates.Redact(b))
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // the first one is cut
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, nil
}
