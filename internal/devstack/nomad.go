package devstack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"

	nomadapi "github.com/hashicorp/nomad/api"
)

// NomadAgent is one Nomad agent: the server or a client.
type NomadAgent struct {
	Name     string // Nomad node name (clients) or server name
	HTTPAddr string // "127.0.0.1:port"
	RPCPort  int
	DataDir  string
	Consul   *ConsulAgent // the Consul agent this Nomad agent talks to
	Proc     *Proc
	token    string // NomadACLManagementToken with Config.ACL, else ""
}

// NomadACLManagementToken is the secret of Nomad's bootstrap (management)
// token when Config.ACL is set. Like ACLManagementToken, it guards nothing
// but a throwaway test agent on loopback.
const NomadACLManagementToken = "5e1f0b7a-2c43-4b8e-9a61-3f0d27c4e9b2"

// API returns a Nomad API client for this agent.
func (a *NomadAgent) API() *nomadapi.Client {
	c, err := nomadapi.NewClient(&nomadapi.Config{Address: "http://" + a.HTTPAddr, SecretID: a.token})
	if err != nil {
		panic(err)
	}
	return c
}

// The task chroot of the exec driver gets only what it needs: the simulator is
// a static binary, so no /usr or /lib is copied into every allocation (which
// would cost seconds per placement on a small machine).
var nomadConfig = template.Must(template.New("nomad").Parse(`
name = "{{.Name}}"
data_dir = "{{.DataDir}}"
bind_addr = "127.0.0.1"
disable_update_check = true
log_level = "INFO"
leave_on_interrupt = true
leave_on_terminate = true
ports {
  http = {{.HTTP}}
  rpc  = {{.RPC}}
  serf = {{.Serf}}
}
advertise {
  http = "127.0.0.1:{{.HTTP}}"
  rpc  = "127.0.0.1:{{.RPC}}"
  serf = "127.0.0.1:{{.Serf}}"
}
consul {
  address = "{{.ConsulAddr}}"
{{- if .ACL}}
  token = "{{.ConsulToken}}"
{{- end}}
  auto_advertise = false
  server_auto_join = false
  client_auto_join = false
}
{{- if .ACL}}
acl {
  enabled = true
}
{{- end}}
{{- if .Server}}
server {
  enabled = true
  bootstrap_expect = 1
  # Quick garbage collection and heartbeats: tests stop and replace nodes.
  heartbeat_grace = "5s"
  min_heartbeat_ttl = "5s"
}
{{- else}}
client {
  enabled = true
  servers = ["127.0.0.1:{{.ServerRPC}}"]
  network_interface = "lo"
  # Every client shares 127.0.0.1, but each one's scheduler-side port index
  # only knows its own allocations: disjoint dynamic port ranges keep two
  # gateways on different "nodes" from being given the same port.
  min_dynamic_port = {{.MinDynamicPort}}
  max_dynamic_port = {{.MaxDynamicPort}}
  cpu_total_compute = 4000
  memory_total_mb = 4096
  host_volume "{{.Volume}}" {
    path      = "{{.SharedDir}}"
    read_only = false
  }
  chroot_env {
{{- range $src, $dst := .Chroot}}
    "{{$src}}" = "{{$dst}}"
{{- end}}
  }
  meta {
    "gwnomad.shared_volume" = "{{.Volume}}"
  }
  options {
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
    "driver.allowlist"     = "exec,raw_exec"
  }
  gc_interval = "1m"
}
plugin "raw_exec" {
  config { enabled = true }
}
{{- end}}
`))

type nomadTmplData struct {
	Name, DataDir, ConsulAddr, SharedDir, Volume string
	HTTP, RPC, Serf, ServerRPC                   int
	MinDynamicPort, MaxDynamicPort               int
	Server, ACL                                  bool
	ConsulToken                                  string
	Chroot                                       map[string]string
}

// Nomad's default dynamic port range, split between the clients.
const (
	minDynamicPort = 20000
	maxDynamicPort = 32000
)

// dynamicPorts returns client i's (0-based) share of Nomad's dynamic port
// range when there are n clients: the shares never overlap, and all stay
// below Linux's ephemeral range (32768 and up), from which FreePorts and
// outgoing connections take theirs.
func dynamicPorts(i, n int) (lo, hi int) {
	if n < 1 {
		n = 1
	}
	share := (maxDynamicPort - minDynamicPort) / n
	lo = minDynamicPort + i*share
	return lo, lo + share - 1
}

// newNomad prepares a Nomad agent: the server when server is nil, otherwise
// client number i (0-based) of cfg.NomadClients. consulToken is its Consul
// integration's token (with cfg.ACL).
func newNomad(cfg *Config, name string, i int, consul *ConsulAgent, server *NomadAgent, consulToken string) (*NomadAgent, error) {
	ports, err := FreePorts(3)
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(cfg.Dir, "data", name)
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	d := nomadTmplData{
		Name: name, DataDir: dataDir, ConsulAddr: consul.HTTPAddr,
		SharedDir: cfg.SharedDir, Volume: cfg.HostVolume,
		HTTP: ports[0], RPC: ports[1], Serf: ports[2],
		Server: server == nil, ACL: cfg.ACL, ConsulToken: consulToken, Chroot: cfg.Chroot,
	}
	if server != nil {
		d.ServerRPC = server.RPCPort
		d.MinDynamicPort, d.MaxDynamicPort = dynamicPorts(i, cfg.NomadClients)
	}
	var b strings.Builder
	if err := nomadConfig.Execute(&b, d); err != nil {
		return nil, fmt.Errorf("nomad config: %w", err)
	}
	confPath := filepath.Join(cfg.Dir, "conf", name+".hcl")
	if err := os.WriteFile(confPath, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	a := &NomadAgent{Name: name, HTTPAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]), RPCPort: ports[1], DataDir: dataDir, Consul: consul}
	if cfg.ACL {
		a.token = NomadACLManagementToken
	}
	a.Proc = &Proc{
		Name: name, Path: filepath.Join(cfg.BinDir, "nomad"),
		Args:    []string{"agent", "-config", confPath},
		LogPath: filepath.Join(cfg.Dir, "logs", name+".log"), Detach: cfg.Detach,
	}
	return a, nil
}

// bootstrapACL creates Nomad's management token with the secret
// NomadACLManagementToken (once: a restarted server keeps it).
func (a *NomadAgent) bootstrapACL(ctx context.Context) error {
	anon, err := nomadapi.NewClient(&nomadapi.Config{Address: "http://" + a.HTTPAddr})
	if err != nil {
		return err
	}
	return waitFor(ctx, a.Proc, a.Name+" ACL bootstrap", func(ctx context.Context) error {
		_, _, err := anon.ACLTokens().BootstrapOpts(NomadACLManagementToken, (&nomadapi.WriteOptions{}).WithContext(ctx))
		if err != nil && strings.Contains(err.Error(), "bootstrap already done") {
			return nil
		}
		return err
	})
}

// WaitLeader waits until the Nomad server has elected itself leader.
func (a *NomadAgent) WaitLeader(ctx context.Context) error {
	api := a.API()
	return waitFor(ctx, a.Proc, a.Name+" leader", func(ctx context.Context) error {
		leader, err := api.Status().Leader()
		if err != nil {
			return err
		}
		if leader == "" {
			return errNotYet
		}
		return nil
	})
}

// WaitNodeReady waits until the server lists this client as ready with a
// healthy exec driver and the shared host volume.
func (a *NomadAgent) WaitNodeReady(ctx context.Context, server *NomadAgent, volume string) error {
	api := server.API()
	return waitFor(ctx, a.Proc, a.Name+" ready", func(ctx context.Context) error {
		stubs, _, err := api.Nodes().List((&nomadapi.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return err
		}
		for _, s := range stubs {
			if s.Name != a.Name || s.Status != "ready" {
				continue
			}
			if d := s.Drivers["exec"]; d == nil || !d.Healthy {
				return fmt.Errorf("%s: exec driver not healthy yet", a.Name)
			}
			n, _, err := api.Nodes().Info(s.ID, (&nomadapi.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return err
			}
			if _, ok := n.HostVolumes[volume]; !ok {
				return fmt.Errorf("%s: host volume %q not fingerprinted yet", a.Name, volume)
			}
			return nil
		}
		return fmt.Errorf("%s: %w", a.Name, errNotYet)
	})
}

// NodeID returns the Nomad node ID of a client, or "" if the server does not
// know it.
func (a *NomadAgent) NodeID(server *NomadAgent) string {
	stubs, _, err := server.API().Nodes().List(nil)
	if err != nil {
		return ""
	}
	for _, s := range stubs {
		if s.Name == a.Name {
			return s.ID
		}
	}
	return ""
}

// unmountUnder lazily unmounts every mount point below dir, deepest first:
// the exec driver leaves bind mounts (alloc, secrets, private, volumes) in a
// client's data dir.
func unmountUnder(dir string) {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var mps []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && strings.HasPrefix(unescapeMount(f[1]), dir+"/") {
			mps = append(mps, unescapeMount(f[1]))
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		_ = exec.Command("umount", "-l", mps[i]).Run()
	}
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}
