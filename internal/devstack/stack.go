package devstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
)

// Config says which agents to start and where.
type Config struct {
	// Dir holds data dirs, configs and logs (logs/<agent>.log). Required.
	Dir string
	// BinDir holds consul, nomad, pebble, pebble-challtestsrv and gatewaysim.
	// Default: the bin/ directory of the repository (see FindBinDir).
	BinDir string
	// NomadClients is the number of Nomad clients, each with its own Consul
	// client agent. Default 0: Consul only, no Nomad.
	NomadClients int
	// HostVolume is the name of the host volume every Nomad client offers.
	// Default: "apim-shared".
	HostVolume string
	// SharedDir is the directory behind the host volume on every client (the
	// stand-in for the NFS mount). Default: Dir/shared.
	SharedDir string
	// Chroot maps host paths to paths in the exec driver's task chroot.
	// Default: BinDir/gatewaysim at /opt/gwnomad/bin/gatewaysim, plus
	// /etc/passwd and /etc/group.
	Chroot map[string]string
	// NomadServer starts a Nomad server even when NomadClients is 0.
	NomadServer bool
	// ACL enables ACLs, denying by default: Consul's with the management
	// token ACLManagementToken (which the agents and Nomad's Consul
	// integration use too); Nomad's, bootstrapped with the management token
	// NomadACLManagementToken. The stack's API clients and Env use both.
	// For tests of the least-privilege policies in deploy/acl.
	ACL bool
	// NomadConsulToken, with ACL, makes the Consul token of the Nomad
	// clients' Consul integration (service registration, template reads)
	// once Consul is up, e.g. from deploy/acl's policy. Default: the
	// management token.
	NomadConsulToken func(ctx context.Context, consul *consulapi.Client) (string, error)
	// Pebble starts the ACME test server when non-nil.
	Pebble *PebbleOptions
	// Detach starts the agents in their own sessions so that they outlive
	// the caller (make demo). Default false: they die with the caller.
	Detach bool
	// Logf reports progress. Default: silent.
	Logf func(format string, args ...any)
	// Timeout bounds the whole start. Default: 3 minutes.
	Timeout time.Duration
}

// Stack is a set of running agents.
type Stack struct {
	Dir          string
	SharedDir    string
	HostVolume   string
	Consul       *ConsulAgent   // the server; its HTTP API also serves the UI
	ConsulAgents []*ConsulAgent // one client agent per Nomad client
	NomadServer  *NomadAgent    // nil without Nomad
	NomadClients []*NomadAgent
	Pebble       *Pebble // nil unless asked for

	acl bool // Config.ACL

	stopOnce sync.Once
	stopErr  error
}

// FindBinDir returns $GWNOMAD_BIN, or the bin/ directory of the repository
// that contains the working directory (found by walking up to go.mod).
func FindBinDir() (string, error) {
	if d := os.Getenv("GWNOMAD_BIN"); d != "" {
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "tools", "nomad", "go.mod")); err == nil {
			return filepath.Join(dir, "bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root not found (set GWNOMAD_BIN to the directory of the agent binaries)")
		}
		dir = parent
	}
}

func (c *Config) canonicalize() error {
	if c.Dir == "" {
		return errors.New("devstack: Dir is required")
	}
	if c.BinDir == "" {
		d, err := FindBinDir()
		if err != nil {
			return err
		}
		c.BinDir = d
	}
	if c.HostVolume == "" {
		c.HostVolume = "apim-shared"
	}
	if c.SharedDir == "" {
		c.SharedDir = filepath.Join(c.Dir, "shared")
	}
	if c.Chroot == nil {
		// The exec driver runs tasks as "nobody": the chroot needs the user
		// database, and the static simulator needs nothing else.
		c.Chroot = map[string]string{
			filepath.Join(c.BinDir, "gatewaysim"): "/opt/gwnomad/bin/gatewaysim",
			"/etc/passwd":                         "/etc/passwd",
			"/etc/group":                          "/etc/group",
		}
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	if c.Timeout == 0 {
		c.Timeout = 3 * time.Minute
	}
	return nil
}

// Start starts the agents and waits until they are ready: Consul has a
// leader and every client agent joined; the Nomad server leads; every Nomad
// client is ready with a healthy exec driver and the host volume; Pebble
// answers. On error, whatever was started is stopped again.
func Start(ctx context.Context, cfg Config) (*Stack, error) {
	if err := cfg.canonicalize(); err != nil {
		return nil, err
	}
	for _, bin := range []string{"consul", "nomad", "pebble", "pebble-challtestsrv"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, bin)); err != nil {
			return nil, fmt.Errorf("devstack: %s not built (run `make tools`): %w", bin, err)
		}
	}
	for _, d := range []string{cfg.Dir, filepath.Join(cfg.Dir, "logs"), filepath.Join(cfg.Dir, "conf"), cfg.SharedDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	s := &Stack{Dir: cfg.Dir, SharedDir: cfg.SharedDir, HostVolume: cfg.HostVolume, acl: cfg.ACL}
	if err := s.start(ctx, &cfg); err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Stack) start(ctx context.Context, cfg *Config) error {
	var err error
	cfg.Logf("starting consul server")
	if s.Consul, err = newConsul(cfg, "consul-server", 0); err != nil {
		return err
	}
	if err := s.Consul.Proc.Start(); err != nil {
		return err
	}
	for i := 1; i <= cfg.NomadClients; i++ {
		a, err := newConsul(cfg, fmt.Sprintf("consul-client-%d", i), s.Consul.SerfLAN)
		if err != nil {
			return err
		}
		s.ConsulAgents = append(s.ConsulAgents, a)
		if err := a.Proc.Start(); err != nil {
			return err
		}
	}
	if cfg.Pebble != nil {
		cfg.Logf("starting pebble")
		if s.Pebble, err = newPebble(cfg, *cfg.Pebble); err != nil {
			return err
		}
		if err := s.Pebble.start(ctx); err != nil {
			return err
		}
	}
	if err := s.Consul.WaitReady(ctx); err != nil {
		return err
	}
	for _, a := range s.ConsulAgents {
		if err := a.WaitReady(ctx); err != nil {
			return err
		}
	}
	cfg.Logf("consul ready at http://%s (UI: http://%s/ui/)", s.Consul.HTTPAddr, s.Consul.HTTPAddr)
	if cfg.NomadClients == 0 && !cfg.NomadServer {
		return nil
	}
	clientToken := s.Consul.token
	if cfg.ACL && cfg.NomadConsulToken != nil {
		if clientToken, err = cfg.NomadConsulToken(ctx, s.Consul.API()); err != nil {
			return fmt.Errorf("devstack: the Nomad clients' Consul token: %w", err)
		}
	}
	cfg.Logf("starting nomad server and %d clients", cfg.NomadClients)
	if s.NomadServer, err = newNomad(cfg, "nomad-server", 0, s.Consul, nil, s.Consul.token); err != nil {
		return err
	}
	if err := s.NomadServer.Proc.Start(); err != nil {
		return err
	}
	for i, ca := range s.ConsulAgents {
		c, err := newNomad(cfg, fmt.Sprintf("nomad-client-%d", i+1), i, ca, s.NomadServer, clientToken)
		if err != nil {
			return err
		}
		s.NomadClients = append(s.NomadClients, c)
		if err := c.Proc.Start(); err != nil {
			return err
		}
	}
	if err := s.NomadServer.WaitLeader(ctx); err != nil {
		return err
	}
	if cfg.ACL {
		if err := s.NomadServer.bootstrapACL(ctx); err != nil {
			return err
		}
	}
	for _, c := range s.NomadClients {
		if err := c.WaitNodeReady(ctx, s.NomadServer, cfg.HostVolume); err != nil {
			return err
		}
	}
	cfg.Logf("nomad ready at http://%s", s.NomadServer.HTTPAddr)
	return nil
}

// ConsulAPI returns a client of the Consul server.
func (s *Stack) ConsulAPI() *consulapi.Client { return s.Consul.API() }

// NomadAPI returns a client of the Nomad server.
func (s *Stack) NomadAPI() *nomadapi.Client { return s.NomadServer.API() }

// Env returns the environment variables that point gwnomad (and the nomad and
// consul CLIs) at this stack.
func (s *Stack) Env() []string {
	env := []string{"CONSUL_HTTP_ADDR=" + s.Consul.HTTPAddr}
	if s.acl {
		env = append(env, "CONSUL_HTTP_TOKEN="+ACLManagementToken)
	}
	if s.NomadServer != nil {
		env = append(env, "NOMAD_ADDR=http://"+s.NomadServer.HTTPAddr)
		if s.acl {
			env = append(env, "NOMAD_TOKEN="+NomadACLManagementToken)
		}
	}
	return env
}

// Procs lists every process of the stack, in start order.
func (s *Stack) Procs() []*Proc {
	var ps []*Proc
	if s.Consul != nil {
		ps = append(ps, s.Consul.Proc)
	}
	for _, a := range s.ConsulAgents {
		ps = append(ps, a.Proc)
	}
	if s.Pebble != nil {
		ps = append(ps, s.Pebble.ChallSrv, s.Pebble.Proc)
	}
	if s.NomadServer != nil {
		ps = append(ps, s.NomadServer.Proc)
	}
	for _, c := range s.NomadClients {
		ps = append(ps, c.Proc)
	}
	return ps
}

// Stop stops every agent (Nomad jobs first, so that no task keeps a mount
// busy), unmounts what the exec driver left behind and reports the first
// error. It does not remove Dir.
func (s *Stack) Stop() error {
	s.stopOnce.Do(func() {
		if s.NomadServer != nil && s.NomadServer.Proc.Running() {
			stopAllJobs(s.NomadServer.API())
		}
		ps := s.Procs()
		for i := len(ps) - 1; i >= 0; i-- {
			if err := ps[i].Stop(15 * time.Second); err != nil && s.stopErr == nil {
				s.stopErr = err
			}
		}
		sweep(s.Dir) // what a killed Nomad client left running
		unmountUnder(s.Dir)
	})
	return s.stopErr
}

// stopAllJobs purges every job and waits (bounded) for their allocations to
// stop, so that tasks are killed by Nomad and their mounts released.
func stopAllJobs(api *nomadapi.Client) {
	jobs, _, err := api.Jobs().List(nil)
	if err != nil {
		return
	}
	for _, j := range jobs {
		_, _, _ = api.Jobs().Deregister(j.ID, true, nil)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		allocs, _, err := api.Allocations().List(nil)
		if err != nil {
			return
		}
		running := 0
		for _, a := range allocs {
			if a.ClientStatus == "running" || a.ClientStatus == "pending" {
				running++
			}
		}
		if running == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// state is what a detached stack leaves in Dir/stack.json for `Down`.
type state struct {
	ConsulHTTP string         `json:"consul_http"`
	NomadHTTP  string         `json:"nomad_http,omitempty"`
	Pids       map[string]int `json:"pids"`
}

// SaveState writes Dir/stack.json with the addresses and process ids, so a
// later process can stop a detached stack (see Down).
func (s *Stack) SaveState() error {
	st := state{ConsulHTTP: s.Consul.HTTPAddr, Pids: map[string]int{}}
	if s.NomadServer != nil {
		st.NomadHTTP = s.NomadServer.HTTPAddr
	}
	for _, p := range s.Procs() {
		st.Pids[p.Name] = p.Pid()
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	return os.WriteFile(filepath.Join(s.Dir, "stack.json"), b, 0o644)
}
