package netquiesce

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

func uniq(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("torpor-%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(b))
}

// newTestNet creates a named namespace with lo up, removed (and checked gone)
// when the test ends.
func newTestNet(tb testing.TB, prefix string) *Net {
	tb.Helper()
	name := uniq(prefix)
	ns, err := NewNamedNetns(name)
	if err != nil {
		tb.Fatalf("NewNamedNetns: %v", err)
	}
	n, err := OpenNet(ns)
	ns.Close()
	if err != nil {
		_ = DeleteNamedNetns(name)
		tb.Fatalf("OpenNet: %v", err)
	}
	tb.Cleanup(func() {
		n.Close()
		if err := DeleteNamedNetns(name); err != nil {
			tb.Errorf("DeleteNamedNetns(%s): %v", name, err)
		}
		if _, err := os.Stat(filepath.Join(NetnsDir, name)); !os.IsNotExist(err) {
			tb.Errorf("namespace %s still present after delete: %v", name, err)
		}
	})
	if err := n.LinkUp("lo"); err != nil {
		tb.Fatal(err)
	}
	return n
}

// waitLimit bounds the wait for a condition that should hold within
// milliseconds: generous, so that a loaded machine cannot reach it.
const waitLimit = 30 * time.Second

// waitFor polls cond until it holds, failing the test after waitLimit.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("no %s after %v", what, waitLimit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tcpInfo reads a TCP connection's TCP_INFO.
func tcpInfo(tb testing.TB, c net.Conn) *unix.TCPInfo {
	tb.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	must(tb, err)
	var info *unix.TCPInfo
	must(tb, rc.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}))
	must(tb, err)
	return info
}

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

// listenIn opens a listener (tcp or udp) inside n's namespace. The socket keeps
// its namespace when used from other goroutines.
func listenIn(tb testing.TB, n *Net, network, addr string) any {
	tb.Helper()
	var out any
	err := nsrun.InNetNS(n.NS(), func() error {
		var err error
		switch network {
		case "tcp", "tcp4":
			out, err = net.Listen(network, addr)
		default:
			out, err = net.ListenPacket(network, addr)
		}
		return err
	})
	if err != nil {
		tb.Fatalf("listen %s %s in %s: %v", network, addr, n.NS(), err)
	}
	tb.Cleanup(func() { out.(interface{ Close() error }).Close() })
	return out
}

// dialIn dials from inside n's namespace (nil: this process's).
func dialIn(ctx context.Context, n *Net, network, addr string) (net.Conn, error) {
	if n == nil {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	var c net.Conn
	err := nsrun.InNetNS(n.NS(), func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// serveEcho echoes every TCP connection accepted on l until l closes.
func serveEcho(l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					k, err := c.Read(buf)
					if k > 0 {
						if _, werr := c.Write(buf[:k]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
}

// serveUDPEcho echoes every datagram until pc closes.
func serveUDPEcho(pc net.PacketConn) {
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:k], from)
		}
	}()
}

// tcpRoundTrip connects from n to addr, sends a message and expects it back.
func tcpRoundTrip(n *Net, addr string, timeout time.Duration, payload ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := dialIn(ctx, n, "tcp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	msg := []byte("torpor hello " + addr + strings.Join(payload, ""))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := readFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo mismatch: %q", got)
	}
	return nil
}

// udpProbe sends one datagram from n to addr and waits for the echo.
func udpProbe(n *Net, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := dialIn(ctx, n, "udp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("probe")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	k, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:k]) != "probe" {
		return fmt.Errorf("udp echo mismatch: %q", buf[:k])
	}
	return nil
}

func readFull(c net.Conn, b []byte) (int, error) {
	got := 0
	for got < len(b) {
		k, err := c.Read(b[got:])
		got += k
		if err != nil {
			return got, err
		}
	}
	return got, nil
}
