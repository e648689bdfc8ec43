package scheduler

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
)

// The error types tell a caller what kind of failure it is, so that the
// command can exit with a code CI can act on:
//
//	*InvalidError      the spec or the input is wrong; nothing was changed
//	*UnreachableError  Nomad or Consul cannot be reached, or refused the token
//	*PlacementError    Nomad cannot place the gateway nodes (names why)
//	*DeployError       the deployment failed (says whether it was reverted)
//
// Other errors are unexpected failures.

// InvalidError is bad input: an invalid spec, a config that does not render.
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return e.Err.Error() }
func (e *InvalidError) Unwrap() error { return e.Err }

// UnreachableError is Nomad or Consul not answering, or refusing the token.
type UnreachableError struct {
	Service string // "Nomad" or "Consul"
	Addr    string
	Denied  bool // permission denied (HTTP 403) rather than unreachable
	Err     error
}

func (e *UnreachableError) Error() string {
	if e.Denied {
		env := "NOMAD_TOKEN"
		if e.Service == "Consul" {
			env = "CONSUL_HTTP_TOKEN"
		}
		return fmt.Sprintf("%s at %s: permission denied (check the token: %s or [%s] token in the spec): %v",
			e.Service, e.Addr, env, strings.ToLower(e.Service), e.Err)
	}
	return fmt.Sprintf("%s at %s is unreachable: %v", e.Service, e.Addr, e.Err)
}
func (e *UnreachableError) Unwrap() error { return e.Err }

// PlacementError is Nomad unable to place gateway nodes, with the reasons by
// name: the missing host volume and the nodes that lack it, a constraint
// that filtered nodes, an exhausted resource.
type PlacementError struct {
	Reasons []string
}

func (e *PlacementError) Error() string {
	return "placement failed:\n  " + strings.Join(e.Reasons, "\n  ")
}

// DeployError is a deployment that failed: unhealthy allocations, a
// deadline passed. It says whether Nomad rolled back and to which version.
type DeployError struct {
	DeploymentID string
	JobVersion   uint64 // the version that failed
	Description  string // Nomad's status description
	Reverted     bool
	RevertedTo   uint64 // the version now serving, when Reverted
	Explanation  []string
}

func (e *DeployError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "deployment %s of job version %d failed: %s", short(e.DeploymentID), e.JobVersion, e.Description)
	if e.Reverted {
		fmt.Fprintf(&b, "; auto-reverted to job version %d", e.RevertedTo)
	} else {
		b.WriteString("; not reverted")
	}
	return b.String()
}

// classify turns a Nomad or Consul client error into an *UnreachableError
// when it is one (connection refused, timeout, DNS, TLS, HTTP 403).
func classify(service, addr, what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	var ure nomadapi.UnexpectedResponseError
	if errors.As(err, &ure) && ure.StatusCode() == 403 {
		return &UnreachableError{Service: service, Addr: addr, Denied: true, Err: fmt.Errorf("%s: %w", what, err)}
	}
	var se consulapi.StatusError
	if errors.As(err, &se) && se.Code == 403 {
		return &UnreachableError{Service: service, Addr: addr, Denied: true, Err: fmt.Errorf("%s: %w", what, err)}
	}
	msg := err.Error()
	if strings.Contains(msg, "403") && strings.Contains(strings.ToLower(msg), "permission denied") {
		return &UnreachableError{Service: service, Addr: addr, Denied: true, Err: fmt.Errorf("%s: %w", what, err)}
	}
	var ne net.Error
	var ue *url.Error
	if errors.As(err, &ne) || errors.As(err, &ue) || strings.Contains(msg, "connection refused") ||
		strings.Contains(msg, "no such host") || strings.Contains(msg, "EOF") {
		return &UnreachableError{Service: service, Addr: addr, Err: fmt.Errorf("%s: %w", what, err)}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// isNotFound reports a Nomad 404.
func isNotFound(err error) bool {
	var ure nomadapi.UnexpectedResponseError
	if errors.As(err, &ure) && ure.StatusCode() == 404 {
		return true
	}
	return err != nil && strings.Contains(err.Error(), "404")
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// unchanged marks an error that happened before anything was written.
type unchanged struct{ err error }

func (e *unchanged) Error() string { return e.err.Error() }
func (e *unchanged) Unwrap() error { return e.err }

// NothingChanged reports whether a Deploy error happened before anything
// was written: no KV value, no job registered.
func NothingChanged(err error) bool {
	var u *unchanged
	return errors.As(err, &u)
}
