package netquiesce

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

func TestMACForIP(t *testing.T) {
	tests := []struct {
		ip   string
		want string
	}{
		{"198.19.0.7", "02:74:c6:13:00:07"},
		{"198.19.1.255", "02:74:c6:13:01:ff"},
		{"::1", ""},
	}
	for _, tc := range tests {
		t.Run(tc.ip, func(t *testing.T) {
			got := MACForIP(net.ParseIP(tc.ip))
			if got.String() != tc.want {
				t.Fatalf("MACForIP(%s) = %q, want %q", tc.ip, got, tc.want)
			}
			if got != nil && (got[0]&0x02 == 0 || got[0]&0x01 != 0) {
				t.Fatalf("MAC %s is not locally administered unicast", got)
			}
		})
	}
}

func TestGratuitousARPLayout(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0x74, 1, 2, 3, 4}
	ip := net.IPv4(198, 19, 0, 9).To4()
	req := garp(1, mac, ip)
	want := []byte{0, 1, 8, 0, 6, 4, 0, 1, 2, 0x74, 1, 2, 3, 4, 198, 19, 0, 9, 0, 0, 0, 0, 0, 0, 198, 19, 0, 9}
	if !bytes.Equal(req, want) {
		t.Fatalf("request = % x\nwant      % x", req, want)
	}
	rep := garp(2, mac, ip)
	if rep[7] != 2 || !bytes.Equal(rep[18:24], []byte{255, 255, 255, 255, 255, 255}) {
		t.Fatalf("reply = % x", rep)
	}
}

func TestNamedNetnsLifecycle(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, cgroups and eBPF programs")
	name := uniq("life")
	before, err := os.Readlink("/proc/thread-self/ns/net")
	must(t, err)
	ns, err := NewNamedNetns(name)
	must(t, err)
	after, err := os.Readlink("/proc/thread-self/ns/net")
	must(t, err)
	if before != after {
		t.Fatalf("caller's namespace changed: %s -> %s", before, after)
	}
	if _, err := NewNamedNetns(name); err == nil {
		t.Fatal("creating the same name twice succeeded")
	}
	ns.Close()
	must(t, DeleteNamedNetns(name))
	if _, err := os.Stat(filepath.Join(NetnsDir, name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("namespace file still there: %v", err)
	}
	must(t, DeleteNamedNetns(name)) // already gone: fine
}

// TestPlumbingTwoNamespacesViaFabric: two namespaces on a bridge in a third,
// real TCP between them, then every link removed again.
func TestPlumbingTwoNamespacesViaFabric(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, cgroups and eBPF programs")
	fabric := newTestNet(t, "fab")
	a := newTestNet(t, "a")
	b := newTestNet(t, "b")
	must(t, fabric.AddBridge("br0"))
	macA := MACForIP(net.ParseIP("198.18.0.1"))
	must(t, AddVeth(VethEnd{Net: a, Name: "eth0", MAC: macA}, VethEnd{Net: fabric, Name: "va"}))
	must(t, AddVeth(VethEnd{Net: b, Name: "eth0"}, VethEnd{Net: fabric, Name: "vb"}))
	must(t, fabric.SetMaster("va", "br0"))
	must(t, fabric.SetMaster("vb", "br0"))
	must(t, a.AddAddr("eth0", "198.18.0.1/15"))
	must(t, b.AddAddr("eth0", "198.18.0.2/15"))

	l, err := a.Link("eth0")
	must(t, err)
	if !bytes.Equal(l.Attrs().HardwareAddr, macA) {
		t.Fatalf("eth0 MAC = %s, want %s", l.Attrs().HardwareAddr, macA)
	}
	if _, err := fabric.Link("eth0"); err == nil {
		t.Fatal("veth end leaked into the fabric namespace")
	}

	serveEcho(listenIn(t, b, "tcp4", "198.18.0.2:7000").(net.Listener))
	if err := tcpRoundTrip(a, "198.18.0.2:7000", 5*time.Second); err != nil {
		t.Fatalf("tcp a -> b through the fabric bridge: %v", err)
	}

	// A second address, a route, then deletion.
	must(t, a.AddAddr("eth0", "198.18.0.11/15"))
	addrs, err := a.Addrs("eth0")
	must(t, err)
	if len(addrs) != 2 {
		t.Fatalf("addresses on eth0 = %v, want 2", addrs)
	}
	must(t, a.DelAddr("eth0", "198.18.0.11/15"))
	must(t, a.DelAddr("eth0", "198.18.0.11/15")) // idempotent
	_, dst, _ := net.ParseCIDR("203.0.113.0/24")
	must(t, a.AddOnLinkRoute("eth0", dst))
	must(t, b.AddDefaultRoute("eth0", net.ParseIP("198.18.0.1")))
	routes, err := b.Handle().RouteList(nil, unix.AF_INET)
	must(t, err)
	var sawDefault bool
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			sawDefault = r.Gw.Equal(net.ParseIP("198.18.0.1"))
		}
	}
	if !sawDefault {
		t.Fatalf("no default route via 198.18.0.1 in %v", routes)
	}

	must(t, a.DelLink("eth0"))
	must(t, a.DelLink("eth0")) // already gone
	if _, err := fabric.Link("va"); err == nil {
		t.Fatal("deleting one veth end left its peer")
	}
	var nf netlink.LinkNotFoundError
	if _, err := fabric.Handle().LinkByName("va"); !errors.As(err, &nf) {
		t.Fatalf("peer lookup error = %v, want LinkNotFoundError", err)
	}
}
