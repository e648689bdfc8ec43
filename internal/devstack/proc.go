package devstack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Proc is one agent process. It can be stopped, killed and started again with
// the same arguments (same ports, same data dir), which is what failure tests
// need.
type Proc struct {
	Name    string   // e.g. "consul-server", "nomad-client-1"
	Path    string   // binary
	Args    []string // arguments
	Env     []string // extra environment, on top of os.Environ()
	LogPath string   // stdout and stderr, appended
	Detach  bool     // own session: outlives the caller (demo)

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts the process. It is an error to start a running process.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s: already running", p.Name)
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s: opening log: %w", p.Name, err)
	}
	cmd := exec.Command(p.Path, p.Args...)
	cmd.Env = append(append(os.Environ(), "CHECKPOINT_DISABLE=1"), p.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if p.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		// Own process group, and die with the parent: a crashed test run
		// leaves no agents behind.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: starting %s: %w", p.Name, p.Path, err)
	}
	logf.Close()
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		_ = cmd.Wait()
		close(done)
		p.mu.Lock()
		if p.cmd == cmd {
			p.cmd = nil
		}
		p.mu.Unlock()
	}()
	return nil
}

// Pid returns the process id, or 0 when not running.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the process is running.
func (p *Proc) Running() bool { return p.Pid() != 0 }

// Stop sends SIGTERM (SIGINT for agents that leave gracefully on it) and
// waits up to grace for the process to exit, then kills it.
func (p *Proc) Stop(grace time.Duration) error { return p.signal(syscall.SIGTERM, grace) }

// Kill sends SIGKILL to the process and waits for it to be gone.
func (p *Proc) Kill() error { return p.signal(syscall.SIGKILL, 10*time.Second) }

func (p *Proc) signal(sig syscall.Signal, grace time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Process.Kill()
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s: pid %d did not exit", p.Name, cmd.Process.Pid)
	}
}

// Restart stops the process and starts it again with the same arguments.
func (p *Proc) Restart(grace time.Duration) error {
	if err := p.Stop(grace); err != nil {
		return err
	}
	return p.Start()
}

// waitFor polls cond until it returns nil or ctx ends; the last error explains
// the time-out. It also fails early when the process died.
func waitFor(ctx context.Context, p *Proc, what string, cond func(context.Context) error) error {
	var last error
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = cond(cctx)
		cancel()
		if last == nil {
			return nil
		}
		if p != nil && !p.Running() {
			return fmt.Errorf("%s exited while waiting for %s (log: %s): %w", p.Name, what, p.LogPath, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

var errNotYet = errors.New("not yet")
