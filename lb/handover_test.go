package lb

import (
	"net"
	"testing"
)

// An unnamed inherited socket is taken by the listener whose configured
// address it is bound to.
func TestSameAddr(t *testing.T) {
	tcp := func(ip string, port int) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	for _, c := range []struct {
		bound net.Addr
		addr  string
		want  bool
	}{
		{tcp("127.0.0.1", 8080), "127.0.0.1:8080", true},
		{tcp("127.0.0.1", 8080), "127.0.0.1:8081", false},
		{tcp("127.0.0.1", 8080), "127.0.0.2:8080", false},
		{tcp("::", 443), ":443", true},                // systemd's ListenStream=443
		{tcp("0.0.0.0", 443), ":443", true},           //
		{tcp("::", 443), "0.0.0.0:443", true},         // unspecified is unspecified
		{tcp("0.0.0.0", 443), "[::]:443", true},       //
		{tcp("127.0.0.1", 443), ":443", false},        // a specific address is not "any"
		{tcp("::", 443), "127.0.0.1:443", false},      //
		{tcp("::1", 80), "[::1]:80", true},            //
		{tcp("127.0.0.1", 80), "localhost:80", false}, // names are not resolved
		{tcp("127.0.0.1", 80), "127.0.0.1", false},    // no port
		{&net.UnixAddr{Name: "/x", Net: "unix"}, "127.0.0.1:80", false},
	} {
		if got := sameAddr(c.bound, c.addr); got != c.want {
			t.Errorf("sameAddr(%v, %q) = %v, want %v", c.bound, c.addr, got, c.want)
		}
	}
}
