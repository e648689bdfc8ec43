package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/gwnomad/gwnomad/jobs"
	"github.com/gwnomad/gwnomad/spec"
	"github.com/gwnomad/gwnomad/templates"
)

// KV layout of a cluster, under gwnomad/<cluster>/:
//
//	config/...             the [config] values the template reads (templates.KV)
//	previous               JSON: the config/ values before the last deploy wrote
//	snapshots/<checksum>   JSON: the config/ values of each configuration
//	                       deployed, keyed by the job meta gwnomad.config_checksum;
//	                       pruned to those of the job versions Nomad tracks
//
// A deploy writes config/, previous and the snapshot in one transaction. When
// Nomad reverts the job, the reverted version's checksum names the snapshot
// to restore, so that the old version renders its own values again.

// maxTxnOps is Consul's limit of operations in one transaction.
const maxTxnOps = 64

// KVChange is one Consul KV key a deploy adds, changes or deletes.
type KVChange struct {
	Op  string `json:"op"` // "add", "change" or "delete"
	Key string `json:"key"`
	// Old and New are the TOML-encoded values, secrets redacted.
	Old string `json:"old,omitempty"`
	New string `json:"new,omitempty"`

	value []byte // the real new value
}

// Snapshot is the config/ values of one configuration (JSON in KV).
type Snapshot struct {
	Checksum string            `json:"checksum,omitempty"`
	Written  time.Time         `json:"written"`
	Values   map[string]string `json:"values"`
}

func (c *Client) configPrefix() string { return templates.KVPrefix(c.spec) }

// currentKV reads the config/ tree.
func (c *Client) currentKV(ctx context.Context) (map[string][]byte, error) {
	pairs, _, err := c.consul.KV().List(c.configPrefix(), c.cq(ctx))
	if err != nil {
		return nil, c.cerr("reading KV "+c.configPrefix(), err)
	}
	cur := map[string][]byte{}
	for _, p := range pairs {
		if strings.HasSuffix(p.Key, "/") {
			continue // folder
		}
		cur[p.Key] = p.Value
	}
	return cur, nil
}

// KVDiff compares Consul KV with what the spec needs written.
func (c *Client) KVDiff(ctx context.Context) ([]KVChange, error) {
	want, err := templates.KV(c.spec)
	if err != nil {
		return nil, &InvalidError{Err: fmt.Errorf("computing KV values: %w", err)}
	}
	cur, err := c.currentKV(ctx)
	if err != nil {
		return nil, err
	}
	return diffKV(cur, want), nil
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

// priorKV is what a deploy's KV transaction replaced: the config/ values
// and the previous key (nil: absent).
type priorKV struct {
	config   map[string][]byte
	previous []byte
}

// writeKV writes the spec's [config] values to Consul KV in one
// transaction: the config/ keys set (and stale ones deleted), the values
// they replace saved under previous, and a snapshot of the new values under
// snapshots/<checksum>. It returns the changes made (nil: nothing to do)
// and what it replaced, for undoKV.
func (c *Client) writeKV(ctx context.Context) ([]KVChange, *priorKV, error) {
	want, err := templates.KV(c.spec)
	if err != nil {
		return nil, nil, &InvalidError{Err: fmt.Errorf("computing KV values: %w", err)}
	}
	cur, err := c.currentKV(ctx)
	if err != nil {
		return nil, nil, err
	}
	changes := diffKV(cur, want)
	prior := &priorKV{config: cur}
	sum := c.job.Meta[jobs.MetaConfigChecksum]
	snap, err := json.Marshal(Snapshot{Checksum: sum, Written: time.Now().UTC(), Values: strs(want)})
	if err != nil {
		return nil, nil, fmt.Errorf("encoding KV snapshot: %w", err)
	}
	ops := consulapi.KVTxnOps{{Verb: consulapi.KVSet, Key: c.root() + "snapshots/" + sum, Value: snap}}
	if len(changes) > 0 {
		rs := c.runningChecksum(ctx)
		prev, err := json.Marshal(Snapshot{Checksum: rs, Written: time.Now().UTC(), Values: strs(cur)})
		if err != nil {
			return nil, nil, fmt.Errorf("encoding previous KV values: %w", err)
		}
		ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVSet, Key: c.root() + "previous", Value: prev})
		p, _, err := c.consul.KV().Get(c.root()+"previous", c.cq(ctx))
		if err != nil {
			return nil, nil, c.cerr("reading KV "+c.root()+"previous", err)
		}
		if p != nil {
			prior.previous = p.Value
		}
		if rs != "" && rs != sum {
			// The values now in KV are those of the running version: keep
			// them under its checksum unless a snapshot already exists.
			old, err := json.Marshal(Snapshot{Checksum: rs, Written: time.Now().UTC(), Values: strs(cur)})
			if err != nil {
				return nil, nil, fmt.Errorf("encoding KV snapshot: %w", err)
			}
			if p, _, err := c.consul.KV().Get(c.root()+"snapshots/"+rs, c.cq(ctx)); err == nil && p == nil {
				ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVSet, Key: c.root() + "snapshots/" + rs, Value: old})
			}
		}
	}
	for _, ch := range changes {
		if ch.Op == "delete" {
			ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: ch.Key})
		} else {
			ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVSet, Key: ch.Key, Value: ch.value})
		}
	}
	if err := c.txn(ctx, ops); err != nil {
		return nil, nil, err
	}
	return changes, prior, nil
}

// pruneSnapshots deletes the snapshots no job version that Nomad still
// tracks refers to (Nomad keeps the last 6 by default; an auto-revert can
// only go back to one of those). It reports how many it deleted.
func (c *Client) pruneSnapshots(ctx context.Context) (int, error) {
	versions, _, _, err := c.nomad.Jobs().Versions(c.JobID(), false, c.q(ctx))
	if err != nil {
		return 0, c.nerr("reading the versions of job "+c.JobID(), err)
	}
	keep := map[string]bool{}
	for _, v := range versions {
		if cs := v.Meta[jobs.MetaConfigChecksum]; cs != "" {
			keep[cs] = true
		}
	}
	if len(keep) == 0 {
		return 0, nil // nothing tells which snapshots are in use: keep all
	}
	prefix := c.root() + "snapshots/"
	keys, _, err := c.consul.KV().Keys(prefix, "", c.cq(ctx))
	if err != nil {
		return 0, c.cerr("listing KV "+prefix, err)
	}
	var ops consulapi.KVTxnOps
	for _, k := range keys {
		if !keep[strings.TrimPrefix(k, prefix)] {
			ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: k})
		}
	}
	n := 0
	for len(ops) > 0 { // pruning need not be atomic: one transaction per maxTxnOps keys
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

func (c *Client) txn(ctx context.Context, ops consulapi.KVTxnOps) error {
	if len(ops) > maxTxnOps {
		return &InvalidError{Err: fmt.Errorf("writing KV: %d operations, more than the %d Consul allows in one transaction: too many [config] keys", len(ops), maxTxnOps)}
	}
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

// RestoreKV writes back the config/ values of the configuration with the
// given checksum (the snapshot a deploy saved), in one transaction. It
// reports whether a snapshot was found.
func (c *Client) RestoreKV(ctx context.Context, checksum string) (bool, error) {
	p, _, err := c.consul.KV().Get(c.root()+"snapshots/"+checksum, c.cq(ctx))
	if err != nil {
		return false, c.cerr("reading KV snapshot", err)
	}
	if p == nil {
		return false, nil
	}
	var snap Snapshot
	if err := json.Unmarshal(p.Value, &snap); err != nil {
		return false, fmt.Errorf("decoding KV snapshot %s: %w", p.Key, err)
	}
	want := map[string][]byte{}
	for k, v := range snap.Values {
		want[k] = []byte(v)
	}
	return true, c.putKV(ctx, want)
}

// undoKV puts back what writeKV replaced (the snapshot it wrote stays:
// it is the values of its checksum whatever happens), in one transaction.
func (c *Client) undoKV(ctx context.Context, p *priorKV) error {
	op := &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: c.root() + "previous"}
	if p.previous != nil {
		op = &consulapi.KVTxnOp{Verb: consulapi.KVSet, Key: op.Key, Value: p.previous}
	}
	return c.putKV(ctx, p.config, op)
}

// putKV makes the config/ tree hold exactly want, with the extra
// operations, in one transaction.
func (c *Client) putKV(ctx context.Context, want map[string][]byte, extra ...*consulapi.KVTxnOp) error {
	cur, err := c.currentKV(ctx)
	if err != nil {
		return err
	}
	ops := consulapi.KVTxnOps(extra)
	for _, ch := range diffKV(cur, want) {
		if ch.Op == "delete" {
			ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: ch.Key})
		} else {
			ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVSet, Key: ch.Key, Value: ch.value})
		}
	}
	if len(ops) == 0 {
		return nil
	}
	return c.txn(ctx, ops)
}

// PurgeKV deletes the cluster's whole KV folder gwnomad/<cluster>/.
func (c *Client) PurgeKV(ctx context.Context) error {
	if _, err := c.consul.KV().DeleteTree(c.root(), (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
		return c.cerr("deleting KV "+c.root(), err)
	}
	return nil
}

func strs(m map[string][]byte) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}
