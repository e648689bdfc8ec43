package spec

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse. Whatever the input: no panic;
// either a Spec or an error, never both or neither; the error is an Errors
// of positioned *Error values with a key or a position; and parsing is
// deterministic (same input, same outcome).
//
//	go test ./spec -run '^$' -fuzz '^FuzzParse$' -fuzztime 20s
//
// Seeds: the embedded default spec, small valid and invalid specs, and
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add(DefaultTOML)
	for _, s := range []string{
		"",
		"[cluster]\nname = \"apim-gw\"\n[gateway]\ncount = 3\nhostname = \"gw.am.wso2.com\"\n",
		"[gateway]\ncount = 0\n",
		"[gateway]\ncount = \"three\"\n",
		"[gateway]\nunknown_key = 1\n",
		"[ports]\nhttp = 0\nhttps = 70000\n",
		"[config]\n\"server.hostname\" = \"x\"\n[config.server]\nhostname = \"y\"\n",
		"[update]\nauto_revert = false\nmax_parallel = 5\ncanary = 9\n",
		"[[gateway]]\n",
		"a = [1, \"two\"]\n",
		"[cluster\nname=",
		"\xff\xfe[\x00]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, _, err := Parse("fuzz.toml", data)
		if (s == nil) == (err == nil) {
			t.Fatalf("Parse gave spec %v and error %v", s != nil, err)
		}
		if err != nil {
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error is not a non-empty Errors: %T %v", err, err)
			}
			for _, e := range es {
				if e == nil || e.Msg == "" {
					t.Fatalf("empty *Error in %v", err)
				}
				if e.Line < 0 || e.Column < 0 {
					t.Fatalf("negative position: %+v", e)
				}
			}
		}
		s2, _, err2 := Parse("fuzz.toml", bytes.Clone(data))
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("not deterministic: %v / %v", err, err2)
		}
		if s != nil && s2 != nil && s.String() != s2.String() {
			t.Fatalf("not deterministic: %s / %s", s, s2)
		}
	})
}
