//go:build !linux

package proxy

import "net"

// rawConn is the plain net.Conn path where raw system calls are not
// implemented.
type rawConn struct{ tc *net.TCPConn }

func newRawConn(tc *net.TCPConn) (*rawConn, error) { return &rawConn{tc}, nil }

func (c *rawConn) read(b []byte) (int, error)  { return c.tc.Read(b) }
func (c *rawConn) write(b []byte) (int, error) { return c.tc.Write(b) }
