package scheduler

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/templates"
)

// Plan is what a deploy would change: the Nomad job (Nomad's own plan, with
// its diff) and the Consul KV values. Planning changes nothing.
type Plan struct {
	JobID string `json:"job"`
	// JobExists is false when the job was never registered (or was purged).
	JobExists bool `json:"job_exists"`
	// CurrentVersion of the registered job, when JobExists.
	CurrentVersion uint64 `json:"current_version"`
	// JobDiff is Nomad's diff of the job; Type "None" when unchanged.
	JobDiff *nomadapi.JobDiff `json:"-"`
	// JobChanges is the diff as text lines, secrets redacted.
	JobChanges []string `json:"job_changes"`
	// Updates are Nomad's desired changes per task group (place, stop,
	// in-place update, destructive update, canary...).
	Updates map[string]*nomadapi.DesiredUpdates `json:"updates,omitempty"`
	// KV are the [config] values that differ from those of the registered
	// job's configuration (KVFrom), secrets redacted.
	KV []KVChange `json:"kv"`
	// KVPrefix is the Consul KV folder of the spec's configuration, which
	// the deploy writes and the new job version reads; KVFrom is the
	// registered job's ("" before the first deploy).
	KVPrefix string `json:"kv_prefix"`
	KVFrom   string `json:"kv_from,omitempty"`
	// Placement problems Nomad's plan found (empty: every node can be placed).
	Placement []string `json:"placement,omitempty"`
	Warnings  string   `json:"warnings,omitempty"`

	jobModifyIndex uint64
}

// Changed reports whether a deploy would change anything.
func (p *Plan) Changed() bool {
	return len(p.KV) > 0 || (p.JobDiff != nil && p.JobDiff.Type != "None")
}

// Plan asks Nomad to plan the job (with diff) and compares Consul KV with
// the spec's values.
func (c *Client) Plan(ctx context.Context) (*Plan, error) {
	p := &Plan{JobID: c.JobID()}
	cur, _, err := c.nomad.Jobs().Info(c.JobID(), c.q(ctx))
	switch {
	case err == nil && cur != nil:
		p.JobExists = cur.Stop == nil || !*cur.Stop
		if cur.Version != nil {
			p.CurrentVersion = *cur.Version
		}
	case err != nil && !isNotFound(err):
		return nil, c.nerr("reading job "+c.JobID(), err)
	}
	resp, _, err := c.nomad.Jobs().Plan(c.job, true, c.w(ctx))
	if err != nil {
		return nil, c.nerr("planning job "+c.JobID(), err)
	}
	p.JobDiff = resp.Diff
	p.jobModifyIndex = resp.JobModifyIndex
	p.Warnings = resp.Warnings
	if resp.Annotations != nil {
		p.Updates = resp.Annotations.DesiredTGUpdates
	}
	if resp.Diff != nil && resp.Diff.Type != "None" {
		p.JobChanges = formatJobDiff(resp.Diff)
	}
	for tg, m := range resp.FailedTGAllocs {
		p.Placement = append(p.Placement, explainMetric(tg, m, c.spec.SharedVolume.Name)...)
	}
	p.KVPrefix, p.KVFrom = c.configPrefix(), c.configFolder(cur)
	if p.KV, err = c.kvDiff(ctx, p.KVFrom); err != nil {
		return nil, err
	}
	return p, nil
}

// Write prints the plan for a person: the job diff, Nomad's desired
// updates, the KV changes. Secrets are redacted.
func (p *Plan) Write(w io.Writer) {
	if !p.Changed() {
		fmt.Fprintf(w, "No changes: job %q (version %d) and its Consul KV values are up to date.\n", p.JobID, p.CurrentVersion)
		return
	}
	fmt.Fprintf(w, "Job %q", p.JobID)
	if p.JobExists {
		fmt.Fprintf(w, " (registered version %d)", p.CurrentVersion)
	} else {
		fmt.Fprint(w, " (not registered yet)")
	}
	fmt.Fprintln(w, ":")
	if len(p.JobChanges) == 0 {
		fmt.Fprintln(w, "  no change to the job")
	}
	for _, l := range p.JobChanges {
		fmt.Fprintln(w, "  "+l)
	}
	groups := make([]string, 0, len(p.Updates))
	for g := range p.Updates {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	for _, g := range groups {
		if s := updatesString(p.Updates[g]); s != "" {
			fmt.Fprintf(w, "Scheduler: group %q: %s\n", g, s)
		}
	}
	switch {
	case p.KVFrom == "" || p.KVFrom == p.KVPrefix:
		fmt.Fprintf(w, "Consul KV %s:\n", p.KVPrefix)
	default:
		fmt.Fprintf(w, "Consul KV %s (the registered version reads %s):\n", p.KVPrefix, p.KVFrom)
	}
	if len(p.KV) == 0 {
		fmt.Fprintln(w, "  no change")
	}
	for _, ch := range p.KV {
		switch ch.Op {
		case "add":
			fmt.Fprintf(w, "  + %s = %s\n", ch.Key, ch.New)
		case "change":
			fmt.Fprintf(w, "  ~ %s: %s => %s\n", ch.Key, ch.Old, ch.New)
		case "delete":
			fmt.Fprintf(w, "  - %s (was %s)\n", ch.Key, ch.Old)
		}
	}
	for _, pl := range p.Placement {
		fmt.Fprintln(w, "Placement failure: "+pl)
	}
	if p.Warnings != "" {
		fmt.Fprintln(w, "Warnings: "+strings.TrimSpace(p.Warnings))
	}
}

func updatesString(u *nomadapi.DesiredUpdates) string {
	if u == nil {
		return ""
	}
	var parts []string
	add := func(n uint64, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(u.Place, "to place")
	add(u.Canary, "canary")
	add(u.DestructiveUpdate, "to replace in the first batch of the rolling update")
	add(u.InPlaceUpdate, "in-place update")
	add(u.Migrate, "to migrate")
	add(u.Stop, "to stop")
	add(u.Ignore, "unchanged")
	return strings.Join(parts, ", ")
}

// formatJobDiff writes Nomad's job diff as lines "+/-/~ path: old => new".
func formatJobDiff(d *nomadapi.JobDiff) []string {
	var out []string
	if d.Type == "Added" {
		// A new job: every field is new; name what matters.
		out = append(out, fmt.Sprintf("+ job %q (new)", d.ID))
		for _, f := range d.Fields {
			if strings.HasPrefix(f.Name, "Meta[") || f.Name == "Datacenters" {
				fields(&out, "", []*nomadapi.FieldDiff{f})
			}
		}
		for _, o := range d.Objects {
			if o.Name == "Datacenters" {
				for _, f := range o.Fields {
					out = append(out, fmt.Sprintf("+ datacenter %q", f.New))
				}
			}
		}
		for _, tg := range d.TaskGroups {
			out = append(out, fmt.Sprintf("+ group %q", tg.Name))
		}
		return out
	}
	fields(&out, "", d.Fields)
	objects(&out, "", d.Objects)
	for _, tg := range d.TaskGroups {
		if tg.Type == "None" {
			continue
		}
		p := "group " + tg.Name
		if tg.Type == "Added" || tg.Type == "Deleted" {
			out = append(out, sign(tg.Type)+" "+p)
			continue
		}
		fields(&out, p+".", tg.Fields)
		objects(&out, p+".", tg.Objects)
		for _, t := range tg.Tasks {
			if t.Type == "None" {
				continue
			}
			tp := p + ".task " + t.Name + "."
			fields(&out, tp, t.Fields)
			objects(&out, tp, t.Objects)
		}
	}
	return out
}

func fields(out *[]string, prefix string, fs []*nomadapi.FieldDiff) {
	for _, f := range fs {
		if f.Type == "None" {
			continue
		}
		old, nw := f.Old, f.New
		if templates.IsSecretKey(lastPart(f.Name)) {
			if old != "" {
				old = "<redacted>"
			}
			if nw != "" {
				nw = "<redacted>"
			}
		}
		old, nw = clip(old), clip(nw)
		switch f.Type {
		case "Added":
			*out = append(*out, fmt.Sprintf("+ %s%s: %q", prefix, f.Name, nw))
		case "Deleted":
			*out = append(*out, fmt.Sprintf("- %s%s: %q", prefix, f.Name, old))
		default:
			*out = append(*out, fmt.Sprintf("~ %s%s: %q => %q", prefix, f.Name, old, nw))
		}
	}
}

func objects(out *[]string, prefix string, os []*nomadapi.ObjectDiff) {
	for _, o := range os {
		if o.Type == "None" {
			continue
		}
		p := prefix + o.Name + "."
		if o.Type == "Added" && len(o.Fields) > 6 || o.Type == "Deleted" && len(o.Fields) > 6 {
			*out = append(*out, fmt.Sprintf("%s %s%s", sign(o.Type), prefix, o.Name))
			continue
		}
		fields(out, p, o.Fields)
		objects(out, p, o.Objects)
	}
}

func sign(t string) string {
	switch t {
	case "Added":
		return "+"
	case "Deleted":
		return "-"
	}
	return "~"
}

func lastPart(name string) string {
	if i := strings.LastIndexAny(name, ".["); i >= 0 {
		return strings.Trim(name[i+1:], "]")
	}
	return name
}

// clip keeps long values (the embedded template) readable.
func clip(s string) string {
	s = strings.ReplaceAll(s, "\n", "\\n")
	if len(s) > 120 {
		return s[:117] + "..."
	}
	return s
}

// explainMetric turns Nomad's placement metrics into sentences that name
// the constraint, the missing host volume or the exhausted resource.
func explainMetric(group string, m *nomadapi.AllocationMetric, volume string) []string {
	if m == nil {
		return nil
	}
	var out []string
	head := fmt.Sprintf("group %q: %d node(s) evaluated", group, m.NodesEvaluated)
	if m.CoalescedFailures > 0 {
		head += fmt.Sprintf(", %d allocation(s) could not be placed", m.CoalescedFailures+1)
	}
	out = append(out, head)
	if m.NodesEvaluated == 0 && m.NodesInPool == 0 {
		out = append(out, "no client node is in the job's datacenters / node pool")
	}
	for _, k := range sortedKeys(m.ConstraintFiltered) {
		reason := k
		if strings.Contains(k, "host volume") {
			reason = fmt.Sprintf("%s (host volume %q)", k, volume)
		}
		out = append(out, fmt.Sprintf("constraint %s filtered %d node(s)", reason, m.ConstraintFiltered[k]))
	}
	for _, k := range sortedKeys(m.ClassFiltered) {
		out = append(out, fmt.Sprintf("node class %s filtered %d node(s)", k, m.ClassFiltered[k]))
	}
	for _, k := range sortedKeys(m.DimensionExhausted) {
		out = append(out, fmt.Sprintf("resource exhausted: %s on %d node(s)", k, m.DimensionExhausted[k]))
	}
	for _, q := range m.QuotaExhausted {
		out = append(out, "quota exhausted: "+q)
	}
	if len(out) == 1 && m.NodesFiltered > 0 {
		out = append(out, fmt.Sprintf("%d node(s) filtered", m.NodesFiltered))
	}
	return out
}

func sortedKeys(m map[string]int) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
