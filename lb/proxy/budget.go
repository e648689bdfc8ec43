package proxy

import "sync/atomic"

// retryBudget allows, each second, retries up to min + percent% of the
// previous second's requests (or the current one's, if higher). It is
// approximate under races, which is all a budget needs.
type retryBudget struct {
	percent, min int64
	window       atomic.Int64 // unix second of the counters
	reqs         atomic.Int64
	prevReqs     atomic.Int64
	retries      atomic.Int64
}

func (b *retryBudget) roll(sec int64) {
	if w := b.window.Load(); w != sec && b.window.CompareAndSwap(w, sec) {
		if w == sec-1 {
			b.prevReqs.Store(b.reqs.Load())
		} else {
			b.prevReqs.Store(0)
		}
		b.reqs.Store(0)
		b.retries.Store(0)
	}
}

func (b *retryBudget) request(sec int64) {
	if b.percent == 0 {
		return
	}
	b.roll(sec)
	b.reqs.Add(1)
}

func (b *retryBudget) retry(sec int64) bool {
	if b.percent == 0 {
		return true
	}
	b.roll(sec)
	allowed := b.min + max(b.prevReqs.Load(), b.reqs.Load())*b.percent/100
	if b.retries.Add(1) > allowed {
		b.retries.Add(-1)
		return false
	}
	return true
}
