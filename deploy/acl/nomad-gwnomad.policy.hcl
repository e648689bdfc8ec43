# Nomad ACL policy for the token that runs `gwnomad deploy|plan|status|stop|logs|restart`.
#   nomad acl policy apply -description "gwnomad deploy" gwnomad acl/nomad-gwnomad.policy.hcl
#   nomad acl token create -name gwnomad-ci -policy gwnomad
namespace "default" {
  # submit and plan the job, follow deployments, promote canaries, read the
  # task's stdout and stderr (read-logs: `gwnomad logs`, and a failed task's
  # stderr in deploy) and the rendered deployment.toml (read-fs), restart
  # a gateway's allocation in place (alloc-lifecycle: `gwnomad restart`).
  capabilities = ["list-jobs", "read-job", "submit-job", "read-logs", "read-fs", "alloc-lifecycle"]
}

# Preflight: which ready nodes offer the shared host volume.
node {
  policy = "read"
}

# restart: which Consul agent a gateway node's Nomad client uses (the
# client's /v1/agent/self), to put that node's instance in maintenance.
agent {
  policy = "read"
}

# The gateway tasks mount the shared volume read-write.
host_volume "apim-shared" {
  policy = "write"
}
