package devstack

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
)

// Down stops a detached stack that SaveState described in dir/stack.json,
// plus any extra pid files (dir/*.pid), unmounts what the exec driver left
// and removes dir. A missing dir is not an error: Down is safe to repeat.
func Down(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "stack.json"))
	if errors.Is(err, os.ErrNotExist) {
		unmountUnder(dir)
		return os.RemoveAll(dir)
	}
	if err != nil {
		return err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("reading %s/stack.json: %w", dir, err)
	}
	// Extra processes started next to the stack (the load balancer).
	extra, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	for _, f := range extra {
		var pid int
		if b, err := os.ReadFile(f); err == nil {
			fmt.Sscanf(string(b), "%d", &pid)
		}
		terminate(pid)
	}
	if st.NomadHTTP != "" {
		if api, err := nomadapi.NewClient(&nomadapi.Config{Address: "http://" + st.NomadHTTP}); err == nil {
			stopAllJobs(api)
		}
	}
	// Nomad first (clients, then server), then Consul and Pebble.
	order := []string{}
	for name := range st.Pids {
		if len(name) > 5 && name[:5] == "nomad" {
			order = append(order, name)
		}
	}
	for name := range st.Pids {
		if len(name) <= 5 || name[:5] != "nomad" {
			order = append(order, name)
		}
	}
	for _, name := range order {
		terminate(st.Pids[name])
	}
	sweep(dir)
	unmountUnder(dir)
	return os.RemoveAll(dir)
}

// terminate sends SIGTERM to pid's process group and waits up to 15 s before
// SIGKILL.
func terminate(pid int) {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
}
