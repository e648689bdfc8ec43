package devstack

import (
	"os/exec"
	"syscall"
	"testing"
)

// TestFreePortsNeverRepeat: ports handed out once are never handed out again
// in this process, even though the kernel would give them again at once.
func TestFreePortsNeverRepeat(t *testing.T) {
	seen := map[int]bool{}
	for range 200 {
		ps, err := FreePorts(3)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			seen[p] = true
		}
	}
	p, err := FreeUDPTCPPort()
	if err != nil {
		t.Fatal(err)
	}
	if seen[p] {
		t.Fatalf("dns port %d handed out twice", p)
	}
}

// TestSweepKillsWhatUsesTheDir: a process whose working directory is below
// the stack's dir (as an orphaned task executor's is) is killed; one outside
// is not.
func TestSweepKillsWhatUsesTheDir(t *testing.T) {
	dir := t.TempDir()
	inside := exec.Command("sleep", "60")
	inside.Dir = dir
	outside := exec.Command("sleep", "60")
	for _, c := range []*exec.Cmd{inside, outside} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	defer outside.Process.Kill()
	sweep(dir)
	err := inside.Wait()
	if ws, ok := inside.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("process in the dir: %v", err)
	}
	if err := outside.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("process outside the dir was killed: %v", err)
	}
}
