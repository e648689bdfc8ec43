package devstack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	consulapi "github.com/hashicorp/consul/api"
)

// ACLManagementToken is Consul's management token when Config.ACL is set. It
// guards nothing but a throwaway test agent on loopback.
const ACLManagementToken = "8c3c5bc8-5f4e-4c7d-9d0e-6d1a5b2e0f11"

// ConsulAgent is one Consul agent: the server, or a client agent that a Nomad
// client talks to.
type ConsulAgent struct {
	Node     string // Consul node name
	HTTPAddr string // "127.0.0.1:port"
	SerfLAN  int    // serf LAN port (clients join the server on it)
	DataDir  string
	Proc     *Proc
	token    string // ACLManagementToken with Config.ACL, else ""
}

// API returns a Consul API client for this agent.
func (a *ConsulAgent) API() *consulapi.Client {
	c, err := consulapi.NewClient(&consulapi.Config{Address: a.HTTPAddr, Token: a.token})
	if err != nil { // only on a malformed config, which this is not
		panic(err)
	}
	return c
}

// newConsul prepares (does not start) a Consul agent. joinSerf = 0 makes a
// server that bootstraps itself.
func newConsul(cfg *Config, node string, joinSerf int) (*ConsulAgent, error) {
	ports, err := FreePorts(4) // http, serf lan, serf wan, server rpc
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(cfg.Dir, "data", node)
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	a := &ConsulAgent{Node: node, HTTPAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]), SerfLAN: ports[1], DataDir: dataDir}
	if cfg.ACL {
		a.token = ACLManagementToken
	}
	args := []string{"agent",
		"-node", node,
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-data-dir", dataDir,
		"-http-port", strconv.Itoa(ports[0]),
		"-serf-lan-port", strconv.Itoa(ports[1]),
		"-serf-wan-port", strconv.Itoa(ports[2]),
		"-server-port", strconv.Itoa(ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1",
		"-hcl", "ports { grpc_tls = -1 }",
		"-hcl", "disable_update_check = true",
		"-log-level", "info",
	}
	if cfg.ACL {
		args = append(args, "-hcl", `acl { enabled = true
  default_policy = "deny"
  tokens { initial_management = "`+ACLManagementToken+`" agent = "`+ACLManagementToken+`" } }`)
	}
	if joinSerf == 0 {
		args = append(args, "-server", "-bootstrap-expect", "1", "-ui",
			"-hcl", "performance { raft_multiplier = 1 }")
	} else {
		args = append(args, "-retry-join", fmt.Sprintf("127.0.0.1:%d", joinSerf))
	}
	a.Proc = &Proc{
		Name: node, Path: filepath.Join(cfg.BinDir, "consul"), Args: args,
		LogPath: filepath.Join(cfg.Dir, "logs", node+".log"), Detach: cfg.Detach,
	}
	return a, nil
}

// WaitReady waits until the agent answers, a leader is known and the agent's
// node is in the catalog: after start, or after a Proc.Start of a stopped
// agent.
func (a *ConsulAgent) WaitReady(ctx context.Context) error {
	api := a.API()
	return waitFor(ctx, a.Proc, a.Node+" ready", func(ctx context.Context) error {
		q := (&consulapi.QueryOptions{}).WithContext(ctx)
		leader, err := api.Status().LeaderWithQueryOptions(q)
		if err != nil {
			return err
		}
		if leader == "" {
			return errNotYet
		}
		n, _, err := api.Catalog().Node(a.Node, q)
		if err != nil {
			return err
		}
		if n == nil || n.Node == nil {
			return errNotYet
		}
		return nil
	})
}
