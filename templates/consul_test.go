package templates

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/internal/testenv"
)

// TestRenderAgainstConsul writes the KV a spec needs into a real Consul,
// renders, changes a value, renders again and sees the change, then deletes
// a key and gets it named.
func TestRenderAgainstConsul(t *testing.T) {
	st := testenv.Consul(t)
	client := st.ConsulAPI()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	s := parse(t, fullSpec)
	kv, err := KV(s)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range kv {
		if _, err := client.KV().Put(&consulapi.KVPair{Key: k, Value: v}, nil); err != nil {
			t.Fatal(err)
		}
	}

	r, err := Render(ctx, s, Options{Consul: client, NodeIP: "10.1.2.3", Ports: map[string]int{"http": 20010, "clustering": 4010}})
	if err != nil {
		t.Fatal(err)
	}
	offline, err := Render(ctx, s, Options{NodeIP: "10.1.2.3", Ports: map[string]int{"http": 20010, "clustering": 4010}})
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Output) != string(offline.Output) {
		t.Errorf("Consul render differs from offline render:\n%s\n---\n%s", r.Output, offline.Output)
	}

	prefix, err := KVPrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	key := prefix + "apim/key_manager/service_url"
	if _, err := client.KV().Put(&consulapi.KVPair{Key: key, Value: []byte(`"https://km2:9443/services/"`)}, nil); err != nil {
		t.Fatal(err)
	}
	r, err = Render(ctx, s, Options{Consul: client})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := lookup(r.Doc, []string{"apim", "key_manager", "service_url"}); got != "https://km2:9443/services/" {
		t.Errorf("after the KV change service_url = %v", got)
	}

	for _, k := range []string{key, prefix + "super_admin/password"} {
		if _, err := client.KV().Delete(k, nil); err != nil {
			t.Fatal(err)
		}
	}
	_, err = Render(ctx, s, Options{Consul: client})
	var missing *MissingKeysError
	if !errors.As(err, &missing) {
		t.Fatalf("err = %v, want *MissingKeysError", err)
	}
	if strings.Join(missing.Keys, " ") != key+" "+prefix+"super_admin/password" {
		t.Errorf("missing keys %q", missing.Keys)
	}
	if !strings.Contains(err.Error(), key) {
		t.Errorf("message does not name the key: %v", err)
	}

	// A value that is not a TOML value is caught when the result is parsed back.
	if _, err := client.KV().Put(&consulapi.KVPair{Key: key, Value: []byte(`https://unquoted`)}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := client.KV().Put(&consulapi.KVPair{Key: prefix + "super_admin/password", Value: []byte(`"x"`)}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err = Render(ctx, s, Options{Consul: client}); err == nil || !strings.Contains(err.Error(), "not valid TOML") {
		t.Errorf("err = %v, want a TOML error", err)
	}
}

// TestClusteringMembersFromConsul registers three gateway instances (one is
// this node) and checks that members lists the two others, whatever their
// health.
func TestClusteringMembersFromConsul(t *testing.T) {
	st := testenv.Consul(t)
	client := st.ConsulAPI()
	s := parse(t, "[gateway]\noffset = 10\n[clustering]\nenabled = true\n")
	for i, addr := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		reg := &consulapi.AgentServiceRegistration{
			ID: "gw-" + addr, Name: s.Gateway.Service, Address: addr, Port: 8253,
			Tags: []string{"gwnomad", "cluster=" + s.Cluster.Name},
			Meta: map[string]string{"port_clustering": "4010"},
		}
		if i == 2 { // failing: still a member
			reg.Check = &consulapi.AgentServiceCheck{TTL: "1h", Status: "critical"}
		}
		if err := client.Agent().ServiceRegister(reg); err != nil {
			t.Fatal(err)
		}
	}
	// Another cluster's gateway is not a member.
	if err := client.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: "other", Name: s.Gateway.Service, Address: "10.9.9.9", Port: 1,
		Tags: []string{"cluster=other"}, Meta: map[string]string{"port_clustering": "4010"},
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var members any
	testenv.WaitFor(t, 30*time.Second, "three registered gateways", func() error {
		r, err := Render(ctx, s, Options{Consul: client, NodeIP: "10.0.0.1", Ports: map[string]int{"clustering": 4010}})
		if err != nil {
			return err
		}
		members, _ = lookup(r.Doc, []string{"clustering", "members"})
		if got := strings.Join(strs(members), " "); got != "10.0.0.2:4010 10.0.0.3:4010" {
			return errors.New("members = " + got)
		}
		if p, _ := lookup(r.Doc, []string{"clustering", "local_member_port"}); p != "4000" {
			return errors.New("local_member_port (4010 - offset 10) = " + p.(string))
		}
		return nil
	})
}

func strs(v any) []string {
	var out []string
	for _, e := range v.([]any) {
		out = append(out, e.(string))
	}
	return out
}
