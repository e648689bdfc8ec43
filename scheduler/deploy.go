package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/templates"
)

// DeployOptions tune Deploy.
type DeployOptions struct {
	// Detach returns once the job is registered, without monitoring.
	Detach bool
	// AutoPromote promotes canaries once they are healthy, even when the
	// spec's [update] auto_promote is false.
	AutoPromote bool
	// Report receives the events; nil discards them.
	Report Reporter
}

// InterruptedError is monitoring stopped by the caller's context (Ctrl-C):
// the deployment itself goes on in Nomad.
type InterruptedError struct {
	DeploymentID string
	Err          error
}

func (e *InterruptedError) Error() string {
	return fmt.Sprintf("stopped monitoring deployment %s (it goes on in Nomad; run `gwnomad status` to follow it): %v", short(e.DeploymentID), e.Err)
}
func (e *InterruptedError) Unwrap() error { return e.Err }

// Deploy rolls the spec out:
//
//  1. Preflight: Nomad and Consul answer, enough client nodes have the
//     host volume and the driver;
//  2. Plan: Nomad's job plan and the KV diff, reported as EventPlan; a
//     placement the plan already knows to fail stops here;
//  3. write KV: the [config] values in one Consul transaction, into the
//     new configuration's own folder (the running version keeps reading
//     its own); the template is rendered against Consul to prove every
//     key it needs is there; if that or the registration fails, the new
//     folder is deleted again;
//  4. register the job (check-index from the plan) and monitor the
//     evaluation and the deployment to the end, reporting every change;
//     a failure is explained (task events, check output, stderr tail) and
//     an auto-revert is followed to the end (the reverted version renders
//     its own configuration folder: no KV to restore).
//
// Errors: *InvalidError, *UnreachableError, *PlacementError, *DeployError,
// *InterruptedError. The Summary is returned with every outcome it can
// describe (also on *DeployError).
func (c *Client) Deploy(ctx context.Context, opts DeployOptions) (*Summary, error) {
	rep := opts.Report
	if rep == nil {
		rep = Discard
	}
	start := time.Now()
	emit := func(e Event) {
		e.Time = time.Now()
		rep.Report(e)
	}

	pf, err := c.Preflight(ctx)
	if err != nil {
		return nil, &unchanged{err}
	}
	emit(Event{Type: EventPreflight, Message: fmt.Sprintf("Nomad at %s and Consul at %s answer; %d of %d client nodes can run a gateway (host volume %q, driver %s), %d wanted",
		c.nomadAddr, c.consulAddr, pf.Usable, len(pf.Nodes), c.spec.SharedVolume.Name, c.spec.Gateway.Driver, c.spec.Gateway.Count)})

	plan, err := c.Plan(ctx)
	if err != nil {
		return nil, &unchanged{err}
	}
	emit(Event{Type: EventPlan, Message: planLine(plan), Plan: plan})
	if len(plan.Placement) > 0 {
		return nil, &unchanged{&PlacementError{Reasons: plan.Placement}}
	}

	sum := &Summary{Job: c.JobID(), Count: c.spec.Gateway.Count}
	finish := func(outcome string) *Summary {
		sum.Outcome = outcome
		sum.Duration = time.Since(start).Truncate(100 * time.Millisecond).String()
		emit(Event{Type: EventSummary, Message: outcome, Summary: sum})
		return sum
	}

	if !plan.Changed() {
		st, err := c.Status(ctx)
		if err != nil {
			return nil, err
		}
		sum.JobVersion, sum.ServingVersion = st.JobVersion, st.JobVersion
		if st.InProgress && st.Deployment != nil {
			emit(Event{Type: EventMessage, Message: fmt.Sprintf("no change; deployment %s of version %d is in progress: following it", short(st.Deployment.ID), st.Deployment.JobVersion)})
			return c.follow(ctx, st.Deployment.ID, st.Deployment.JobVersion, opts, sum, emit, finish)
		}
		c.fillNodes(ctx, sum)
		if sum.Ready < sum.Count {
			finish("failed")
			return sum, fmt.Errorf("nothing to deploy, but only %d of %d gateway nodes pass both checks (see `gwnomad status`)", sum.Ready, sum.Count)
		}
		return finish("unchanged"), nil
	}

	written, created, err := c.writeKV(ctx)
	if err != nil {
		return nil, &unchanged{err} // one transaction: all or nothing
	}
	switch {
	case written == 0:
		emit(Event{Type: EventKV, Message: fmt.Sprintf("Consul KV: %s holds this configuration already", c.configPrefix())})
	case created:
		emit(Event{Type: EventKV, Message: fmt.Sprintf("Consul KV: %d key(s) written in one transaction under %s (a new folder: the running version keeps reading its own)",
			written, c.configPrefix())})
	default:
		emit(Event{Type: EventKV, Message: fmt.Sprintf("Consul KV: %d key(s) under %s repaired (they differed from the spec)", written, c.configPrefix())})
	}
	// Until the job is registered, a failure deletes the folder this
	// deploy created: nothing reads it, and nothing is left behind.
	undo := func(cause error) error {
		if !created {
			return &unchanged{cause}
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if cs := c.runningChecksum(uctx); cs != "" && cs == c.job.Meta[jobs.MetaConfigChecksum] {
			return cause // registered after all (the answer was lost): the folder is in use
		}
		if err := c.dropConfig(uctx); err != nil {
			return fmt.Errorf("%w; deleting the unused KV folder %s failed too (no job version reads it): %v", cause, c.configPrefix(), err)
		}
		emit(Event{Type: EventKV, Message: fmt.Sprintf("Consul KV: %s deleted again (the job was not registered)", c.configPrefix())})
		return &unchanged{cause}
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = templates.Render(rctx, c.spec, templates.Options{Consul: c.consul})
	cancel()
	if err != nil {
		var ce *templates.ConsulError
		if errors.As(err, &ce) {
			return nil, undo(c.cerr("rendering deployment.toml against Consul", err))
		}
		return nil, undo(fmt.Errorf("deployment.toml does not render against Consul KV: %w", err))
	}
	if plan.JobExists && (plan.JobDiff == nil || plan.JobDiff.Type == "None") {
		// Only the registered configuration's folder was incomplete (keys
		// deleted by hand): it is whole again, and the job is as it was.
		st, err := c.Status(ctx)
		if err != nil {
			return nil, err
		}
		sum.JobVersion, sum.ServingVersion = st.JobVersion, st.JobVersion
		c.fillNodes(ctx, sum)
		if sum.Ready < sum.Count {
			finish("failed")
			return sum, fmt.Errorf("KV repaired, but only %d of %d gateway nodes pass both checks (see `gwnomad status`)", sum.Ready, sum.Count)
		}
		return finish("repaired"), nil
	}

	resp, _, err := c.nomad.Jobs().RegisterOpts(c.job, &nomadapi.RegisterOptions{EnforceIndex: true, ModifyIndex: plan.jobModifyIndex}, c.w(ctx))
	if err != nil {
		if strings.Contains(err.Error(), "modify index") || strings.Contains(err.Error(), "Enforcing job modify index") {
			return nil, undo(fmt.Errorf("registering job %s: the job changed since it was planned (someone else deployed?); run again: %w", c.JobID(), err))
		}
		return nil, undo(c.nerr("registering job "+c.JobID(), err))
	}
	job, _, err := c.nomad.Jobs().Info(c.JobID(), c.q(ctx))
	if err != nil {
		return nil, c.nerr("reading job "+c.JobID(), err)
	}
	version := deref(job.Version)
	sum.JobVersion, sum.ServingVersion = version, version
	msg := fmt.Sprintf("job %q registered: version %d, evaluation %s", c.JobID(), version, short(resp.EvalID))
	if resp.Warnings != "" {
		msg += "; warnings: " + strings.TrimSpace(resp.Warnings)
	}
	emit(Event{Type: EventRegister, Message: msg})
	if n, err := c.pruneConfigs(ctx); err != nil {
		emit(Event{Type: EventMessage, Message: fmt.Sprintf("warning: pruning old KV configuration folders: %v", err)})
	} else if n > 0 {
		emit(Event{Type: EventMessage, Message: fmt.Sprintf("Consul KV: %d configuration folder(s) no tracked job version uses deleted", n)})
	}
	if opts.Detach {
		sum.Message = "detached: follow the rollout with `gwnomad status`"
		return finish("detached"), nil
	}
	return c.monitor(ctx, resp.EvalID, version, opts, sum, emit, finish)
}

func planLine(p *Plan) string {
	if !p.Changed() {
		return "no changes"
	}
	return fmt.Sprintf("%d job change(s), %d KV change(s)", len(p.JobChanges), len(p.KV))
}

func (c *Client) fillNodes(ctx context.Context, sum *Summary) {
	rows, err := c.nodeRows(ctx, false)
	if err != nil {
		return
	}
	sum.Nodes = rows
	sum.Ready = 0
	for _, r := range rows {
		if r.Ready() {
			sum.Ready++
		}
	}
}
