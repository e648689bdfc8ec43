package lb

// Listening sockets that outlive a process: a running balancer hands its
// listeners to a new process of itself (Upgrade, on SIGUSR2) and systemd
// socket activation passes them in; either way the new process serves the
// very sockets the old one did, so no connection is refused while one
// process replaces another.
//
// The rules:
//
//   - Sockets come as file descriptors 3, 4, ... with LISTEN_FDS (their
//     number) and LISTEN_FDNAMES (colon-separated: "http", "https",
//     "admin"), as systemd passes them (sd_listen_fds(3)). They are taken
//     when LISTEN_PID is this process's pid (systemd), or when
//     GWNOMAD_UPGRADE_FROM is the parent's pid (a balancer handing over:
//     the parent cannot know its child's pid before the exec).
//   - A listener takes the socket of its name; an unnamed socket (systemd
//     without FileDescriptorName=) is taken by the listener whose
//     configured address it is bound to. What no listener takes is closed,
//     with a warning; a listener with no socket binds its address.
//   - A process that took sockets serves its proxy listeners only once every
//     route's first Consul answer is in (at most 30 s): both processes
//     accept from the same sockets meanwhile, and the new one must not
//     answer 503 for routes it does not know yet.
//   - The new process reports ready (a byte on GWNOMAD_UPGRADE_READY_FD, and
//     READY=1 with MAINPID to systemd's NOTIFY_SOCKET); only then does the
//     old one stop accepting and finish its requests in flight. It leaves
//     the Consul registration (same service ID) to the new process. If the
//     new process exits or is not ready in time, the old one keeps serving.

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	envListenFDs   = "LISTEN_FDS"
	envListenNames = "LISTEN_FDNAMES"
	envListenPID   = "LISTEN_PID"
	envUpgradeFrom = "GWNOMAD_UPGRADE_FROM"
	envReadyFD     = "GWNOMAD_UPGRADE_READY_FD"
	envNotify      = "NOTIFY_SOCKET"
	firstFD        = 3

	// handoverReadyTimeout bounds the wait of a process that took sockets
	// for every route's first Consul answer.
	handoverReadyTimeout = 30 * time.Second
)

// Inherited are the listening sockets this process was started with.
type Inherited struct {
	named    map[string]net.Listener
	unnamed  []net.Listener
	upgraded bool     // passed by a balancer handing over (else by systemd)
	ready    *os.File // the handing-over balancer waits for a byte on it
}

// Inherit takes the sockets passed to this process (see the rules at the top
// of this file) and clears the variables that passed them, so that nothing
// this process starts takes them again. No sockets: nil, nil.
func Inherit() (*Inherited, error) {
	defer func() {
		for _, k := range []string{envListenFDs, envListenNames, envListenPID, envUpgradeFrom, envReadyFD} {
			_ = os.Unsetenv(k)
		}
	}()
	n, _ := strconv.Atoi(os.Getenv(envListenFDs))
	pid, _ := strconv.Atoi(os.Getenv(envListenPID))
	from, _ := strconv.Atoi(os.Getenv(envUpgradeFrom))
	upgraded := from != 0 && from == os.Getppid()
	if n <= 0 || (pid != os.Getpid() && !upgraded) {
		return nil, nil
	}
	in := &Inherited{named: map[string]net.Listener{}, upgraded: upgraded}
	var names []string
	if v := os.Getenv(envListenNames); v != "" {
		names = strings.Split(v, ":")
	}
	for i := range n {
		f := os.NewFile(uintptr(firstFD+i), fmt.Sprintf("inherited socket %d", firstFD+i))
		ln, err := net.FileListener(f) // a dup; f is closed below
		f.Close()
		if err != nil {
			in.Close()
			return nil, fmt.Errorf("inherited socket %d (%s=%d): %w", firstFD+i, envListenFDs, n, err)
		}
		name := ""
		if i < len(names) {
			name = names[i]
		}
		switch {
		case name == "" || name == "unknown": // systemd's name for unnamed ones
			in.unnamed = append(in.unnamed, ln)
		case in.named[name] != nil:
			ln.Close()
			in.Close()
			return nil, fmt.Errorf("two inherited sockets named %q (%s)", name, envListenNames)
		default:
			in.named[name] = ln
		}
	}
	if upgraded {
		if fd, err := strconv.Atoi(os.Getenv(envReadyFD)); err == nil && fd >= firstFD+n {
			in.ready = os.NewFile(uintptr(fd), "upgrade ready pipe")
		}
	}
	return in, nil
}

// Upgraded tells whether the sockets came from a balancer handing over.
func (in *Inherited) Upgraded() bool { return in != nil && in.upgraded }

// take returns the inherited socket of the listener name bound to addr, or
// nil.
func (in *Inherited) take(name, addr string) net.Listener {
	if in == nil {
		return nil
	}
	if ln := in.named[name]; ln != nil {
		delete(in.named, name)
		return ln
	}
	for i, ln := range in.unnamed {
		if sameAddr(ln.Addr(), addr) {
			in.unnamed = append(in.unnamed[:i], in.unnamed[i+1:]...)
			return ln
		}
	}
	return nil
}

// sameAddr tells whether a bound socket's address is the configured
// address: the same port, and the same IP or, for a configured host that
// is empty or unspecified (":443", "0.0.0.0:443", "[::]:443"), any
// unspecified IP.
func sameAddr(bound net.Addr, addr string) bool {
	ta, ok := bound.(*net.TCPAddr)
	if !ok {
		return false
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port != strconv.Itoa(ta.Port) {
		return false
	}
	ip := net.ParseIP(host)
	if host == "" || (ip != nil && ip.IsUnspecified()) {
		return ta.IP.IsUnspecified()
	}
	return ip != nil && ip.Equal(ta.IP)
}

// closeRest closes the sockets no listener took, with a warning each.
func (in *Inherited) closeRest(log *slog.Logger) {
	if in == nil {
		return
	}
	for name, ln := range in.named {
		log.Warn("closing an inherited socket that no listener takes", "name", name, "address", ln.Addr().String())
		ln.Close()
	}
	for _, ln := range in.unnamed {
		log.Warn("closing an inherited socket that no listener takes", "address", ln.Addr().String())
		ln.Close()
	}
	in.named, in.unnamed = nil, nil
}

// Close closes every socket not taken yet.
func (in *Inherited) Close() {
	if in == nil {
		return
	}
	for _, ln := range in.named {
		ln.Close()
	}
	for _, ln := range in.unnamed {
		ln.Close()
	}
	in.named, in.unnamed = nil, nil
	if in.ready != nil {
		in.ready.Close()
		in.ready = nil
	}
}

// Ready tells whoever started this process that it serves: the balancer
// that handed its sockets over (which then drains and exits), and systemd
// (READY=1; with MAINPID when this process takes over from another). Call
// it after Start returned.
func Ready(in *Inherited) error {
	var errs []error
	state := "READY=1"
	if in.Upgraded() {
		state = fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid())
	}
	if err := notifySystemd(state); err != nil {
		errs = append(errs, fmt.Errorf("notifying systemd: %w", err))
	}
	if in != nil && in.ready != nil {
		if _, err := in.ready.Write([]byte{1}); err != nil {
			errs = append(errs, fmt.Errorf("telling the balancer handing over: %w", err))
		}
		in.ready.Close()
		in.ready = nil
	}
	return errors.Join(errs...)
}

// notifySystemd sends state to $NOTIFY_SOCKET (sd_notify(3)); no socket,
// nothing to do.
func notifySystemd(state string) error {
	name := os.Getenv(envNotify)
	if name == "" {
		return nil
	}
	if name[0] == '@' { // abstract namespace
		name = "\x00" + name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, err = c.Write([]byte(state))
	return err
}

// socketFD returns a duplicate (close-on-exec) of ln's descriptor.
func socketFD(ln net.Listener) (int, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("listener %s has no file descriptor", ln.Addr())
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(s uintptr) {
		r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		if errno != 0 {
			dupErr = errno
			return
		}
		fd = int(r)
	}); err != nil {
		return -1, err
	}
	return fd, dupErr
}
