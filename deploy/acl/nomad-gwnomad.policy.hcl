# Nomad ACL policy for the token that runs `gwnomad deploy|plan|status|stop|logs`.
#   nomad acl policy apply -description "gwnomad deploy" gwnomad acl/nomad-gwnomad.policy.hcl
#   nomad acl token create -name gwnomad-ci -policy gwnomad
namespace "default" {
  # submit and plan the job, follow deployments, promote canaries, read the
  # task's stdout and stderr (read-logs: `gwnomad logs`, and a failed task's
  # stderr in deploy) and the rendered deployment.toml (read-fs).
  capabilities = ["list-jobs", "read-job", "submit-job", "read-logs", "read-fs"]
}

# Preflight: which ready nodes offer the shared host volume.
node {
  policy = "read"
}

# The gateway tasks mount the shared volume read-write.
host_volume "apim-shared" {
  policy = "write"
}
