package scheduler

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gwnomad/gwnomad/internal/testenv"
	"github.com/gwnomad/gwnomad/spec"
	"github.com/gwnomad/gwnomad/templates"
)

// A configuration of more keys than Consul takes in one transaction is
// written in several, renders against Consul once written, is not written
// again when it is already there, and is deleted whole by dropConfig.
// Real Consul; Nomad is not needed (and not running: no job uses the
// folder).
func TestConfigFolderOfManyKeys(t *testing.T) {
	st := testenv.Consul(t)
	t.Setenv("CONSUL_HTTP_ADDR", st.Consul.HTTPAddr)
	t.Setenv("NOMAD_ADDR", "http://127.0.0.1:1") // nothing listens: no registered job
	const n = 3*maxTxnOps + 7
	var b strings.Builder
	b.WriteString(string(spec.DefaultTOML))
	b.WriteString("\n[config.many]\n")
	for i := range n {
		fmt.Fprintf(&b, "key_%03d = %d\n", i, i)
	}
	s, _, err := spec.Parse("many.toml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	want, err := templates.KV(s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	written, created, err := c.writeKV(ctx)
	if err != nil {
		t.Fatalf("writeKV: %v", err)
	}
	if written != len(want) || !created || len(want) <= n {
		t.Errorf("writeKV wrote %d keys (created %v), want all %d (> %d)", written, created, len(want), n)
	}
	if _, err := templates.Render(ctx, s, templates.Options{Consul: st.ConsulAPI()}); err != nil {
		t.Fatalf("rendering against the written folder: %v", err)
	}
	if written, _, err := c.writeKV(ctx); err != nil || written != 0 {
		t.Errorf("writing the same configuration again: %d keys written (%v), want 0", written, err)
	}

	if err := c.dropConfig(ctx); err != nil {
		t.Fatalf("dropConfig: %v", err)
	}
	keys, _, err := st.ConsulAPI().KV().Keys(c.configPrefix(), "", nil)
	if err != nil || len(keys) != 0 {
		t.Errorf("after dropConfig %d keys left under %s (%v)", len(keys), c.configPrefix(), err)
	}
}
