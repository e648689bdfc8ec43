# Consul ACL policy for `gwnomad lb`.
#   consul acl policy create -name gwnomad-lb -rules @acl/consul-lb.policy.hcl

# Discovery: the gateway instances and their health.
service "apim-gateway" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}

# The LB registers itself (with a check on its admin /healthz).
service "gwnomad-lb" {
  policy = "write"
}

# Certificates shared by every LB instance (encrypted), and the locks that
# make one instance order a certificate at a time (Consul sessions).
key_prefix "gwnomad/lb/certmagic/" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
