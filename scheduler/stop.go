package scheduler

import (
	"context"
	"fmt"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
)

// StopResult is what Stop did.
type StopResult struct {
	Job        string   `json:"job"`
	WasRunning bool     `json:"was_running"`
	Stopped    []string `json:"stopped_allocs"`
	PurgedJob  bool     `json:"purged_job"`
	PurgedKV   bool     `json:"purged_kv"`
	Duration   string   `json:"duration"`
}

// Stop deregisters the job and waits until none of its allocations runs.
// With purge the job is purged from Nomad and the cluster's KV folder
// gwnomad/<cluster>/ is deleted; without it the KV values stay, so that a
// later deploy finds them. Events go to rep (nil: discarded).
func (c *Client) Stop(ctx context.Context, purge bool, rep Reporter) (*StopResult, error) {
	if rep == nil {
		rep = Discard
	}
	start := time.Now()
	emit := func(e Event) { e.Time = time.Now(); rep.Report(e) }
	res := &StopResult{Job: c.JobID()}

	if _, err := c.nomad.Status().Leader(); err != nil {
		return nil, c.nerr("asking for the Nomad leader", err)
	}
	if purge {
		if _, err := c.consul.Status().Leader(); err != nil {
			return nil, c.cerr("asking for the Consul leader", err)
		}
	}
	job, _, err := c.nomad.Jobs().Info(c.JobID(), c.q(ctx))
	switch {
	case err != nil && !isNotFound(err):
		return nil, c.nerr("reading job "+c.JobID(), err)
	case err == nil && job != nil:
		res.WasRunning = !deref(job.Stop)
		stubs, _, err := c.nomad.Jobs().Allocations(c.JobID(), false, c.q(ctx))
		if err != nil {
			return nil, c.nerr("listing allocations", err)
		}
		var live []string
		for _, a := range stubs {
			if !terminalStatus(a.ClientStatus) {
				live = append(live, a.ID)
			}
		}
		evalID, _, err := c.nomad.Jobs().Deregister(c.JobID(), purge, c.w(ctx))
		if err != nil {
			return nil, c.nerr("stopping job "+c.JobID(), err)
		}
		res.PurgedJob = purge
		emit(Event{Type: EventMessage, Message: fmt.Sprintf("job %q stopped (evaluation %s); waiting for %d allocation(s) to stop", c.JobID(), short(evalID), len(live))})
		for _, id := range live {
			if err := c.waitAllocStopped(ctx, id, emit); err != nil {
				return res, err
			}
			res.Stopped = append(res.Stopped, id)
		}
	default:
		emit(Event{Type: EventMessage, Message: fmt.Sprintf("job %q is not registered in Nomad", c.JobID())})
	}
	if purge {
		if err := c.PurgeKV(ctx); err != nil {
			return res, err
		}
		res.PurgedKV = true
		emit(Event{Type: EventMessage, Message: fmt.Sprintf("Consul KV %s deleted", c.root())})
	}
	res.Duration = time.Since(start).Truncate(100 * time.Millisecond).String()
	return res, nil
}

func terminalStatus(s string) bool { return s == "complete" || s == "failed" || s == "lost" }

// waitAllocStopped blocks (blocking queries) until the allocation is
// terminal on its client, or gone from Nomad's state.
func (c *Client) waitAllocStopped(ctx context.Context, id string, emit func(Event)) error {
	var idx uint64
	for {
		a, qm, err := c.nomad.Allocations().Info(id, (&nomadapi.QueryOptions{WaitIndex: idx, WaitTime: pollWait}).WithContext(ctx))
		if err != nil {
			if isNotFound(err) {
				return nil
			}
			return c.nerr("waiting for allocation "+short(id), err)
		}
		if terminalStatus(a.ClientStatus) {
			emit(Event{Type: EventNodeGone, Message: fmt.Sprintf("node %s alloc %s %s", a.NodeName, short(a.ID), a.ClientStatus)})
			return nil
		}
		idx = qm.LastIndex
	}
}
