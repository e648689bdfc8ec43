# The load balancer as a Nomad system job: one instance on every edge node
# (node_class = "edge"), binding 80 and 443 on the host. Every instance
# discovers the gateways through its local Consul agent and registers itself
# there; a DNS name or anycast address in front spreads clients over them.
#   nomad var put nomad/jobs/gwnomad-lb consul_token=<token with acl/consul-lb.policy.hcl>
#   nomad job run gwnomad-lb.nomad.hcl
job "gwnomad-lb" {
  type        = "system"
  datacenters = ["dc1"]

  constraint {
    attribute = "${node.class}"
    value     = "edge"
  }

  update {
    max_parallel     = 1
    min_healthy_time = "10s"
    healthy_deadline = "2m"
    auto_revert      = true
  }

  group "lb" {
    network {
      port "http" {
        static = 80
      }
      port "https" {
        static = 443
      }
    }

    task "lb" {
      driver = "exec"

      artifact {
        source      = "https://artifacts.internal.example/gwnomad/v0.1.0/gwnomad-linux-amd64"
        destination = "local/bin/gwnomad"
        mode        = "file"
      }

      config {
        command = "local/bin/gwnomad"
        args    = ["lb", "--config", "local/lb.toml"]
      }

      template {
        destination = "secrets/consul.env"
        env         = true
        data        = <<-EOT
          CONSUL_HTTP_ADDR=127.0.0.1:8500
          {{ with nomadVar "nomad/jobs/gwnomad-lb" }}CONSUL_HTTP_TOKEN={{ .consul_token }}{{ end }}
        EOT
      }

      template {
        destination   = "local/lb.toml"
        # restart: every change applies (the LB drains first). Where only
        # [[routes]]/[health] change, change_mode = "signal" with
        # change_signal = "SIGHUP" applies them without closing a connection
        # (other changes are then refused and logged until a restart).
        change_mode   = "restart"
        data          = <<-EOT
          [listen]
          http  = ":{{ env "NOMAD_PORT_http" }}"
          https = ":{{ env "NOMAD_PORT_https" }}"
          admin = "127.0.0.1:9901"

          [[routes]]
          hosts   = ["gw.am.wso2.com"]
          service = "apim-gateway"
          port    = "passthru_http"

          [tls]
          mode = "files"
          cert_file = "/etc/gwnomad/tls/gw.am.wso2.com.crt"
          key_file  = "/etc/gwnomad/tls/gw.am.wso2.com.key"
        EOT
      }

      # SIGTERM: deregister, stop accepting, drain; give it time.
      kill_signal  = "SIGTERM"
      kill_timeout = "40s"

      resources {
        cpu    = 1000
        memory = 256
      }
    }
  }
}
