package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func words(cands []candidate) []string {
	var w []string
	for _, c := range cands {
		w = append(w, c.word)
	}
	return w
}

func TestComplete(t *testing.T) {
	for _, tc := range []struct {
		words     []string
		want      []string // exactly, in order
		contains  []string // at least
		directive string
	}{
		{words: []string{"st"}, want: []string{"status", "stop"}},
		{words: []string{""}, contains: []string{"completion", "deploy", "init", "lb", "plan", "render", "status", "stop", "version"}},
		{words: []string{"-"}, want: []string{"--help", "--version"}},
		{words: []string{"nope", ""}},
		{words: []string{"__complete", ""}},
		{words: []string{"status", "-"}, contains: []string{"-f", "-o", "--lb-service"}},
		{words: []string{"status", ""}, contains: []string{"-f", "-o", "--lb-service"}},
		{words: []string{"status", "-o", ""}, want: []string{"json", "text"}},
		{words: []string{"status", "-o", "j"}, want: []string{"json"}},
		{words: []string{"status", "--o=te"}, want: []string{"text"}},
		{words: []string{"status", "-o", "=", "j"}, want: []string{"json"}}, // bash's split
		{words: []string{"status", "-o", "="}, want: []string{"json", "text"}},
		{words: []string{"status", "-o", "json", "-"}, contains: []string{"-f", "--lb-service"}},
		{words: []string{"status", "-f", ""}, directive: ":files:toml"},
		{words: []string{"status", "-f=x"}, directive: ":files:toml"},
		{words: []string{"deploy", "--d"}, want: []string{"--detach"}},
		{words: []string{"stop", "--purge", "-"}, contains: []string{"-f", "--purge"}},
		{words: []string{"init", "-f", ""}, directive: ":files:toml"},
		{words: []string{"init", "--f"}, want: []string{"--force"}},
		{words: []string{"render", ""}, want: []string{"config", "job"}},
		{words: []string{"render", "job", "-o", ""}, want: []string{"hcl", "json"}},
		{words: []string{"render", "config", "--"}, want: []string{"--node-ip", "--offline"}},
		{words: []string{"render", "config", "-f", ""}, directive: ":files:toml"},
		{words: []string{"render", "nope", "-"}},
		{words: []string{"lb", "--tls-mode", ""}, want: []string{"acme", "files", "off"}},
		{words: []string{"lb", "--log-level="}, want: []string{"debug", "error", "info", "warn"}},
		{words: []string{"lb", "-tl"}, want: []string{"-tls-mode"}},
		{words: []string{"lb", "--config", ""}, directive: ":files:toml"},
		{words: []string{"lb", "--cert", ""}, directive: ":files"},
		{words: []string{"lb", "--pid-file", ""}, directive: ":files"},
		{words: []string{"lb", "--http", ""}},
		{words: []string{"lb", "--route", "x", "--no"}, want: []string{"--no-register"}},
		{words: []string{"version", "--c"}, want: []string{"--client", "--cluster"}},
		{words: []string{"version", "-o", ""}, want: []string{"json", "text"}},
		{words: []string{"completion", ""}, want: []string{"bash", "zsh"}},
		{words: []string{"completion", "bash", "-"}},
	} {
		cands, directive := complete(tc.words)
		got := words(cands)
		want := tc.directive
		if want == "" {
			want = ":words"
		}
		switch {
		case directive != want:
			t.Errorf("complete %q: directive %s, want %s", tc.words, directive, want)
		case tc.contains == nil && !slices.Equal(got, tc.want):
			t.Errorf("complete %q: %q, want %q", tc.words, got, tc.want)
		}
		for _, w := range tc.contains {
			if !slices.Contains(got, w) {
				t.Errorf("complete %q: %q lacks %q", tc.words, got, w)
			}
		}
		if slices.Contains(got, "__complete") {
			t.Errorf("complete %q offers the hidden __complete", tc.words)
		}
	}
}

// Learning a command's flags runs nothing: no file written (init would
// write gwnomad.toml), no agent asked (the context is done).
func TestCompletionProbeRunsNothing(t *testing.T) {
	t.Chdir(t.TempDir())
	var without []string
	for name, c := range commands {
		if c.hidden {
			continue
		}
		subs := c.subcommands
		if len(subs) == 0 {
			subs = []string{""}
		}
		for _, sub := range subs {
			if fs := commandFlags(c, sub); fs == nil {
				without = append(without, strings.TrimSpace(name+" "+sub))
			}
		}
	}
	slices.Sort(without)
	for _, name := range []string{"deploy", "init", "lb", "plan", "render job", "render config", "status", "stop", "version"} {
		if slices.Contains(without, name) {
			t.Errorf("%s: flags not learnt (its flag parsing does not call probed)", name)
		}
	}
	t.Logf("commands whose flags are not completed: %q", without)
	if ents, _ := os.ReadDir("."); len(ents) > 0 {
		t.Errorf("probing wrote %v", ents)
	}
}

func TestCompletionCommand(t *testing.T) {
	for _, sh := range []string{"bash", "zsh"} {
		code, out, _ := gw(t, "completion", sh)
		if code != exitOK || !strings.Contains(out, "__complete") {
			t.Errorf("completion %s: exit %d\n%s", sh, code, out)
		}
	}
	if code, _, errs := gw(t, "completion", "fish"); code != exitInvalid || !strings.Contains(errs, "bash or zsh") {
		t.Errorf("completion fish: exit %d\n%s", code, errs)
	}
	if code, _, _ := gw(t, "completion"); code != exitInvalid {
		t.Errorf("completion without a shell: exit %d", code)
	}
	if code, out, _ := gw(t, "completion", "--help"); code != exitOK || !strings.Contains(out, "bash_completion.d") {
		t.Errorf("completion --help: exit %d\n%s", code, out)
	}
	var out, errb bytes.Buffer
	if run(nil, &out, &errb); strings.Contains(out.String(), "__complete") || !strings.Contains(out.String(), "  completion ") {
		t.Errorf("usage lists __complete or not completion:\n%s", out.String())
	}
}

// The scripts in the real shells, calling back the built binary: bash's
// completion function with COMP_WORDS set as bash sets them, zsh's
// completion system in an interactive zsh on a pty (zsh/zpty), typing
// TAB.
func TestShellCompletion(t *testing.T) {
	bin := buildGwnomad(t, "")
	path := filepath.Dir(bin) + string(os.PathListSeparator) + os.Getenv("PATH")
	dir := t.TempDir() // the files -f completes
	for _, f := range []string{"prod.toml", "prod.txt", "notes.md"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "staging"), 0o755); err != nil {
		t.Fatal(err)
	}
	shell := func(t *testing.T, timeout time.Duration, name string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PATH="+path, "HOME="+t.TempDir())
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v\n%s\n%s", name, err, out.String(), errb.String())
		}
		return out.String()
	}

	t.Run("bash", func(t *testing.T) {
		for _, tc := range []struct {
			words string // COMP_WORDS, in bash syntax
			cword int
			want  []string
			setup string
		}{
			{words: `gwnomad st`, cword: 1, want: []string{"status", "stop"}},
			{words: `gwnomad ver`, cword: 1, want: []string{"version"}},
			{words: `gwnomad --v`, cword: 1, want: []string{"--version"}},
			{words: `gwnomad deploy --`, cword: 2, want: []string{"--auto-promote", "--detach"}},
			{words: `gwnomad deploy -`, cword: 2, want: []string{"--auto-promote", "--detach", "-f", "-o"}},
			{words: `gwnomad status -o ''`, cword: 3, want: []string{"json", "text"}},
			{words: `gwnomad status -o`, cword: 3, want: []string{"json", "text"}}, // the empty word left out
			{words: `gwnomad status -o = j`, cword: 4, want: []string{"json"}},
			{words: `gwnomad status -o =`, cword: 3, want: []string{"json", "text"}},
			{words: `gwnomad render job -o h`, cword: 4, want: []string{"hcl"}},
			{words: `gwnomad render ''`, cword: 2, want: []string{"config", "job"}},
			{words: `gwnomad lb --tls-mode ''`, cword: 3, want: []string{"acme", "files", "off"}},
			{words: `gwnomad completion ''`, cword: 2, want: []string{"bash", "zsh"}},
			{words: `gwnomad deploy -f ''`, cword: 3, want: []string{"prod.toml", "staging"}},
			{words: `gwnomad deploy -f p`, cword: 3, want: []string{"prod.toml"}},
			{words: `gwnomad deploy -f = p`, cword: 4, want: []string{"prod.toml"}},
			{words: `gwnomad lb --cert p`, cword: 3, want: []string{"prod.toml", "prod.txt"}},
			{words: `gwnomad lb --http ''`, cword: 3},
			// "=" not a word break (some setups): the flag is put back.
			{words: `gwnomad status -o=j`, cword: 2, want: []string{"-o=json"}, setup: `COMP_WORDBREAKS=${COMP_WORDBREAKS//=/}`},
		} {
			script := fmt.Sprintf(`%s
source <(gwnomad completion bash) || exit 9
COMP_WORDS=(%s); COMP_CWORD=%d
_gwnomad
printf '%%s\n' "${COMPREPLY[@]}"`, tc.setup, tc.words, tc.cword)
			got := strings.Fields(shell(t, 30*time.Second, "bash", "--norc", "--noprofile", "-c", script))
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("(%s) COMP_CWORD=%d: %q, want %q", tc.words, tc.cword, got, tc.want)
			}
		}
	})

	t.Run("zsh", func(t *testing.T) {
		zsh, err := exec.LookPath("zsh")
		if err != nil {
			t.Skip("zsh not installed (.ci/run installs it)")
		}
		script := shell(t, 10*time.Second, bin, "completion", "zsh")
		scriptFile := filepath.Join(t.TempDir(), "_gwnomad")
		if err := os.WriteFile(scriptFile, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		shell(t, 10*time.Second, zsh, "-n", scriptFile)

		// Each line is typed, then TAB; the line as completion left it is
		// printed ("G""OT:" so that the echo of the typing does not match).
		// Two ways to load the script: sourced after compinit, and
		// autoloaded from fpath as _gwnomad.
		type typed struct{ line, want string }
		cases := []typed{
			{"gwnomad versi", "gwnomad version"},
			{"gwnomad status --lb", "gwnomad status --lb-service"},
			{"gwnomad status -o j", "gwnomad status -o json"},
			{"gwnomad status -o=t", "gwnomad status -o=text"},
			{"gwnomad render j", "gwnomad render job"},
			{"gwnomad render job -o h", "gwnomad render job -o hcl"},
			{"gwnomad lb --tls-mode ac", "gwnomad lb --tls-mode acme"},
			{"gwnomad completion z", "gwnomad completion zsh"},
			{"gwnomad deploy -f p", "gwnomad deploy -f prod.toml"}, // not prod.txt
			{"gwnomad deploy -f=p", "gwnomad deploy -f=prod.toml"},
			// A directory: zsh removes its "/" again when the cursor moves.
			{"gwnomad deploy -f st", "gwnomad deploy -f staging"},
			{"gwnomad lb --cert n", "gwnomad lb --cert notes.md"},
		}
		for _, load := range []struct{ name, init string }{
			{"sourced", `autoload -U compinit; compinit -u -D; source ` + scriptFile},
			{"fpath", `fpath=(` + filepath.Dir(scriptFile) + ` $fpath); autoload -U compinit; compinit -u -D`},
		} {
			t.Run(load.name, func(t *testing.T) {
				var b strings.Builder
				fmt.Fprintf(&b, `zmodload zsh/zpty || exit 9
zpty -b z 'PS1="> " TERM=dumb zsh -f -i'
zpty -w z %s
zpty -r z line '*READY*'
`, shQuote(load.init+`; [[ ${_comps[gwnomad]} == _gwnomad ]] && print R""EADY`))
				for _, c := range cases {
					fmt.Fprintf(&b, `zpty -w -n z %s$'\t\C-aprint -r -- G""OT:\n'
zpty -r z line '*GOT:*'$'\n'
print -r -- "${${line##*GOT:}%%%%[$'\r\n']*}"
`, shQuote(c.line))
				}
				b.WriteString("zpty -d z\n")
				got := strings.Split(strings.TrimRight(shell(t, 60*time.Second, zsh, "-f", "-c", b.String()), "\n"), "\n")
				for i, c := range cases {
					if i >= len(got) {
						t.Fatalf("zsh stopped after %d lines: %q", i, got)
					}
					if g := strings.TrimRight(got[i], " "); g != c.want {
						t.Errorf("%q TAB: %q, want %q", c.line, g, c.want)
					}
				}
			})
		}
	})
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
