package devstack

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// sweep SIGKILLs every process that still uses dir: its root, working
// directory, command line or an open file lies below it. A Nomad client
// that was killed (a failure test) leaves its task executors, log monitors
// and tasks running; nothing else would stop them.
func sweep(dir string) {
	dir = filepath.Clean(dir) + "/"
	self := os.Getpid()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		if usesDir(pid, dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func usesDir(pid int, dir string) bool {
	p := "/proc/" + strconv.Itoa(pid)
	for _, link := range []string{"root", "cwd"} {
		if t, err := os.Readlink(p + "/" + link); err == nil && strings.HasPrefix(t+"/", dir) {
			return true
		}
	}
	if b, err := os.ReadFile(p + "/cmdline"); err == nil && strings.Contains(string(b), dir) {
		return true
	}
	fds, err := os.ReadDir(p + "/fd")
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if t, err := os.Readlink(p + "/fd/" + fd.Name()); err == nil && strings.HasPrefix(t, dir) {
			return true
		}
	}
	return false
}
