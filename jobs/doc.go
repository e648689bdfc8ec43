// Package jobs turns a gateway spec into the Nomad job that runs it. It does
// no I/O: spec in, *api.Job out.
//
//	s, _, err := spec.Load("gwnomad.toml")
//	job, err := jobs.Build(s)
//	b, err := jobs.JSON(job) // {"Job": ...}, what `nomad job run -json` accepts
//
// # The job
//
// One service job, ID = [cluster] name, with one group "gateway" of
// [gateway] count tasks "gateway":
//
//   - never two on one client (distinct_hosts); restart in place 3 times in
//     10 minutes (15s apart), then reschedule elsewhere, unlimited, with an
//     exponential back-off up to 10 minutes;
//   - network mode "host": the gateway binds the client's ports itself
//     (exec; docker with network_mode = "host"). A port of 0 in the spec
//     is dynamic; a static one is reserved at port + offset;
//   - the host volume [shared_volume] name, mounted at <home>/<mount>;
//   - a template block rendering deployment.toml (package templates) at
//     <home>/repository/conf/deployment.toml: inside the chroot for exec
//     (Nomad joins an absolute destination to the task directory), or at
//     local/deployment.toml bind-mounted there for docker. change_mode is
//     "noop": a config change is a new job version (the job meta
//     gwnomad.config_checksum changes) rolled out under the update block,
//     node by node, never a restart of every node at once;
//   - the update block from [update], health_check = "checks", so that
//     readiness gates the rollout;
//   - shutdown_delay (the load balancer stops sending before the node
//     stops) and kill_timeout from [gateway].
//
// # The Consul service (the contract with the load balancer and the UI)
//
// Each node registers one Consul service, name = [gateway] service
// (default "apim-gateway"), on the client's address:
//
//   - Port: the passthru_https port (API traffic over TLS).
//   - Meta port_<label> for every port, the port the node listens on:
//     port_http, port_https, port_passthru_http, port_passthru_https and,
//     with clustering, port_clustering. The load balancer reads these
//     (Service.Address + Meta["port_passthru_http"], ...).
//   - Meta cluster, node (the Nomad client's name), alloc_id, hostname,
//     product, product_version, config_checksum (12 hex digits of the
//     config the node runs), kv_prefix; canaries add canary = "true".
//   - Tags: "gwnomad", "cluster=<name>", "wso2am-<product_version>";
//     canaries carry "canary" too (canary_tags).
//   - Checks: "WSO2 gateway liveness (/services/Version)", HTTP on the
//     http port, restarting the task after [gateway.checks] restart_limit
//     failures (check_restart, after restart_grace); "WSO2 gateway
//     readiness (/api/am/gateway/v2/server-startup-healthcheck)", HTTPS on
//     the https port, TLS verification skipped by default. A node is ready
//     for traffic when both pass.
//
// Nomad 1.6 has no job-version variable for interpolation, so the job
// version is not in the service meta: config_checksum identifies what a
// node runs.
package jobs
