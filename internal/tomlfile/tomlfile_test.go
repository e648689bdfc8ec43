package tomlfile

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

type dur time.Duration

func (d *dur) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = dur(v)
	return err
}

type textStruct struct{ s string }

func (t *textStruct) UnmarshalText(b []byte) error { t.s = string(b); return nil }

type file struct {
	Name   string     `toml:"name"`
	Wait   dur        `toml:"wait"`
	Label  textStruct `toml:"label"`
	Server struct {
		Port int `toml:"port"`
	} `toml:"server"`
	Routes []struct {
		Hosts []string `toml:"hosts"`
		Opts  struct {
			Tries int `toml:"tries"`
		} `toml:"opts"`
	} `toml:"routes"`
	Extra map[string]any `toml:"extra"`
}

const doc = `name = "x"
[server]
port = 1
[[routes]]
hosts = ["a"]
[[routes]]
hosts = ["b"]
opts = { tries = 2 }
[extra]
"a.b" = 1
`

func TestPositions(t *testing.T) {
	ix := Positions([]byte(doc))
	for key, want := range map[string]Position{
		"name":                 {1, 1},
		"server":               {2, 2},
		"server.port":          {3, 1},
		"routes":               {4, 3}, // the first element
		"routes[0]":            {4, 3},
		"routes[0].hosts":      {5, 1},
		"routes[1]":            {6, 3},
		"routes[1].hosts":      {7, 1},
		"routes[1].opts.tries": {8, 10},
	} {
		if got := ix.AtDotted(key); got != want {
			t.Errorf("%s at %v, want %v", key, got, want)
		}
	}
	if got := ix.At("extra", "a.b"); got != (Position{10, 1}) {
		t.Errorf("quoted key with a dot at %v", got)
	}
	if got := ix.AtDotted("routes[1].opts.nothing"); got != (Position{8, 1}) {
		t.Errorf("an absent key is placed at its closest written table, got %v", got)
	}
	if k, ok := ix.KeyAtLine(8); !ok || k != "routes[1].opts.tries" {
		t.Errorf("KeyAtLine(8) = %q", k)
	}
	if !ix.Has("routes[1].hosts") || ix.Has("routes[2]") {
		t.Error("Has")
	}
}

func TestDecodeErrors(t *testing.T) {
	known := Keys(reflect.TypeOf(file{}))
	for _, c := range []struct{ name, data, want string }{
		{"table defined twice", doc + "[server]\nport = 2\n", `f.toml:11:`},
		{"unknown key", "[server]\npotr = 2\n", `f.toml:2:1: server.potr: unknown key (did you mean "server.port"?)`},
		{"unknown key in an element", "[[routes]]\n[[routes]]\nhostz = []\n", `f.toml:3:1: routes[1].hostz: unknown key (did you mean "routes[1].hosts"?)`},
		{"no suggestion", "[server]\nzzzzzz = 2\n", `f.toml:2:1: server.zzzzzz: unknown key`},
		{"wrong type", "[server]\nport = \"1\"\n", `f.toml:2:8: server.port: wrong type: want integer, got string`},
		{"text value", "wait = \"soon\"\n", `f.toml:1:8: wait: `},
	} {
		t.Run(c.name, func(t *testing.T) {
			var f file
			_, err := Decode("f.toml", []byte(c.data), &f, known)
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error %v (%T) is not Errors", err, err)
			}
			if !strings.HasPrefix(err.Error(), "f.toml:") || !strings.HasPrefix(err.Error(), c.want) {
				t.Errorf("got %q, want %q...", err, c.want)
			}
		})
	}
	var f file
	if _, err := Decode("f.toml", []byte(doc), &f, known); err != nil || len(f.Routes) != 2 || f.Routes[1].Opts.Tries != 2 {
		t.Errorf("%v %+v", err, f)
	}
}

func TestKeys(t *testing.T) {
	got := Keys(reflect.TypeOf(file{}))
	want := []string{"name", "wait", "label", "server", "server.port", "routes", "routes.hosts", "routes.opts", "routes.opts.tries", "extra"}
	if !slices.Equal(got, want) {
		t.Errorf("Keys = %q\nwant   %q", got, want)
	}
}

func TestErrorsSortAndFormat(t *testing.T) {
	es := Errors{
		{File: "f", Line: 3, Column: 1, Key: "b", Msg: "m"},
		{Key: "flag", Msg: "m"},
		{File: "f", Line: 1, Column: 5, Key: "a", Msg: "m"},
		{File: "f", Key: "absent", Msg: "m"},
	}
	es.Sort()
	if got := es.Error(); got != "flag: m\nf: absent: m\nf:1:5: a: m\nf:3:1: b: m" {
		t.Errorf("got\n%s", got)
	}
}
