package scheduler

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/jobs"
)

// LogAlloc is the allocation whose task log `gwnomad logs` reads.
type LogAlloc struct {
	ID     string
	Alloc  string // short ID
	Node   string // Nomad client name, as in status
	NodeID string
	Status string // client status
	// Desired is Nomad's desired status (run, stop, evict).
	Desired    string
	JobVersion uint64
	createIdx  uint64
}

func (a LogAlloc) live() bool {
	return a.Desired == "run" && (a.Status == "running" || a.Status == "pending")
}

func (a LogAlloc) String() string {
	s := fmt.Sprintf("%s on node %s (%s", a.Alloc, a.Node, a.Status)
	if a.Desired != "" && a.Desired != "run" {
		s += ", desired " + a.Desired
	}
	return s + fmt.Sprintf(", job version %d)", a.JobVersion)
}

// FindLogAlloc picks the allocation of the gateway job that arg names: a
// Nomad client name as `gwnomad status` shows it (the allocation running
// there; the latest one there when none runs), or a prefix of an allocation
// ID (any allocation Nomad still knows, a failed one too). With arg "" it
// is the one running gateway node. When arg names nothing, or more than one
// allocation, or arg is "" and several nodes run, the error is an
// *InvalidError that lists the choices.
func (c *Client) FindLogAlloc(ctx context.Context, arg string) (LogAlloc, error) {
	stubs, _, err := c.nomad.Jobs().Allocations(c.JobID(), true, c.q(ctx))
	if err != nil {
		return LogAlloc{}, c.nerr("listing allocations", err)
	}
	allocs := make([]LogAlloc, 0, len(stubs))
	for _, a := range stubs {
		allocs = append(allocs, LogAlloc{ID: a.ID, Alloc: short(a.ID), Node: a.NodeName, NodeID: a.NodeID,
			Status: a.ClientStatus, Desired: a.DesiredStatus, JobVersion: a.JobVersion, createIdx: a.CreateIndex})
	}
	return chooseAlloc(c.JobID(), allocs, arg)
}

func chooseAlloc(job string, allocs []LogAlloc, arg string) (LogAlloc, error) {
	// Newest first: the latest allocation on a node is the one to show when
	// none runs there any more.
	sort.SliceStable(allocs, func(i, j int) bool { return allocs[i].createIdx > allocs[j].createIdx })
	var live []LogAlloc
	for _, a := range allocs {
		if a.live() {
			live = append(live, a)
		}
	}
	if len(allocs) == 0 {
		return LogAlloc{}, fmt.Errorf("job %q has no allocation (not deployed? `gwnomad status` tells)", job)
	}
	if arg == "" {
		switch len(live) {
		case 1:
			return live[0], nil
		case 0:
			return LogAlloc{}, choiceError("no gateway node of job "+strconv.Quote(job)+" runs; name an allocation", allocs)
		}
		return LogAlloc{}, choiceError(fmt.Sprintf("%d gateway nodes run; name one", len(live)), live)
	}
	var onNode, onNodeLive, byID []LogAlloc
	for _, a := range allocs {
		if a.Node == arg {
			onNode = append(onNode, a)
			if a.live() {
				onNodeLive = append(onNodeLive, a)
			}
		}
		if strings.HasPrefix(a.ID, arg) {
			byID = append(byID, a)
		}
	}
	switch {
	case len(onNodeLive) == 1:
		return onNodeLive[0], nil
	case len(onNodeLive) > 1:
		return LogAlloc{}, choiceError(fmt.Sprintf("%d allocations run on node %s; name one", len(onNodeLive), arg), onNodeLive)
	case len(onNode) > 0:
		return onNode[0], nil
	case len(byID) == 1:
		return byID[0], nil
	case len(byID) > 1:
		return LogAlloc{}, choiceError(fmt.Sprintf("%d allocations start with %q; give more of the ID", len(byID), arg), byID)
	}
	choices := live
	if len(choices) == 0 {
		choices = allocs
	}
	return LogAlloc{}, choiceError(fmt.Sprintf("no node or allocation of job %q is %q", job, arg), choices)
}

func choiceError(msg string, choices []LogAlloc) error {
	var b strings.Builder
	b.WriteString(msg + ":")
	for _, a := range choices {
		fmt.Fprintf(&b, "\n  %-24s alloc %s  %s", a.Node, a.ID, a.Status)
		if a.Desired != "" && a.Desired != "run" {
			b.WriteString(" (" + a.Desired + ")")
		}
	}
	return &InvalidError{Err: fmt.Errorf("%s", b.String())}
}

// LogsOptions says which log and how much of it.
type LogsOptions struct {
	Stderr bool // the task's stderr rather than its stdout
	// Tail is how many of the last lines to print; < 0 for the whole log.
	Tail int
	// Follow keeps printing what the task writes until ctx ends.
	Follow bool
}

// tailChunk is the first guess at how many bytes hold the lines asked for,
// and maxTailRead the most read from the end to find them.
const (
	bytesPerLine = 256
	tailChunk    = 16 << 10
	maxTailRead  = 16 << 20
)

// Logs copies the gateway task's stdout or stderr of allocation a to w,
// through Nomad's log API (the ACL capability read-logs). The log is the
// concatenation of the files Nomad's logmon rotates; with Tail >= 0 only
// its last Tail lines. With Follow it then prints what the task writes
// until ctx ends, and returns ctx's error.
func (c *Client) Logs(ctx context.Context, a LogAlloc, opts LogsOptions, w io.Writer) error {
	alloc := &nomadapi.Allocation{ID: a.ID, NodeID: a.NodeID}
	logType := "stdout"
	if opts.Stderr {
		logType = "stderr"
	}
	if opts.Tail < 0 {
		// From the start; when following, on from there.
		return c.streamLog(ctx, alloc, logType, opts.Follow, nomadapi.OriginStart, 0, func(f *nomadapi.StreamFrame) error {
			_, err := w.Write(f.Data)
			return err
		})
	}
	if opts.Tail == 0 && !opts.Follow {
		return nil
	}
	lines, end, err := c.tailLog(ctx, alloc, logType, opts.Tail)
	if err != nil {
		return err
	}
	if _, err := w.Write(lines); err != nil {
		return err
	}
	if !opts.Follow {
		return nil
	}
	// A second, following stream starts a little before where the tail
	// ended and skips what the tail printed, so that a line written in
	// between is printed once, neither lost nor repeated.
	skip := &skipper{end: end}
	return c.streamLog(ctx, alloc, logType, true, nomadapi.OriginEnd, followBack, func(f *nomadapi.StreamFrame) error {
		if data := skip.next(f); len(data) > 0 {
			_, err := w.Write(data)
			return err
		}
		return nil
	})
}

// followBack is how far back from the end the following stream starts:
// more than a task writes between the two requests.
const followBack = 1 << 20

// logPos is a position in a task log: a rotated file and an offset in it.
type logPos struct {
	File   string
	Offset int64
}

// tailLog reads the last n lines of the log and where they end. It reads
// a chunk from the end and more while the chunk holds fewer lines and the
// log is longer.
func (c *Client) tailLog(ctx context.Context, alloc *nomadapi.Allocation, logType string, n int) ([]byte, logPos, error) {
	size := max(int64(n)*bytesPerLine, tailChunk)
	for {
		var buf bytes.Buffer
		var end logPos
		err := c.streamLog(ctx, alloc, logType, false, nomadapi.OriginEnd, size, func(f *nomadapi.StreamFrame) error {
			buf.Write(f.Data)
			if f.File != "" && len(f.Data) > 0 {
				end = logPos{File: f.File, Offset: f.Offset}
			}
			return nil
		})
		if err != nil {
			return nil, logPos{}, err
		}
		whole := int64(buf.Len()) < size // Nomad had less than asked: the log from its start
		lines, complete := lastLines(buf.Bytes(), n, whole)
		if complete || whole || size >= maxTailRead {
			return lines, end, nil
		}
		size *= 4
	}
}

// lastLines returns the last n lines of b (a last line without its
// newline counts) and whether they are all whole: b holds a newline before
// them, or b is the log from its start. When they are not, the first,
// cut one is left out.
func lastLines(b []byte, n int, fromStart bool) ([]byte, bool) {
	if n == 0 {
		return nil, true
	}
	body := bytes.TrimSuffix(b, []byte("\n"))
	i := len(body)
	for range n {
		j := bytes.LastIndexByte(body[:i], '\n')
		if j < 0 {
			if fromStart {
				return b, true
			}
			// The first line in b may be cut: leave it out.
			if k := bytes.IndexByte(b, '\n'); k >= 0 {
				return b[k+1:], false
			}
			return nil, false
		}
		i = j
	}
	return b[i+1:], true
}

// skipper passes on the data of a following stream that comes after end.
type skipper struct {
	end    logPos
	passed bool
}

func (s *skipper) next(f *nomadapi.StreamFrame) []byte {
	if s.passed || s.end.File == "" {
		s.passed = true
		return f.Data
	}
	if len(f.Data) == 0 {
		return nil
	}
	switch cmp := compareLogFiles(f.File, s.end.File); {
	case cmp < 0:
		return nil // an older file, printed already
	case cmp > 0:
		s.passed = true // rotated since: all of it is new
		return f.Data
	}
	// f.Offset is where the frame's data ends in its file.
	start := f.Offset - int64(len(f.Data))
	if f.Offset <= s.end.Offset {
		return nil
	}
	s.passed = true
	if start >= s.end.Offset {
		return f.Data
	}
	return f.Data[s.end.Offset-start:]
}

// compareLogFiles orders Nomad's rotated log files (<task>.<type>.<n>) by n.
func compareLogFiles(a, b string) int {
	ia, ib := logIndex(a), logIndex(b)
	switch {
	case ia < ib:
		return -1
	case ia > ib:
		return 1
	}
	return 0
}

func logIndex(file string) int {
	i, err := strconv.Atoi(file[strings.LastIndexByte(file, '.')+1:])
	if err != nil {
		return -1
	}
	return i
}

// streamLog reads one log stream and calls fn with each frame, until the
// stream ends (at the end of the log unless follow), ctx ends (its error
// is returned) or fn fails.
func (c *Client) streamLog(ctx context.Context, alloc *nomadapi.Allocation, logType string, follow bool,
	origin string, offset int64, fn func(*nomadapi.StreamFrame) error) error {
	// Cancelling closes the response body, which ends the API's decoding
	// goroutine (it sends frames without watching cancel).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	frames, errs := c.nomad.AllocFS().Logs(alloc, follow, jobs.TaskName, logType, origin, offset, ctx.Done(), c.q(ctx))
	for {
		select {
		case f, ok := <-frames:
			if !ok {
				return nil
			}
			if err := fn(f); err != nil {
				return err
			}
		case err := <-errs:
			// Frames decoded before the error are still to be printed.
			for drained := false; !drained; {
				select {
				case f, ok := <-frames:
					if !ok {
						drained = true
					} else if err := fn(f); err != nil {
						return err
					}
				default:
					drained = true
				}
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			what := fmt.Sprintf("reading the %s of task %q of allocation %s", logType, jobs.TaskName, short(alloc.ID))
			// Nomad's streaming endpoints answer a missing capability
			// (read-logs) with a 500 that says so, not with a 403.
			if strings.Contains(err.Error(), "Permission denied") {
				return &UnreachableError{Service: "Nomad", Addr: c.nomadAddr, Denied: true,
					Err: fmt.Errorf("%s (the token needs the read-logs capability): %w", what, err)}
			}
			return c.nerr(what, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
