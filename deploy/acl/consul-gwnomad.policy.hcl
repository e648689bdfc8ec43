# Consul ACL policy for the token that runs `gwnomad deploy|plan|status|stop|restart`.
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

# restart: a gateway node in and out of maintenance mode, on its Consul
# agent, while it restarts. The spec's [gateway] service, "apim-gateway"
# by default.
service "apim-gateway" {
  policy = "write"
}
