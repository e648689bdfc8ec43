package proxy

// Rules 4 and 5 (proxy.go) as one decision, which both engines take after
// each attempt: the goroutine engine in forward, the event loops in
// gatewayFailed, answerHead and health (loop_gateway_linux.go). Whether
// another attempt is then made also depends on the tries left, the
// instances not tried yet and the retry budget, which each engine counts
// itself.

// result is what one attempt at an instance came to.
type result struct {
	idem      bool  // the method may be sent twice (idempotent)
	err       error // the exchange failed before a whole answer head; nil: code is the answer's
	code      int
	failOn5xx bool // every 5xx counts against the instance ([health] fail_on_5xx)
}

// health is what an attempt tells the instance's passive health (rule 5).
type health uint8

const (
	healthSuccess health = iota // ReportSuccess
	healthFailure               // ReportFailure
)

// next is whether to try another instance (rule 4).
type next uint8

const (
	// nextNone: the answer (or error) is the client's.
	nextNone next = iota
	// nextOrError: another instance if one may be tried; else the error
	// answer (502, or 504 after a timeout).
	nextOrError
	// nextOrAnswer: another instance if one may be tried and is left;
	// else this answer (a 502, 503 or 504 of the gateway's) is the
	// client's.
	nextOrAnswer
)

// judge decides what an attempt means:
//   - a connection that failed counts against the instance; it is retried
//     when nothing of the request was sent, whatever the method, and for
//     an idempotent method unless it timed out (a timeout may mean the
//     gateway is still working on it);
//   - 502, 503 and 504 count against it and are retried for idempotent
//     methods;
//   - another 5xx counts against it with fail_on_5xx;
//   - any other answer counts for it.
func judge(a result) (health, next) {
	switch {
	case a.err != nil:
		if nothingSent(a.err) || (a.idem && !isTimeout(a.err)) {
			return healthFailure, nextOrError
		}
		return healthFailure, nextNone
	case a.code == 502 || a.code == 503 || a.code == 504:
		if a.idem {
			return healthFailure, nextOrAnswer
		}
		return healthFailure, nextNone
	case a.code >= 500 && a.failOn5xx:
		return healthFailure, nextNone
	}
	return healthSuccess, nextNone
}
