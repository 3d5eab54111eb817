package simhost

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/vishvananda/netns"
)

// TestControlHost: a routed cluster's control host reaches every host over
// the router, runs a command in its own network namespace (Host.Command),
// and goes with the cluster; a flat cluster has none.
func TestControlHost(t *testing.T) {
	testutil.RequireRoot(t, "network namespaces")
	name := fmt.Sprintf("c%d", os.Getpid()%100000)
	c, err := NewRoutedCluster(context.Background(), name, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctl, err := c.AddControlHost()
	if err != nil {
		t.Fatal(err)
	}
	if again, err := c.AddControlHost(); err != nil || again != ctl {
		t.Fatalf("a second AddControlHost: %v, %v", again, err)
	}
	if ctl.Underlay != "10.250.0.2" || ctl.NetNS != NetNSName(name, "coord") {
		t.Fatalf("control host %+v", ctl)
	}
	// In the control host: its address is there, and a TCP listener in
	// h2's namespace takes a connection from it, over the router.
	out, err := ctl.Command("ip", "-4", "-br", "addr", "show", "up0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), ctl.Underlay+"/24") {
		t.Fatalf("the control host's address: %v\n%s", err, out)
	}
	lis := listenIn(t, c.Host(2), c.Host(2).Underlay+":0")
	got := make(chan string, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer conn.Close()
		got <- conn.RemoteAddr().String()
	}()
	out, err = ctl.Command("bash", "-c", "exec 3<>/dev/tcp/${0%:*}/${0##*:}", lis.Addr().String()).CombinedOutput()
	if err != nil {
		t.Fatalf("connect to h2 from the control host: %v\n%s", err, out)
	}
	if from := <-got; !strings.HasPrefix(from, ctl.Underlay+":") {
		t.Fatalf("h2 took a connection from %s, want the control host's %s", from, ctl.Underlay)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ctl.NetNSPath()); !os.IsNotExist(err) {
		t.Fatalf("the control host's namespace is left (%v)", err)
	}
	flat, err := NewCluster(context.Background(), name+"f", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer flat.Close()
	if _, err := flat.AddControlHost(); err == nil {
		t.Fatal("a flat cluster got a control host")
	}
}

// listenIn listens on addr in h's network namespace.
func listenIn(t *testing.T, h *Host, addr string) net.Listener {
	t.Helper()
	type res struct {
		l   net.Listener
		err error
	}
	done := make(chan res, 1)
	go func() {
		// This thread enters h's namespace and is never used again
		// (the goroutine ends with it locked: the runtime drops it).
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(h.NetNSPath())
		if err == nil {
			err = netns.Set(ns)
			ns.Close()
		}
		if err != nil {
			done <- res{nil, err}
			return
		}
		l, err := net.Listen("tcp", addr)
		done <- res{l, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, h.NetNS, r.err)
	}
	t.Cleanup(func() { r.l.Close() })
	return r.l
}
