package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/gatewaysim"
)

func TestRefusesMissingConfig(t *testing.T) {
	home := t.TempDir()
	var stderr bytes.Buffer
	if code := run([]string{"-home", home}, &stderr); code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	if want := filepath.Join(home, gatewaysim.ConfigRelPath); !strings.Contains(stderr.String(), want) {
		t.Errorf("message does not name %s:\n%s", want, stderr.String())
	}
}

func TestRefusesSyntaxError(t *testing.T) {
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, "repository", "conf"), 0o755)
	os.WriteFile(filepath.Join(home, gatewaysim.ConfigRelPath), []byte("[server]\noffset = \n"), 0o644)
	var stderr bytes.Buffer
	if code := run([]string{"-home", home}, &stderr); code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "deployment.toml:2:") {
		t.Errorf("message lacks file:line:\n%s", stderr.String())
	}
}

func TestFlags(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"-h"}, &stderr); code != 0 || !strings.Contains(stderr.String(), "-crash-after") {
		t.Errorf("-h: code %d\n%s", code, stderr.String())
	}
	if code := run([]string{"-grace", "0"}, &stderr); code != 2 {
		t.Errorf("-grace 0: code %d, want 2", code)
	}
	if code := run([]string{"extra"}, &stderr); code != 2 {
		t.Errorf("extra argument: code %d, want 2", code)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestSIGTERMExitsZero runs the command in a child process (this test binary),
// waits until it listens, sends SIGTERM and expects exit code 0.
func TestSIGTERMExitsZero(t *testing.T) {
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, "repository", "conf"), 0o755)
	toml := "[server]\nnode_ip = \"127.0.0.1\"\n[transport.http]\nproperties.port = 0" +
		"\n[transport.https]\nproperties.port = 0\n[transport.passthru_http]\nlistener.port = 0\n[transport.passthru_https]\nlistener.port = 0\n"
	os.WriteFile(filepath.Join(home, gatewaysim.ConfigRelPath), []byte(toml), 0o644)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChildMain$")
	cmd.Env = append(os.Environ(), "GATEWAYSIM_TEST_CHILD=1", "GATEWAYSIM_HOME="+home, "GATEWAYSIM_NODE=child")
	var stderr syncBuf
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "first artifact scan done") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child never became ready:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child after SIGTERM: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "stopped") {
		t.Errorf("no graceful stop logged:\n%s", stderr.String())
	}
}

// TestChildMain is the child of TestSIGTERMExitsZero.
func TestChildMain(t *testing.T) {
	if os.Getenv("GATEWAYSIM_TEST_CHILD") != "1" {
		t.Skip("only run as a child process")
	}
	os.Exit(run(nil, os.Stderr))
}
