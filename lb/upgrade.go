package lb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// UpgradeTimeout is how long Upgrade waits for the new process by default:
// it starts, reads its configuration, binds nothing, and waits for every
// route's first Consul answer (at most 30 s) before it is ready.
const UpgradeTimeout = 60 * time.Second

// Upgrade starts the program exe (with args, args[0] included) as a new
// balancer process and hands it this balancer's listening sockets (the
// rules are in handover.go). It returns the new process's pid once that
// process serves; from then on both accept from the same sockets, and the
// caller stops this balancer (cancels Start's context): it stops accepting,
// finishes its requests in flight and exits, leaving its Consul
// registration to the new process. If the new process exits first, is not
// ready within timeout (then it is killed) or ctx ends, Upgrade returns an
// error and this balancer serves on as if nothing happened. One upgrade at a
// time.
func (l *LB) Upgrade(ctx context.Context, exe string, args []string, timeout time.Duration) (pid int, err error) {
	if !l.upgrading.CompareAndSwap(false, true) {
		return 0, errors.New("an upgrade is already running")
	}
	defer func() {
		if err != nil {
			l.upgrading.Store(false)
		}
	}()
	var names []string
	var fds []uintptr
	defer func() {
		for _, fd := range fds {
			syscall.Close(int(fd))
		}
	}()
	for _, s := range []struct {
		name string
		ln   net.Listener
	}{{"http", l.httpLn}, {"https", l.httpsLn}, {"admin", l.adminLn}} {
		if s.ln == nil {
			continue
		}
		fd, err := socketFD(s.ln)
		if err != nil {
			return 0, fmt.Errorf("handing over the %s listener: %w", s.name, err)
		}
		names, fds = append(names, s.name), append(fds, uintptr(fd))
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("ready pipe: %w", err)
	}
	defer r.Close()
	env := []string{
		envListenFDs + "=" + strconv.Itoa(len(fds)),
		envListenNames + "=" + strings.Join(names, ":"),
		envUpgradeFrom + "=" + strconv.Itoa(os.Getpid()),
		envReadyFD + "=" + strconv.Itoa(firstFD+len(fds)),
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case envListenFDs, envListenNames, envListenPID, envUpgradeFrom, envReadyFD:
		default:
			env = append(env, kv)
		}
	}
	files := append([]uintptr{0, 1, 2}, fds...)
	files = append(files, w.Fd())
	pid, err = syscall.ForkExec(exe, args, &syscall.ProcAttr{Env: env, Files: files})
	w.Close()
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", exe, err)
	}
	l.log.Info("upgrade: started a new process; it serves the same sockets once ready", "pid", pid, "exe", exe)

	// Ready is a byte on the pipe; EOF means the new process exited (or
	// gave up) first.
	_ = r.SetReadDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Now()) })
	defer stop()
	var b [1]byte
	n, rerr := r.Read(b[:])
	if n == 1 {
		l.handedOver.Store(true)
		return pid, nil
	}
	// Not ready: make sure the new process is gone, and say how it ended.
	_ = syscall.Kill(pid, syscall.SIGKILL)
	var ws syscall.WaitStatus
	_, _ = syscall.Wait4(pid, &ws, 0, nil)
	switch {
	case errors.Is(rerr, io.EOF) && ws.Exited():
		return 0, fmt.Errorf("the new process (pid %d) exited with status %d before it was ready (its errors are in this log)", pid, ws.ExitStatus())
	case errors.Is(rerr, io.EOF):
		return 0, fmt.Errorf("the new process (pid %d) closed its ready pipe without being ready", pid)
	case ctx.Err() != nil:
		return 0, fmt.Errorf("stopped while waiting for the new process (pid %d, killed): %w", pid, ctx.Err())
	default:
		return 0, fmt.Errorf("the new process (pid %d) was not ready within %s; killed it", pid, timeout)
	}
}
