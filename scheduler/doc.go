// Package scheduler is everything gwnomad says to Nomad and Consul when it
// deploys a gateway cluster: the checks before, the Consul KV folder,
// the plan, the registration, the deployment monitor and its events, the
// status rows, the stop.
//
// # A deploy in Go
//
//	s, _, err := spec.Load("gwnomad.toml")
//	c, err := scheduler.New(s) // builds the job, renders offline: *InvalidError if wrong
//	sum, err := c.Deploy(ctx, scheduler.DeployOptions{Report: scheduler.NewTextReporter(os.Stdout)})
//
// Deploy runs, in order: Preflight (Nomad and Consul answer; enough ready,
// eligible clients in the job's datacenters have the host volume and a
// healthy driver, else a *PlacementError naming the nodes), Plan (Nomad's
// job plan with diff and the KV diff; a placement the plan already knows
// to fail stops here), the write of the configuration's own KV folder, a
// render of deployment.toml against Consul (every key the template needs
// exists), the registration (check-index from the plan) and the monitor.
//
// Every error before the registration leaves nothing changed that a node
// reads (a folder written for it is deleted again): NothingChanged(err)
// says so.
//
// # What the monitor watches
//
// The registration's evaluation (blocking queries): failed placements are
// a *PlacementError built from the evaluation's FailedTGAllocs metrics
// (the constraint that filtered nodes, e.g. "missing compatible host
// volumes" with the volume's name). Then the deployment (blocking queries,
// at least every 2 s), the job's allocations and the Consul health of
// every instance (service [gateway] service, tag cluster=<name>), turned
// into events:
//
//	deployment  status and description changed
//	group       desired / placed / healthy / unhealthy of a task group
//	node        an allocation's Nomad state, liveness, readiness, health
//	explain     why an allocation fails: task events (a template waiting
//	            for a key, a driver error), Consul check output, the last
//	            lines of its stderr (read through the client's file API)
//	revert      Nomad auto-reverted; the reverted version renders its own KV
//	            folder, which was never changed; the rollback
//	summary     the end: nodes, addresses, versions, time taken
//
// A Reporter prints them: NewJSONReporter (one object per line),
// NewTextReporter (one line per change) or NewLiveReporter (a board
// redrawn in place on a terminal). Cancelling the context stops the
// monitor, never the deployment: *InterruptedError.
//
// # Consul KV
//
// Under gwnomad/<cluster>/config/, each configuration (a set of [config]
// values) has a folder of its own, named by its ID (templates.KV), written
// once and never changed. A job version's template names its folder (job
// meta gwnomad.kv_prefix), so every node renders its own version's values:
// an old node restarting during a rollout, or a version Nomad reverts to,
// needs nothing from gwnomad. A deploy that fails before Nomad takes the
// job deletes the folder it wrote; after a registration, folders that no
// job version Nomad still tracks names are deleted.
//
// # Status and stop
//
// Status lists one NodeRow per live allocation (node, address, ports,
// Nomad state, liveness, readiness, job version, uptime) and the latest
// deployment. Stop deregisters the job and waits until no allocation
// runs; purge also purges the job and deletes gwnomad/<cluster>/.
//
// # Exit codes
//
// The error types map to the exit codes of the commands: *InvalidError 3,
// *UnreachableError 4 (unreachable or HTTP 403), *PlacementError 2,
// *DeployError 1 (Reverted and RevertedTo tell whether Nomad rolled back).
package scheduler
