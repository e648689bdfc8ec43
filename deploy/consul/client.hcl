# Consul agent on every Nomad client: Nomad registers the gateway services and
# their two checks (liveness, readiness) with this local agent, and the load
# balancer's blocking queries see them within the check interval.
datacenter = "dc1"
data_dir   = "/opt/consul"
server     = false
bind_addr  = "{{ GetPrivateInterfaces | attr \"address\" }}"
client_addr = "127.0.0.1"
retry_join = ["consul-1.internal.example", "consul-2.internal.example", "consul-3.internal.example"]

ports {
  http  = 8500
  grpc  = -1
  dns   = 8600
}

acl {
  enabled        = true
  default_policy = "deny"
  down_policy    = "extend-cache"
  tokens {
    # The agent token (node identity); set it with `consul acl set-agent-token`.
  }
}

disable_update_check = true
enable_local_script_checks = false
