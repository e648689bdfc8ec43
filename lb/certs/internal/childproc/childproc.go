// Package childproc runs the test binary again as a helper process, so
// that a test can have a second certificate manager or lock holder that is
// a real process: one it can SIGKILL.
//
// In the test package:
//
//	func TestHelperProcess(t *testing.T) {
//		switch childproc.Role() {
//		case "":
//			t.Skip("helper process only")
//		case "locker":
//			...; fmt.Println("LOCKED"); childproc.WaitLine("unlock")
//		}
//		os.Exit(0)
//	}
//
// and in a test:
//
//	c := childproc.Start(t, "locker", "FOO=bar")
//	c.Expect(t, "LOCKED", 30*time.Second)
//	c.Kill()
//
// The child dies with the parent (SIGKILL on parent death, and its stdin
// closes).
package childproc

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const envRole = "GWNOMAD_CHILDPROC_ROLE"

// Role is the role this process was started with, "" in a normal test run.
func Role() string { return os.Getenv(envRole) }

// Lines reads stdin lines (commands from the parent) until EOF.
func Lines() <-chan string {
	ch := make(chan string)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			ch <- strings.TrimSpace(sc.Text())
		}
	}()
	return ch
}

// Child is a running helper process.
type Child struct {
	Name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}

	mu  sync.Mutex
	out []string
}

// Start runs the test binary's TestHelperProcess with role and extra
// environment entries ("K=V").
func Start(t testing.TB, role string, env ...string) *Child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(append(os.Environ(), envRole+"="+role), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting helper process %s: %v", role, err)
	}
	pw.Close()
	c := &Child{Name: role, cmd: cmd, stdin: stdin, lines: make(chan string, 4096), done: make(chan struct{})}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.out = append(c.out, line)
			c.mu.Unlock()
			select {
			case c.lines <- line:
			default: // nobody is reading: the line is kept in out
			}
		}
		pr.Close()
	}()
	go func() { _ = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.Kill()
		if t.Failed() {
			t.Logf("---- helper process %s output ----\n%s", role, c.Output())
		}
	})
	return c
}

// Output is everything the child printed so far.
func (c *Child) Output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.out, "\n")
}

// Expect waits for an output line starting with prefix and returns it.
func (c *Child) Expect(t testing.TB, prefix string, timeout time.Duration) string {
	t.Helper()
	line, err := c.ExpectErr(prefix, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// ExpectErr is Expect returning the error instead of failing.
func (c *Child) ExpectErr(prefix string, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return "", fmt.Errorf("helper process %s exited before printing %q", c.Name, prefix)
			}
			if strings.HasPrefix(line, prefix) {
				return line, nil
			}
		case <-deadline.C:
			return "", fmt.Errorf("helper process %s: no line %q within %s", c.Name, prefix, timeout)
		}
	}
}

// Send writes a command line to the child's stdin.
func (c *Child) Send(line string) {
	_, _ = io.WriteString(c.stdin, line+"\n")
}

// Kill sends SIGKILL and waits for the process to be gone.
func (c *Child) Kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

// Wait waits for the child to exit by itself (bounded).
func (c *Child) Wait(timeout time.Duration) error {
	select {
	case <-c.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("helper process %s still running after %s", c.Name, timeout)
	}
}
