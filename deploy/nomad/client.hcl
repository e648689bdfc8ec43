# Nomad client on a gateway host. The host volume "apim-shared" is the NFS
# mount (nfs/srv-apimshared.mount); the gwnomad job asks for it by name, so
# Nomad places gateways only on clients that offer it (a client without the
# mount has no such volume and is never chosen). The node meta makes the mount
# visible in `nomad node status -verbose` and usable in constraints.
datacenter = "dc1"
data_dir   = "/opt/nomad/data"

client {
  enabled    = true
  node_class = "gateway"

  host_volume "apim-shared" {
    path      = "/srv/apimshared"
    read_only = false
  }

  meta {
    "gwnomad.shared_volume" = "apim-shared"
    "gwnomad.nfs_export"    = "nfs.internal.example:/exports/apim-shared"
  }

  options {
    # Never probe cloud metadata endpoints from a datacenter host.
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }
}

# Every Nomad client talks to its local Consul agent (consul/client.hcl).
consul {
  address = "127.0.0.1:8500"
}

plugin "docker" {
  config {
    # The WSO2 image runs as wso2carbon; gwnomad's job bind-mounts the
    # rendered deployment.toml, which needs no docker volume support.
    allow_privileged = false
  }
}

acl {
  enabled = true
}

disable_update_check = true
