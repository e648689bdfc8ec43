package scheduler

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"sort"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/spec"
	"github.com/gwnomad/gwnomad/templates"
)

// KV layout of a cluster, under gwnomad/<cluster>/:
//
//	config/<id>/...   the [config] values of one configuration
//	                  (templates.KV), one folder per configuration, named
//	                  by its ID and never changed once written
//
// A job version's template names its configuration's folder (the job meta
// gwnomad.kv_prefix says which), so each version renders its own values:
// a node of the old version restarting during a rollout, or Nomad reverting
// a failed version, needs nothing from gwnomad. A deploy writes the new
// folder (in transactions of up to 64 keys: no job reads it yet) before it
// registers the job, deletes it again if the job is not registered, and
// after registering deletes the folders no job version Nomad still tracks
// names.

// maxTxnOps is Consul's limit of operations in one transaction.
const maxTxnOps = 64

// KVChange is one [config] value a deploy adds, changes or deletes,
// compared with the configuration the registered job renders.
type KVChange struct {
	Op  string `json:"op"`  // "add", "change" or "delete"
	Key string `json:"key"` // the key's path joined by '/' ("apim/key_manager/service_url")
	// Old and New are the TOML-encoded values, secrets redacted.
	Old string `json:"old,omitempty"`
	New string `json:"new,omitempty"`

	value []byte // the real new value
}

// configPrefix is the folder of the spec's configuration (templates.KVPrefix).
func (c *Client) configPrefix() string { return c.job.Meta[jobs.MetaKVPrefix] }

// readFolder reads the values under prefix, by their key below it.
func (c *Client) readFolder(ctx context.Context, prefix string) (map[string][]byte, error) {
	pairs, _, err := c.consul.KV().List(prefix, c.cq(ctx))
	if err != nil {
		return nil, c.cerr("reading KV "+prefix, err)
	}
	vals := map[string][]byte{}
	for _, p := range pairs {
		if strings.HasSuffix(p.Key, "/") {
			continue // folder
		}
		vals[strings.TrimPrefix(p.Key, prefix)] = p.Value
	}
	return vals, nil
}

// wantKV is the spec's values by their key below configPrefix.
func (c *Client) wantKV() (map[string][]byte, error) {
	kv, err := templates.KV(c.spec)
	if err != nil {
		return nil, &InvalidError{Err: fmt.Errorf("computing KV values: %w", err)}
	}
	want := make(map[string][]byte, len(kv))
	for k, v := range kv {
		want[strings.TrimPrefix(k, c.configPrefix())] = v
	}
	return want, nil
}

// kvDiff compares the values in from, the configuration folder the
// registered job renders ("" before the first deploy), with the spec's.
// When the spec's configuration is the registered one, keys deleted by
// hand from its folder show up as adds, which deploy writes back.
func (c *Client) kvDiff(ctx context.Context, from string) ([]KVChange, error) {
	want, err := c.wantKV()
	if err != nil {
		return nil, err
	}
	cur := map[string][]byte{}
	if from != "" {
		if cur, err = c.readFolder(ctx, from); err != nil {
			return nil, err
		}
	}
	return diffKV(cur, want), nil
}

// runningPrefix is the configuration folder of the job Nomad runs now (""
// if none, or if it predates configuration folders).
func (c *Client) runningPrefix(ctx context.Context) string {
	job, _, err := c.nomad.Jobs().Info(c.JobID(), c.q(ctx))
	if err != nil {
		return ""
	}
	return c.configFolder(job)
}

// configFolder is the configuration folder job renders ("" if job is nil
// or predates configuration folders).
func (c *Client) configFolder(job *nomadapi.Job) string {
	if job == nil {
		return ""
	}
	p := job.Meta[jobs.MetaKVPrefix]
	if !strings.HasPrefix(p, templates.ConfigsPrefix(c.spec)) || !templates.IsConfigID(path.Base(p)) {
		return ""
	}
	return p
}

func diffKV(cur, want map[string][]byte) []KVChange {
	var ch []KVChange
	for k, v := range want {
		old, ok := cur[k]
		switch {
		case !ok:
			ch = append(ch, KVChange{Op: "add", Key: k, New: redactValue(k, v), value: v})
		case !bytes.Equal(old, v):
			ch = append(ch, KVChange{Op: "change", Key: k, Old: redactValue(k, old), New: redactValue(k, v), value: v})
		}
	}
	for k, old := range cur {
		if _, ok := want[k]; !ok {
			ch = append(ch, KVChange{Op: "delete", Key: k, Old: redactValue(k, old)})
		}
	}
	sort.Slice(ch, func(i, j int) bool { return ch[i].Key < ch[j].Key })
	return ch
}

// redactValue hides a value whose key names a secret, or that holds one
// ($secret{...}, or a secret key inside an inline table).
func redactValue(key string, v []byte) string {
	name := path.Base(key)
	if templates.IsSecretKey(name) || bytes.Contains(v, []byte("$secret{")) {
		return spec.Redacted
	}
	line := templates.Key(name) + " = " + string(v) + "\n"
	red := string(templates.Redact([]byte(line)))
	if red == line {
		return string(v)
	}
	if _, after, ok := strings.Cut(strings.TrimSuffix(red, "\n"), " = "); ok {
		return after
	}
	return spec.Redacted
}

// writeKV makes the spec's configuration folder hold exactly the spec's
// values, in one transaction. Usually the folder is new; an existing one
// (the same values deployed before) is only repaired if someone changed
// it. It reports the keys written and whether the folder was new (so
// that a failed deploy deletes it again: dropConfig).
func (c *Client) writeKV(ctx context.Context) (written int, created bool, err error) {
	want, err := c.wantKV()
	if err != nil {
		return 0, false, err
	}
	prefix := c.configPrefix()
	cur, err := c.readFolder(ctx, prefix)
	if err != nil {
		return 0, false, err
	}
	var ops consulapi.KVTxnOps
	for _, ch := range diffKV(cur, want) {
		if ch.Op == "delete" {
			ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: prefix + ch.Key})
		} else {
			ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVSet, Key: prefix + ch.Key, Value: ch.value})
		}
	}
	if len(ops) == 0 {
		return 0, false, nil
	}
	created = len(cur) == 0
	// Consul takes at most maxTxnOps operations per transaction. A folder
	// needs no atomic write: no job version reads it before it is whole
	// (Deploy renders against it before registering), and a failed deploy
	// deletes what it created.
	for len(ops) > 0 {
		batch := ops[:min(len(ops), maxTxnOps)]
		if err := c.txn(ctx, batch); err != nil {
			if written > 0 && created {
				return written, created, fmt.Errorf("%w (after %d of the folder's keys were written)", err, written)
			}
			return written, created, err
		}
		written += len(batch)
		ops = ops[len(batch):]
	}
	return written, created, nil
}

// dropConfig deletes the spec's configuration folder (which writeKV
// created) unless the registered job uses it after all.
func (c *Client) dropConfig(ctx context.Context) error {
	if c.runningPrefix(ctx) == c.configPrefix() {
		return nil
	}
	return c.txn(ctx, consulapi.KVTxnOps{{Verb: consulapi.KVDeleteTree, Key: c.configPrefix()}})
}

// pruneConfigs deletes the configuration folders that no job version Nomad
// still tracks names (Nomad keeps the last 6 by default; an auto-revert can
// only go back to one of those). It reports how many it deleted.
func (c *Client) pruneConfigs(ctx context.Context) (int, error) {
	versions, _, _, err := c.nomad.Jobs().Versions(c.JobID(), false, c.q(ctx))
	if err != nil {
		return 0, c.nerr("reading the versions of job "+c.JobID(), err)
	}
	keep := map[string]bool{}
	for _, v := range versions {
		if p := v.Meta[jobs.MetaKVPrefix]; p != "" {
			keep[p] = true
		}
	}
	if len(keep) == 0 {
		return 0, nil // nothing tells which folders are in use: keep all
	}
	root := templates.ConfigsPrefix(c.spec)
	keys, _, err := c.consul.KV().Keys(root, "/", c.cq(ctx))
	if err != nil {
		return 0, c.cerr("listing KV "+root, err)
	}
	var ops consulapi.KVTxnOps
	for _, k := range keys {
		id := strings.TrimSuffix(strings.TrimPrefix(k, root), "/")
		if strings.HasSuffix(k, "/") && templates.IsConfigID(id) && !keep[k] {
			ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVDeleteTree, Key: k})
		}
	}
	n := 0
	for len(ops) > 0 { // pruning need not be atomic: one transaction per maxTxnOps folders
		batch := ops[:min(len(ops), maxTxnOps)]
		if err := c.txn(ctx, batch); err != nil {
			return n, err
		}
		n += len(batch)
		ops = ops[len(batch):]
	}
	return n, nil
}

// runningChecksum is the config checksum of the job Nomad runs now ("" if none).
func (c *Client) runningChecksum(ctx context.Context) string {
	job, _, err := c.nomad.Jobs().Info(c.JobID(), c.q(ctx))
	if err != nil || job == nil {
		return ""
	}
	return job.Meta[jobs.MetaConfigChecksum]
}

// txn runs at most maxTxnOps operations in one Consul transaction.
func (c *Client) txn(ctx context.Context, ops consulapi.KVTxnOps) error {
	ok, resp, _, err := c.consul.KV().Txn(ops, c.cq(ctx))
	if err != nil {
		return c.cerr("writing KV (transaction)", err)
	}
	if !ok {
		return c.txnError(resp)
	}
	return nil
}

// txnError explains a transaction Consul rolled back. A refused token is
// an *UnreachableError (Denied) like any other 403, reported once with the
// keys it could not write rather than once per operation.
func (c *Client) txnError(resp *consulapi.KVTxnResponse) error {
	var errs, denied []string
	if resp != nil {
		for _, e := range resp.Errors {
			errs = append(errs, fmt.Sprintf("op %d: %s", e.OpIndex, e.What))
			// Permission denied: token with AccessorID '…' lacks permission 'key:write' on "<key>"
			if strings.HasPrefix(e.What, "Permission denied") && strings.HasSuffix(e.What, `"`) {
				if i := strings.LastIndexByte(e.What[:len(e.What)-1], '"'); i >= 0 {
					denied = append(denied, e.What[i+1:len(e.What)-1])
				}
			}
		}
	}
	if len(denied) > 0 && len(denied) == len(errs) {
		return &UnreachableError{Service: "Consul", Addr: c.consulAddr, Denied: true,
			Err: fmt.Errorf("writing KV: the token may not write %s", strings.Join(denied, ", "))}
	}
	return fmt.Errorf("writing KV: transaction rolled back: %s", strings.Join(errs, "; "))
}

// PurgeKV deletes the cluster's whole KV folder gwnomad/<cluster>/.
func (c *Client) PurgeKV(ctx context.Context) error {
	if _, err := c.consul.KV().DeleteTree(c.root(), (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
		return c.cerr("deleting KV "+c.root(), err)
	}
	return nil
}
