package proxy

import (
	"errors"
	"net"
	"os"
	"testing"

	"github.com/valyala/fasthttp"
)

// Rules 4 and 5, as judge takes them for both engines.
func TestJudge(t *testing.T) {
	dial := &dialError{errors.New("connection refused")}
	timeout := &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}
	broken := errors.New("connection reset by peer")
	for _, tc := range []struct {
		name string
		r    result
		h    health
		n    next
	}{
		{"dial failed, POST", result{err: dial}, healthFailure, nextOrError},
		{"no free connection, POST", result{err: fasthttp.ErrNoFreeConns}, healthFailure, nextOrError},
		{"broken, GET", result{idem: true, err: broken}, healthFailure, nextOrError},
		{"broken, POST", result{err: broken}, healthFailure, nextNone},
		{"timeout, GET", result{idem: true, err: timeout}, healthFailure, nextNone},
		{"fasthttp timeout, GET", result{idem: true, err: fasthttp.ErrTimeout}, healthFailure, nextNone},
		{"dial timeout, POST", result{err: &dialError{timeout}}, healthFailure, nextOrError},
		{"503, GET", result{idem: true, code: 503}, healthFailure, nextOrAnswer},
		{"502, PUT", result{idem: true, code: 502}, healthFailure, nextOrAnswer},
		{"504, POST", result{code: 504}, healthFailure, nextNone},
		{"500", result{idem: true, code: 500}, healthSuccess, nextNone},
		{"500, fail_on_5xx", result{idem: true, code: 500, failOn5xx: true}, healthFailure, nextNone},
		{"200", result{code: 200}, healthSuccess, nextNone},
		{"404, fail_on_5xx", result{code: 404, failOn5xx: true}, healthSuccess, nextNone},
	} {
		h, n := judge(tc.r)
		if h != tc.h || n != tc.n {
			t.Errorf("%s: health %d next %d, want %d %d", tc.name, h, n, tc.h, tc.n)
		}
	}
}
