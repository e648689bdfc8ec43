package scheduler

import (
	"context"
	"errors"
	"testing"
	"time"
)

// watchIndex signals on its first answer and when the index moves, not when
// a blocking query times out unchanged; it asks again from the index it
// got, and from 0 after an error, which it reports.
func TestWatchIndex(t *testing.T) {
	type answer struct {
		index uint64
		err   error
	}
	asked := make(chan uint64)
	answers := make(chan answer)
	q := func(ctx context.Context, index uint64) (uint64, error) {
		select {
		case asked <- index:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		select {
		case a := <-answers:
			return a.index, a.err
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan struct{}, 1)
	errs := make(chan error, 1)
	go watchIndex(ctx, q, changed, errs)

	step := func(wantAsked uint64, a answer, wantSignal bool) {
		t.Helper()
		select {
		case got := <-asked:
			if got != wantAsked {
				t.Fatalf("asked from index %d, want %d", got, wantAsked)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("not asked again (want index %d)", wantAsked)
		}
		answers <- a
		if a.err != nil {
			select {
			case err := <-errs:
				if !errors.Is(err, a.err) {
					t.Fatalf("error %v, want %v", err, a.err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the error is not reported")
			}
			return
		}
		// The next question means this answer has been handled.
		select {
		case got := <-asked:
			go func() { // put it back for the next step
				select {
				case asked <- got:
				case <-ctx.Done():
				}
			}()
		case <-time.After(5 * time.Second):
			t.Fatal("not asked again")
		}
		select {
		case <-changed:
			if !wantSignal {
				t.Fatalf("answer %d: signalled a change", a.index)
			}
		default:
			if wantSignal {
				t.Fatalf("answer %d: no change signalled", a.index)
			}
		}
	}
	down := errors.New("down")
	step(0, answer{index: 5}, true)  // first answer
	step(5, answer{index: 5}, false) // the wait ended, nothing changed
	step(5, answer{index: 7}, true)
	step(7, answer{err: down}, false)
	step(0, answer{index: 9}, true)  // after an error: what changed is unknown
	step(9, answer{index: 2}, false) // the index went back: start over from 0
	step(0, answer{index: 2}, true)
	step(2, answer{index: 3}, true)
	cancel()
}

func TestWatchIndexNeverAsksFromZeroAgain(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var asked []uint64
	q := func(ctx context.Context, index uint64) (uint64, error) {
		asked = append(asked, index)
		if len(asked) == 3 {
			cancel()
		}
		return 0, nil // an empty table's index
	}
	watchIndex(ctx, q, make(chan struct{}, 1), make(chan error, 1))
	if len(asked) != 3 || asked[0] != 0 || asked[1] != 1 || asked[2] != 1 {
		t.Errorf("asked from %v, want [0 1 1]", asked)
	}
}

func TestStatusKeyIgnoresUptime(t *testing.T) {
	a := &Status{Nodes: []NodeRow{{Alloc: "a1", Uptime: "5s", Readiness: CheckPassing}}}
	b := &Status{Nodes: []NodeRow{{Alloc: "a1", Uptime: "9s", Readiness: CheckPassing}}}
	if statusKey(a) != statusKey(b) {
		t.Error("an uptime alone is a change")
	}
	if a.Nodes[0].Uptime != "5s" {
		t.Error("statusKey changed its argument")
	}
	b.Nodes[0].Readiness = CheckCritical
	if statusKey(a) == statusKey(b) {
		t.Error("a readiness change is no change")
	}
}
