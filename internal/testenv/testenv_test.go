package testenv_test

import (
	"context"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/testenv"
)

// TestConsulRestart stops the Consul server and starts it again on the same
// ports and data dir, as the LB's outage tests do: state must survive.
func TestConsulRestart(t *testing.T) {
	st := testenv.Consul(t)
	kv := st.ConsulAPI().KV()
	if _, err := kv.Put(&consulapi.KVPair{Key: "gwnomad/test", Value: []byte("v1")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := st.Consul.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, _, err := kv.Get("gwnomad/test", nil); err == nil {
		t.Fatal("Consul still answers after Stop")
	}
	if err := st.Consul.Proc.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := st.Consul.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	p, _, err := kv.Get("gwnomad/test", nil)
	if err != nil || p == nil || string(p.Value) != "v1" {
		t.Fatalf("after restart: %v %v", p, err)
	}
}
