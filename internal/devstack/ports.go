package devstack

import (
	"fmt"
	"net"
	"sync"
)

// handedOut holds every port FreePorts and FreeUDPTCPPort returned in this
// process. The kernel may give a port that was just closed to the next
// listen on :0, and agents bind their ports only seconds after they were
// chosen: without this, two agents of one stack could be given one port.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// claim records port as handed out; false if it was already.
func claim(port int) bool {
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports[port] {
		return false
	}
	handedOut.ports[port] = true
	return true
}

// FreePorts returns n distinct free TCP ports on 127.0.0.1, never one that
// it returned before in this process. The ports are closed again before
// return, so another process may take one in between: a small, accepted
// race, as in every test harness of this kind.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			return nil, fmt.Errorf("finding %d free ports: too many already handed out", n)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l) // held open until return: no duplicates within one call
		if p := l.Addr().(*net.TCPAddr).Port; claim(p) {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// FreeUDPTCPPort returns a port free for both UDP and TCP on 127.0.0.1 (DNS).
func FreeUDPTCPPort() (int, error) {
	for range 50 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		t, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		u.Close()
		if err == nil {
			t.Close()
			if claim(port) {
				return port, nil
			}
		}
	}
	return 0, fmt.Errorf("no port free for both udp and tcp")
}
