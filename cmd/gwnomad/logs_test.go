package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/gatewaysim"
	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/scheduler"
	"github.com/gwnomad/gwnomad/spec"
)

// `gwnomad logs` and `gwnomad status --watch` against one harness cluster
// (real Nomad with 2 clients, real Consul, the simulator as the gateway):
// choosing the node, the tail, following what the gateway writes, and a
// status redrawn when an allocation stops and its replacement comes up.
func TestLogsAndStatusWatch(t *testing.T) {
	st := testenv.Cluster(t, testenv.Options{Clients: 2})
	for _, kv := range st.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	nomad := st.NomadAPI()
	dir := t.TempDir()
	v1 := writeSpec(t, dir, "v1.toml", mustReplace(t, testSpec(t), "count = 3", "count = 2"))
	if code, out, errs := gw(t, "deploy", "-f", v1); code != exitOK {
		t.Fatalf("deploy: exit %d\n%s\n%s", code, out, errs)
	}
	allocs := runningAllocs(t, nomad)
	if len(allocs) != 2 {
		t.Fatalf("%d running allocations, want 2", len(allocs))
	}

	t.Run("logs: no argument with two nodes lists them, exit 3", func(t *testing.T) {
		code, out, errs := gw(t, "logs", "--spec", v1, "--stderr")
		if code != exitInvalid || out != "" {
			t.Fatalf("exit %d, want 3 with nothing on stdout\n%s\n%s", code, out, errs)
		}
		for _, a := range allocs {
			if !strings.Contains(errs, a.NodeName) || !strings.Contains(errs, a.ID) {
				t.Errorf("the choices lack %s (alloc %s):\n%s", a.NodeName, a.ID, errs)
			}
		}
		if code, _, errs := gw(t, "logs", "--spec", v1, "no-such-node"); code != exitInvalid || !strings.Contains(errs, `"no-such-node"`) {
			t.Errorf("an unknown node: exit %d, want 3\n%s", code, errs)
		}
	})

	t.Run("logs by node name and by alloc prefix, --tail", func(t *testing.T) {
		a := allocs[0]
		code, whole, errs := gw(t, "logs", a.NodeName, "--spec", v1, "--stderr")
		if code != exitOK || !strings.Contains(whole, "gatewaysim: node "+a.NodeName+" ") {
			t.Fatalf("logs %s --stderr: exit %d, want 0 with the simulator's start on that node\n%s\n%s", a.NodeName, code, whole, errs)
		}
		if !strings.Contains(errs, a.ID[:8]) {
			t.Errorf("stderr does not name the allocation %s:\n%s", a.ID[:8], errs)
		}
		code, tail, errs := gw(t, "logs", "--spec", v1, "--stderr", "--tail", "2", a.ID[:6])
		lines := strings.Split(strings.TrimSuffix(whole, "\n"), "\n")
		if want := strings.Join(lines[len(lines)-2:], "\n") + "\n"; code != exitOK || tail != want {
			t.Errorf("--tail 2 by alloc prefix: exit %d\n%q\nwant the whole log's last 2 lines\n%q\n%s", code, tail, want, errs)
		}
		if code, out, errs := gw(t, "logs", "--spec", v1, a.NodeName); code != exitOK || strings.Contains(out, "gatewaysim:") {
			t.Errorf("stdout (the simulator logs to stderr): exit %d\n%s\n%s", code, out, errs)
		}
	})

	t.Run("logs -f prints what the gateway writes until cancelled", func(t *testing.T) {
		a := allocs[1]
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out, errs testenv.SyncBuffer
		done := make(chan int, 1)
		go func() {
			done <- commands["logs"].run(ctx, []string{"--spec", v1, "-f", "--stderr", "--tail", "1", a.NodeName}, &out, &errs)
		}()
		testenv.WaitFor(t, 30*time.Second, "the last line of the log", func() error {
			if strings.Count(out.String(), "\n") < 1 {
				return fmt.Errorf("stdout %q, stderr %q", out.String(), errs.String())
			}
			return nil
		})
		// An API artifact on the shared volume: every gateway logs it.
		s, _, err := spec.Load(v1)
		if err != nil {
			t.Fatal(err)
		}
		rel, ok := s.SharedPath(gatewaysim.APIDirRelPath)
		if !ok {
			t.Fatalf("the spec does not share %s", gatewaysim.APIDirRelPath)
		}
		if err := gatewaysim.WriteSampleAPI(filepath.Join(st.SharedDir, rel)); err != nil {
			t.Fatal(err)
		}
		want := "artifact " + gatewaysim.SampleAPIFile + ": deployed API"
		testenv.WaitFor(t, 30*time.Second, "the new line followed", func() error {
			if !strings.Contains(out.String(), want) {
				return fmt.Errorf("stdout %q", out.String())
			}
			return nil
		})
		cancel()
		select {
		case code := <-done:
			if code != exitOK {
				t.Errorf("logs -f after Ctrl-C: exit %d, want 0\n%s", code, errs.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatal("logs -f did not end after its context was cancelled")
		}
		if n := strings.Count(out.String(), want); n != 1 {
			t.Errorf("the new line printed %d times:\n%s", n, out.String())
		}
	})

	t.Run("status --watch redraws when an allocation stops and is replaced", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var text, jsonl, errs testenv.SyncBuffer
		done := make(chan int, 2)
		go func() { done <- commands["status"].run(ctx, []string{"-f", v1, "--watch"}, &text, &errs) }()
		go func() {
			done <- commands["status"].run(ctx, []string{"-f", v1, "--watch", "-o", "json"}, &jsonl, &errs)
		}()
		tables := func() []string { return strings.Split(text.String(), "--- status at ")[1:] }
		docs := func() []scheduler.Status {
			var out []scheduler.Status
			for _, l := range strings.Split(strings.TrimSpace(jsonl.String()), "\n") {
				var s scheduler.Status
				if json.Unmarshal([]byte(l), &s) == nil {
					out = append(out, s)
				}
			}
			return out
		}
		testenv.WaitFor(t, 30*time.Second, "the first tables", func() error {
			if tb := tables(); len(tb) == 0 || !strings.Contains(tb[0], "2 of 2 gateway nodes ready") || len(docs()) == 0 {
				return fmt.Errorf("text:\n%s\njson:\n%s\nstderr:\n%s", text.String(), jsonl.String(), errs.String())
			}
			return nil
		})
		stopped := allocs[0]
		before := len(tables())
		full, _, err := nomad.Allocations().Info(stopped.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := nomad.Allocations().Stop(full, nil); err != nil {
			t.Fatal(err)
		}
		// The stopped one leaves the table; its replacement becomes ready.
		var replacement string
		testenv.WaitFor(t, 2*time.Minute, "a table without the stopped allocation, then 2 of 2 ready again", func() error {
			gone := false
			for _, tb := range tables()[before:] {
				if !strings.Contains(tb, stopped.ID[:8]) {
					gone = true
				}
				if gone && strings.Contains(tb, "2 of 2 gateway nodes ready") {
					return nil
				}
			}
			return fmt.Errorf("gone %v; tables:\n%s", gone, text.String())
		})
		testenv.WaitFor(t, 30*time.Second, "the same in the JSON lines", func() error {
			ds := docs()
			last := ds[len(ds)-1]
			if len(ds) < 2 || last.Ready != 2 || len(last.Nodes) != 2 {
				return fmt.Errorf("%d documents, last %+v", len(ds), last)
			}
			for _, n := range last.Nodes {
				if n.AllocID == stopped.ID {
					return fmt.Errorf("the stopped allocation still listed: %+v", n)
				}
				if n.Node == stopped.NodeName {
					replacement = n.AllocID
				}
			}
			return nil
		})
		cancel()
		for range 2 {
			select {
			case code := <-done:
				if code != exitOK {
					t.Errorf("status --watch after Ctrl-C: exit %d, want 0\n%s", code, errs.String())
				}
			case <-time.After(30 * time.Second):
				t.Fatal("status --watch did not end after its context was cancelled")
			}
		}
		if lines := strings.Split(strings.TrimSpace(jsonl.String()), "\n"); len(lines) != len(docs()) {
			t.Errorf("-o json --watch: a line is not one JSON document:\n%s", jsonl.String())
		}
		if replacement == "" {
			t.Errorf("no allocation on %s after the replacement", stopped.NodeName)
		}
		t.Logf("%d tables, %d JSON documents; replacement alloc %s", len(tables()), len(docs()), replacement)
	})
}
