# Consul ACL policy for the token that runs `gwnomad deploy|plan|status|stop`.
#   consul acl policy create -name gwnomad -rules @acl/consul-gwnomad.policy.hcl
#   consul acl token create -description "gwnomad CI" -policy-name gwnomad

# The [config] values of every cluster live under gwnomad/<cluster>/.
key_prefix "gwnomad/" {
  policy = "write"
}

# status: liveness and readiness of every gateway node.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
