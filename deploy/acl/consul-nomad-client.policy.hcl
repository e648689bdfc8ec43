# Consul ACL policy for the token of each Nomad client's Consul integration
# (consul { token = ... } in the Nomad client config): Nomad registers the
# gateway services and their checks with the local agent, and renders each
# gateway's deployment.toml from its configuration's KV folder (the template
# reads with this token).
#   consul acl policy create -name nomad-client -rules @acl/consul-nomad-client.policy.hcl
agent_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "write"
}
# The [config] values of every cluster (gwnomad/<cluster>/config/<id>/).
key_prefix "gwnomad/" {
  policy = "read"
}
