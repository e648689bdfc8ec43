package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
)

func init() {
	register(&command{
		name:        "completion",
		summary:     "print the bash or zsh completion script",
		run:         runCompletion,
		subcommands: []string{"bash", "zsh"},
	})
	// The scripts call this back for every completion: the logic is here,
	// in Go, and the flags are the commands' own flag sets.
	register(&command{name: "__complete", hidden: true, run: runComplete})
}

const completionUsage = `Usage: gwnomad completion bash|zsh

completion prints a script that makes the shell complete gwnomad's
commands, each command's flags, the values of flags such as -o (text,
json), and file names for -f (spec files, *.toml) and the other file
flags. The script asks gwnomad itself ('gwnomad __complete <words>'), so
it stays right when gwnomad is upgraded: load it once, not per version.

Examples:
  source <(gwnomad completion bash)                      # in ~/.bashrc
  gwnomad completion bash > /etc/bash_completion.d/gwnomad
  source <(gwnomad completion zsh)                       # in ~/.zshrc, after compinit
  gwnomad completion zsh > "${fpath[1]}/_gwnomad"        # then start a new shell

Exit codes: 0 printed; 3 no or an unknown shell.
`

func runCompletion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gwnomad completion", flag.ContinueOnError) // no flags: the shell is the argument
	if probed(stdout, fs) {
		return exitOK
	}
	if len(args) == 1 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			fmt.Fprint(stdout, completionUsage)
			return exitOK
		case "bash":
			fmt.Fprint(stdout, bashCompletion)
			return exitOK
		case "zsh":
			fmt.Fprint(stdout, zshCompletion)
			return exitOK
		}
		fmt.Fprintf(stderr, "gwnomad completion: unknown shell %q (want bash or zsh)\n", args[0])
		return exitInvalid
	}
	fmt.Fprint(stderr, completionUsage)
	return exitInvalid
}

// The protocol between the scripts and __complete: the arguments are the
// words after "gwnomad" up to the one under the cursor (the last, maybe
// ""); the answer is one candidate a line, "word" or "word<TAB>description",
// then a last line saying what to do with them:
//
//	:words        offer the candidates
//	:files        complete file names instead
//	:files:EXT    complete directories and *.EXT files
//
// Candidates already match the word under the cursor; for "--flag=val"
// they complete val (bash splits at "=", the zsh script strips "--flag=").
const (
	directiveWords = ":words"
	directiveFiles = ":files"
)

type candidate struct{ word, desc string }

func runComplete(_ context.Context, args []string, stdout, _ io.Writer) int {
	cands, directive := complete(args)
	for _, c := range cands {
		if c.desc != "" {
			fmt.Fprintf(stdout, "%s\t%s\n", c.word, oneLine(c.desc))
		} else {
			fmt.Fprintln(stdout, c.word)
		}
	}
	fmt.Fprintln(stdout, directive)
	return exitOK
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// complete answers __complete for words (see the protocol above).
func complete(words []string) ([]candidate, string) {
	words = joinEquals(words)
	if len(words) == 0 {
		words = []string{""}
	}
	cur := words[len(words)-1]
	if len(words) == 1 {
		if strings.HasPrefix(cur, "-") {
			return match(cur, []candidate{{"--help", "the commands"}, {"--version", "gwnomad's version"}}), directiveWords
		}
		var cands []candidate
		for n, c := range commands {
			if !c.hidden {
				cands = append(cands, candidate{n, c.summary})
			}
		}
		return match(cur, cands), directiveWords
	}
	c := commands[words[0]]
	if c == nil || c.hidden {
		return nil, directiveWords
	}
	rest := words[1:]
	var sub string
	if len(c.subcommands) > 0 {
		if len(rest) == 1 {
			var cands []candidate
			for _, s := range c.subcommands {
				cands = append(cands, candidate{word: s})
			}
			return match(cur, cands), directiveWords
		}
		sub, rest = rest[0], rest[1:]
	}
	fs := commandFlags(c, sub)
	if fs == nil {
		return nil, directiveWords
	}
	// Is cur the value of the flag before it?
	for i := 0; i < len(rest)-1; i++ {
		if w := rest[i]; w == "--" {
			return nil, directiveWords
		} else if f := lookupFlag(fs, w); f != nil && !isBool(f) && !strings.Contains(w, "=") {
			if i+1 == len(rest)-1 {
				return completeValue(f, cur)
			}
			i++ // skip the value
		}
	}
	if name, val, ok := strings.Cut(cur, "="); ok && strings.HasPrefix(cur, "-") {
		if f := lookupFlag(fs, name); f != nil {
			return completeValue(f, val)
		}
		return nil, directiveWords
	}
	// The commands take no other arguments: offer the flags even before a
	// "-" is typed. A single dash before a long name is Go's style too:
	// answer in the style typed.
	var cands []candidate
	single := strings.HasPrefix(cur, "-") && !strings.HasPrefix(cur, "--") && len(cur) > 2
	fs.VisitAll(func(f *flag.Flag) {
		dash := "--"
		if len(f.Name) == 1 || single {
			dash = "-"
		}
		_, usage := flag.UnquoteUsage(f)
		cands = append(cands, candidate{dash + f.Name, usage})
	})
	return match(cur, cands), directiveWords
}

// joinEquals undoes bash's split of "--flag=value" into "--flag", "=",
// "value" (COMP_WORDBREAKS holds "="), so that both shells send one word.
func joinEquals(words []string) []string {
	var out []string
	for i := 0; i < len(words); i++ {
		w := words[i]
		if strings.HasPrefix(w, "-") && !strings.Contains(w, "=") && i+1 < len(words) && words[i+1] == "=" {
			w += "="
			i++
			if i+1 < len(words) {
				w += words[i+1]
				i++
			}
		}
		out = append(out, w)
	}
	return out
}

func lookupFlag(fs *flag.FlagSet, word string) *flag.Flag {
	if !strings.HasPrefix(word, "-") || word == "-" {
		return nil
	}
	name, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(word, "-"), "-"), "=")
	return fs.Lookup(name)
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// completeValue completes the value of flag f: the choices its usage
// lists, or file names when it takes a file.
func completeValue(f *flag.Flag, cur string) ([]candidate, string) {
	if vals := flagChoices(f); len(vals) > 0 {
		var cands []candidate
		for _, v := range vals {
			cands = append(cands, candidate{word: v})
		}
		return match(cur, cands), directiveWords
	}
	if files, ext := fileFlag(f); files {
		if ext != "" {
			return nil, directiveFiles + ":" + ext
		}
		return nil, directiveFiles
	}
	return nil, directiveWords
}

var (
	choiceWord = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)
	choiceSep  = strings.NewReplacer(" or ", "|", ",", "|")
)

// flagChoices reads the values a flag takes from its usage, where the
// commands list them after a colon: "output: text or json", "`mode`: off |
// files | acme (overrides tls.mode)". Parenthesized remarks are skipped;
// anything but a list of plain words is no list.
func flagChoices(f *flag.Flag) []string {
	if isBool(f) {
		return nil
	}
	_, usage := flag.UnquoteUsage(f)
	_, list, ok := strings.Cut(withoutParens(usage), ":")
	if !ok {
		return nil
	}
	parts := strings.Split(choiceSep.Replace(list), "|")
	if len(parts) < 2 {
		return nil
	}
	var vals []string
	for _, p := range parts {
		p = strings.Trim(strings.TrimSpace(p), `"`)
		if !choiceWord.MatchString(p) {
			return nil
		}
		vals = append(vals, p)
	}
	return vals
}

func withoutParens(s string) string {
	var b strings.Builder
	depth := 0
	for _, r := range s {
		switch {
		case r == '(':
			depth++
		case r == ')' && depth > 0:
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// fileFlag reports whether f takes a file name, and the extension to offer
// when it is a spec or another TOML file. -f is the spec file in every
// command that takes one; other flags say so in their usage ("`path`",
// "`file`", "... file ...").
func fileFlag(f *flag.Flag) (files bool, ext string) {
	if isBool(f) {
		return false, ""
	}
	name, usage := flag.UnquoteUsage(f)
	lower := strings.ToLower(withoutParens(usage))
	switch {
	case f.Name == "f" || strings.Contains(lower, "spec file") || strings.Contains(lower, ".toml"):
		return true, "toml"
	case name == "path" || name == "file" || name == "dir" || strings.Contains(lower, "file"):
		return true, ""
	}
	return false, ""
}

// match keeps the candidates that start with cur, sorted.
func match(cur string, cands []candidate) []candidate {
	var out []candidate
	for _, c := range cands {
		if strings.HasPrefix(c.word, cur) {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].word < out[j].word })
	return out
}

// flagProbe is the stdout a command runs with when completion asks for
// its flags: the flag parsing helpers (parseFlags, renderParse...) hand
// it the command's flag set through probed and return before parsing, so
// the completion offers exactly the flags the command defines.
type flagProbe struct{ fs *flag.FlagSet }

func (*flagProbe) Write(p []byte) (int, error) { return len(p), nil }

// probed reports whether stdout is a flagProbe, handing it fs: a command
// returns exitOK at once when it is. Every command's flag parsing calls it.
func probed(stdout io.Writer, fs *flag.FlagSet) bool {
	p, ok := stdout.(*flagProbe)
	if ok {
		p.fs = fs
	}
	return ok
}

// commandFlags is c's flag set (with sub, the subcommand's), nil when the
// command does not call probed. The command runs with "-h" and a context
// already done, so one that parses its flags some other way prints its
// help into the probe and does nothing else.
func commandFlags(c *command, sub string) *flag.FlagSet {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	args := []string{"-h"}
	if sub != "" {
		args = []string{sub, "-h"}
	}
	p := &flagProbe{}
	c.run(ctx, args, p, io.Discard)
	return p.fs
}

// The bash script. COMP_WORDS[1..COMP_CWORD] go to __complete; the word
// completed is the part after "=" (bash's word breaks hold "="; when
// they do not, "--flag=" is put back in front). compopt and ${a[-1]} are
// left out so that bash 3.2 (macOS) works too, without file quoting.
const bashCompletion = `# bash completion for gwnomad: source <(gwnomad completion bash)
_gwnomad() {
    local IFS=$'\n' cur=${COMP_WORDS[COMP_CWORD]} pre= directive line ext
    local -a words out
    words=("${COMP_WORDS[@]:1:COMP_CWORD}")
    (( ${#words[@]} < COMP_CWORD )) && words+=("")
    [[ $cur == = ]] && cur=
    if [[ $cur == -*=* ]]; then pre=${cur%%=*}=; cur=${cur#*=}; fi
    out=($(command "${COMP_WORDS[0]}" __complete "${words[@]}" 2>/dev/null)) || return 0
    (( ${#out[@]} )) || return 0
    directive=${out[${#out[@]}-1]}
    unset "out[${#out[@]}-1]"
    COMPREPLY=()
    case $directive in
    :files*)
        type compopt >/dev/null 2>&1 && compopt -o filenames
        ext=${directive#:files}; ext=${ext#:}
        if [[ -n $ext ]]; then
            COMPREPLY=($(compgen -d -- "$cur") $(compgen -f -X "!*.$ext" -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
        ;;
    *)
        for line in "${out[@]}"; do COMPREPLY+=("${line%%$'\t'*}"); done
        ;;
    esac
    if [[ -n $pre ]]; then
        for line in "${!COMPREPLY[@]}"; do COMPREPLY[line]=$pre${COMPREPLY[line]}; done
    fi
    return 0
}
complete -F _gwnomad gwnomad
`

// The zsh script, for fpath (autoloaded as _gwnomad) or sourced after
// compinit. Descriptions go to _describe; "--flag=" is stripped first
// (compset) so that the value alone is completed.
const zshCompletion = `#compdef gwnomad
# zsh completion for gwnomad: source <(gwnomad completion zsh) after compinit,
# or gwnomad completion zsh > "${fpath[1]}/_gwnomad"
_gwnomad() {
  local directive line
  local -a out cands
  out=("${(@f)$(command "${words[1]}" __complete "${(@)words[2,CURRENT]}" 2>/dev/null)}")
  directive=${out[-1]}
  out=("${(@)out[1,-2]}")
  [[ $PREFIX == -*=* ]] && compset -P '*='
  case $directive in
  :files:*) _files -g "*.${directive#:files:}" ;;
  :files) _files ;;
  *)
    for line in "${out[@]}"; do
      [[ -z $line ]] && continue
      if [[ $line == *$'\t'* ]]; then
        cands+=("${${line%%$'\t'*}//:/\\:}:${line#*$'\t'}")
      else
        cands+=("${line//:/\\:}")
      fi
    done
    (( ${#cands} )) && _describe -t values gwnomad cands
    ;;
  esac
}
if [[ ${funcstack[1]} == _gwnomad ]]; then
  _gwnomad "$@"
else
  compdef _gwnomad gwnomad
fi
`
