package scheduler

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Event types, in the order a deploy emits them.
const (
	EventPreflight   = "preflight"   // Nomad and Consul answered; nodes checked
	EventPlan        = "plan"        // what will change (Plan set)
	EventKV          = "kv"          // the KV transaction was written
	EventRegister    = "register"    // the job was registered
	EventEvaluation  = "evaluation"  // the scheduler placed (or failed to place) the nodes
	EventDeployment  = "deployment"  // the deployment changed status
	EventGroup       = "group"       // a task group's desired/placed/healthy/unhealthy changed
	EventNode        = "node"        // a node's Nomad state or Consul checks changed
	EventNodeGone    = "node_gone"   // an allocation stopped
	EventExplain     = "explain"     // why an allocation failed (task events, stderr)
	EventPromote     = "promote"     // canaries promoted, or waiting for promotion
	EventRevert      = "revert"      // Nomad rolled back (the old version reads its own KV folder)
	EventSummary     = "summary"     // the end (Summary set)
	EventInterrupted = "interrupted" // monitoring stopped; the deployment goes on
	EventMessage     = "message"     // anything else worth a line
	EventError       = "error"       // the command failed (-o json: its last line)
)

// Event types of a rolling restart (gwnomad restart), which also emits
// preflight, node, explain, interrupted, message, summary and error.
const (
	EventDrain   = "drain"   // a node taken out of the load balancers (Consul maintenance), or put back unrestarted
	EventRestart = "restart" // Nomad restarted a node's allocation in place
	EventRouted  = "routed"  // a restarted node passes its checks and every load balancer routes to it again
)

// Event is one thing that happened during a deploy or a stop. With -o json
// each event is one JSON object per line.
type Event struct {
	Time       time.Time       `json:"time"`
	Type       string          `json:"type"`
	Message    string          `json:"message"`
	Deployment *DeploymentView `json:"deployment,omitempty"`
	Group      string          `json:"group,omitempty"`
	GroupState *GroupView      `json:"group_state,omitempty"`
	Node       *NodeRow        `json:"node,omitempty"`
	Plan       *Plan           `json:"plan,omitempty"`
	Summary    *Summary        `json:"summary,omitempty"`
	// Lines are details: an explanation, the tail of a task's stderr.
	Lines []string `json:"lines,omitempty"`
}

// Reporter receives the events of a deploy, in order, from one goroutine.
type Reporter interface {
	Report(Event)
}

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(Event)

func (f ReporterFunc) Report(e Event) { f(e) }

// Discard drops every event.
var Discard Reporter = ReporterFunc(func(Event) {})

// NewJSONReporter writes one JSON object per event and line.
func NewJSONReporter(w io.Writer) Reporter {
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	return ReporterFunc(func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(e)
	})
}

// NewTextReporter writes one line per change (details indented below),
// for logs and CI.
func NewTextReporter(w io.Writer) Reporter {
	var mu sync.Mutex
	return ReporterFunc(func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		writeEventText(w, e, true)
	})
}

func writeEventText(w io.Writer, e Event, stamp bool) {
	if e.Type == EventPlan && e.Plan != nil {
		e.Plan.Write(w)
		return
	}
	if e.Type == EventSummary && e.Summary != nil {
		e.Summary.Write(w)
		return
	}
	if stamp {
		fmt.Fprintf(w, "%s %-10s %s\n", e.Time.Format("15:04:05"), e.Type, e.Message)
	} else {
		fmt.Fprintln(w, e.Message)
	}
	for _, l := range e.Lines {
		fmt.Fprintln(w, "    "+l)
	}
}

// NewLiveReporter is the terminal view: a board of task groups and nodes
// redrawn in place as they change, other events printed above it.
func NewLiveReporter(w io.Writer) Reporter {
	lv := &live{w: w, nodes: map[string]NodeRow{}, groups: map[string]GroupView{}}
	return ReporterFunc(lv.report)
}

type live struct {
	mu        sync.Mutex
	w         io.Writer
	drawn     int // lines of the board on screen
	dep       *DeploymentView
	groups    map[string]GroupView
	nodes     map[string]NodeRow
	nodeOrder []string
}

func (l *live) report(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clear()
	switch e.Type {
	case EventDeployment:
		l.dep = e.Deployment
		writeEventText(l.w, e, true)
	case EventGroup:
		if e.GroupState != nil {
			l.groups[e.Group] = *e.GroupState
		}
	case EventNode:
		if e.Node != nil {
			if _, ok := l.nodes[e.Node.AllocID]; !ok {
				l.nodeOrder = append(l.nodeOrder, e.Node.AllocID)
			}
			l.nodes[e.Node.AllocID] = *e.Node
		}
	case EventNodeGone:
		if e.Node != nil {
			delete(l.nodes, e.Node.AllocID)
		}
		writeEventText(l.w, e, true)
	case EventSummary:
		l.dep, l.groups, l.nodes = nil, map[string]GroupView{}, map[string]NodeRow{}
		writeEventText(l.w, e, true)
		return
	default:
		writeEventText(l.w, e, true)
	}
	l.draw()
}

func (l *live) clear() {
	if l.drawn > 0 {
		fmt.Fprintf(l.w, "\x1b[%dA\x1b[J", l.drawn)
		l.drawn = 0
	}
}

func (l *live) draw() {
	if l.dep == nil && len(l.groups) == 0 && len(l.nodes) == 0 {
		return
	}
	var b strings.Builder
	if l.dep != nil {
		fmt.Fprintf(&b, "deployment %s (job version %d): %s\n", short(l.dep.ID), l.dep.JobVersion, l.dep.Status)
	}
	for _, g := range sortedGroups(l.groups) {
		fmt.Fprintf(&b, "  group %-10s %s\n", g, l.groups[g])
	}
	var rows []NodeRow
	for _, id := range l.nodeOrder {
		if r, ok := l.nodes[id]; ok {
			rows = append(rows, r)
		}
	}
	if len(rows) > 0 {
		writeRows(&b, rows)
	}
	s := b.String()
	l.drawn = strings.Count(s, "\n")
	fmt.Fprint(l.w, s)
}

// Summary is the end of a deploy: how it ended, the nodes, how long it took.
type Summary struct {
	// Outcome: "healthy", "unchanged", "repaired" (KV only), "detached", "failed", "placement_failed",
	// "interrupted"; a restart's: "restarted", "failed", "interrupted".
	Outcome      string `json:"outcome"`
	Job          string `json:"job"`
	JobVersion   uint64 `json:"job_version"`
	DeploymentID string `json:"deployment_id,omitempty"`
	// Reverted is set when Nomad rolled back; ServingVersion is then the
	// version the nodes run.
	Reverted       bool      `json:"reverted,omitempty"`
	RevertedTo     uint64    `json:"reverted_to,omitempty"`
	ServingVersion uint64    `json:"serving_version"`
	Nodes          []NodeRow `json:"nodes"`
	Ready          int       `json:"ready"`
	Count          int       `json:"count"`
	Duration       string    `json:"duration"`
	Message        string    `json:"message,omitempty"`
	// Restarted are the nodes a restart restarted, in order (restart only).
	Restarted []string `json:"restarted,omitempty"`
}

// Write prints the summary.
func (s *Summary) Write(w io.Writer) {
	fmt.Fprintf(w, "\n== %s: job %q", strings.ToUpper(strings.ReplaceAll(s.Outcome, "_", " ")), s.Job)
	switch {
	case s.Reverted:
		fmt.Fprintf(w, " version %d failed, auto-reverted to version %d (now serving as version %d)", s.JobVersion, s.RevertedTo, s.ServingVersion)
	default:
		fmt.Fprintf(w, " version %d", s.JobVersion)
	}
	fmt.Fprintf(w, ", %d of %d nodes ready, in %s\n", s.Ready, s.Count, s.Duration)
	if s.Message != "" {
		fmt.Fprintln(w, s.Message)
	}
	writeRows(w, s.Nodes)
}
