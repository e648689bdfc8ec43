package jobs

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/nomad/api"
)

// HCL renders a job built by Build as a readable Nomad job file (HCL2).
// It is a best-effort view for people: it covers the fields Build sets;
// use JSON for machines.
func HCL(job *api.Job) []byte {
	w := &hclWriter{}
	w.open("job", str(job.ID))
	w.attr("region", str(job.Region))
	w.attr("namespace", str(job.Namespace))
	w.attr("type", str(job.Type))
	w.list("datacenters", job.Datacenters)
	w.mapBlock("meta", job.Meta)
	for _, tg := range job.TaskGroups {
		w.line("")
		w.open("group", str(tg.Name))
		w.raw("count", strconv.Itoa(deref(tg.Count)))
		for _, c := range tg.Constraints {
			w.open("constraint")
			if c.LTarget != "" {
				w.attr("attribute", c.LTarget)
			}
			w.attr("operator", c.Operand)
			w.attr("value", c.RTarget)
			w.close()
		}
		for _, n := range tg.Networks {
			w.open("network")
			w.attr("mode", n.Mode)
			ports := append(append([]api.Port{}, n.ReservedPorts...), n.DynamicPorts...)
			for _, p := range ports {
				if p.Value == 0 {
					w.line("port " + hclString(p.Label) + " {}")
					continue
				}
				w.open("port", p.Label)
				w.raw("static", strconv.Itoa(p.Value))
				w.close()
			}
			w.close()
		}
		for _, name := range sortedKeys(tg.Volumes) {
			v := tg.Volumes[name]
			w.open("volume", name)
			w.attr("type", v.Type)
			w.attr("source", v.Source)
			w.raw("read_only", strconv.FormatBool(v.ReadOnly))
			w.close()
		}
		if r := tg.RestartPolicy; r != nil {
			w.open("restart")
			w.raw("attempts", strconv.Itoa(deref(r.Attempts)))
			w.attr("interval", dur(deref(r.Interval)))
			w.attr("delay", dur(deref(r.Delay)))
			w.attr("mode", deref(r.Mode))
			w.close()
		}
		if r := tg.ReschedulePolicy; r != nil {
			w.open("reschedule")
			w.raw("unlimited", strconv.FormatBool(deref(r.Unlimited)))
			w.attr("delay", dur(deref(r.Delay)))
			w.attr("delay_function", deref(r.DelayFunction))
			w.attr("max_delay", dur(deref(r.MaxDelay)))
			w.close()
		}
		if u := tg.Update; u != nil {
			w.open("update")
			w.raw("max_parallel", strconv.Itoa(deref(u.MaxParallel)))
			w.attr("health_check", deref(u.HealthCheck))
			w.attr("min_healthy_time", dur(deref(u.MinHealthyTime)))
			w.attr("healthy_deadline", dur(deref(u.HealthyDeadline)))
			w.attr("progress_deadline", dur(deref(u.ProgressDeadline)))
			w.raw("auto_revert", strconv.FormatBool(deref(u.AutoRevert)))
			w.raw("auto_promote", strconv.FormatBool(deref(u.AutoPromote)))
			w.raw("canary", strconv.Itoa(deref(u.Canary)))
			w.close()
		}
		for _, t := range tg.Tasks {
			w.line("")
			writeTask(w, t)
		}
		w.close()
	}
	w.close()
	return []byte(w.b.String())
}

func writeTask(w *hclWriter, t *api.Task) {
	w.open("task", t.Name)
	w.attr("driver", t.Driver)
	w.open("config")
	for _, k := range sortedKeys(t.Config) {
		switch v := t.Config[k].(type) {
		case string:
			w.attr(k, v)
		case []string:
			w.list(k, v)
		case []map[string]any:
			for _, m := range v {
				w.open(k)
				for _, mk := range sortedKeys(m) {
					w.raw(mk, value(m[mk]))
				}
				w.close()
			}
		default:
			w.raw(k, value(v))
		}
	}
	w.close()
	if r := t.Resources; r != nil {
		w.open("resources")
		w.raw("cpu", strconv.Itoa(deref(r.CPU)))
		w.raw("memory", strconv.Itoa(deref(r.MemoryMB)))
		w.close()
	}
	for _, m := range t.VolumeMounts {
		w.open("volume_mount")
		w.attr("volume", deref(m.Volume))
		w.attr("destination", deref(m.Destination))
		w.raw("read_only", strconv.FormatBool(deref(m.ReadOnly)))
		w.close()
	}
	for _, tm := range t.Templates {
		w.open("template")
		w.attr("destination", deref(tm.DestPath))
		w.attr("change_mode", deref(tm.ChangeMode))
		w.attr("perms", deref(tm.Perms))
		w.heredoc("data", deref(tm.EmbeddedTmpl))
		w.close()
	}
	for _, s := range t.Services {
		w.line("")
		w.open("service")
		w.attr("name", s.Name)
		w.attr("provider", s.Provider)
		w.attr("port", s.PortLabel)
		w.list("tags", s.Tags)
		w.list("canary_tags", s.CanaryTags)
		w.mapBlock("meta", s.Meta)
		w.mapBlock("canary_meta", s.CanaryMeta)
		for _, c := range s.Checks {
			w.open("check")
			w.attr("name", c.Name)
			w.attr("type", c.Type)
			w.attr("protocol", c.Protocol)
			w.attr("port", c.PortLabel)
			w.attr("path", c.Path)
			if c.Method != "" {
				w.attr("method", c.Method)
			}
			if c.TLSSkipVerify {
				w.raw("tls_skip_verify", "true")
			}
			w.attr("interval", dur(c.Interval))
			w.attr("timeout", dur(c.Timeout))
			if r := c.CheckRestart; r != nil {
				w.open("check_restart")
				w.raw("limit", strconv.Itoa(r.Limit))
				w.attr("grace", dur(deref(r.Grace)))
				w.close()
			}
			w.close()
		}
		w.close()
	}
	w.line("")
	w.attr("shutdown_delay", dur(t.ShutdownDelay))
	w.attr("kill_timeout", dur(deref(t.KillTimeout)))
	if t.KillSignal != "" {
		w.attr("kill_signal", t.KillSignal)
	}
	w.close()
}

type hclWriter struct {
	b      strings.Builder
	indent int
}

func (w *hclWriter) line(s string) {
	if s == "" {
		w.b.WriteString("\n")
		return
	}
	w.b.WriteString(strings.Repeat("  ", w.indent) + s + "\n")
}

func (w *hclWriter) open(kind string, labels ...string) {
	parts := []string{kind}
	for _, l := range labels {
		parts = append(parts, hclString(l))
	}
	w.line(strings.Join(parts, " ") + " {")
	w.indent++
}

func (w *hclWriter) close() { w.indent--; w.line("}") }

func (w *hclWriter) attr(k, v string) { w.raw(k, hclString(v)) }
func (w *hclWriter) raw(k, v string)  { w.line(k + " = " + v) }

func (w *hclWriter) list(k string, vs []string) {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = hclString(v)
	}
	w.raw(k, "["+strings.Join(q, ", ")+"]")
}

func (w *hclWriter) mapBlock(name string, m map[string]string) {
	if len(m) == 0 {
		return
	}
	// Keys with dots need the attribute form (quoted keys), which job meta
	// accepts; service meta and canary_meta are blocks only.
	attrForm := false
	for k := range m {
		attrForm = attrForm || strings.ContainsAny(k, ".")
	}
	if attrForm {
		w.line(name + " = {")
		w.indent++
	} else {
		w.open(name)
	}
	for _, k := range sortedKeys(m) {
		key := k
		if attrForm {
			key = hclString(k)
		}
		w.raw(key, hclString(m[k]))
	}
	w.close()
}

func (w *hclWriter) heredoc(k, text string) {
	text = strings.ReplaceAll(text, "${", "$${")
	text = strings.ReplaceAll(text, "%{", "%%{")
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	w.line(k + " = <<EOT")
	w.b.WriteString(text)
	w.b.WriteString("EOT\n")
}

// hclString quotes a string for HCL2. "${...}" stays: Nomad interpolates
// node attributes and NOMAD_* variables at run time.
func hclString(s string) string {
	q := strconv.Quote(s)
	return strings.ReplaceAll(q, "%{", "%%{")
}

func value(v any) string {
	switch x := v.(type) {
	case string:
		return hclString(x)
	case bool:
		return strconv.FormatBool(x)
	case int:
		return strconv.Itoa(x)
	}
	return hclString(fmt.Sprint(v))
}

func dur(d time.Duration) string { return d.String() }

func str(p *string) string { return deref(p) }

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
