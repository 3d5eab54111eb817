package netquiesce

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// routedHosts creates a router namespace and n hosts, each on a subnet of
// its own behind the router (10.77.i.2/24 via 10.77.i.1), each with a
// bridge br0 and a VXLAN port on it that floods to every host. Nothing but
// routed IP joins the hosts.
func routedHosts(t *testing.T, n int) []*Net {
	t.Helper()
	router := newTestNet(t, "vxr")
	must(t, router.DisableIPv6())
	must(t, router.WriteSysctl("net/ipv4/ip_forward", "1"))
	var hosts []*Net
	var underlay []net.IP
	for i := 1; i <= n; i++ {
		h := newTestNet(t, "vxh")
		must(t, h.DisableIPv6())
		up := fmt.Sprintf("r%d", i)
		must(t, AddVeth(VethEnd{Net: router, Name: up}, VethEnd{Net: h, Name: "up0"}))
		// Room for the 50 bytes VXLAN adds to a full 1500-byte frame.
		must(t, router.SetMTU(up, 1550))
		must(t, h.SetMTU("up0", 1550))
		must(t, router.AddAddr(up, fmt.Sprintf("10.77.%d.1/24", i)))
		must(t, h.AddAddr("up0", fmt.Sprintf("10.77.%d.2/24", i)))
		must(t, h.AddDefaultRoute("up0", net.ParseIP(fmt.Sprintf("10.77.%d.1", i))))
		must(t, h.AddBridge("br0"))
		hosts = append(hosts, h)
		underlay = append(underlay, net.ParseIP(fmt.Sprintf("10.77.%d.2", i)))
	}
	for i, h := range hosts {
		must(t, h.SetVXLAN(VXLAN{Name: "tvx0", ID: 4242, Local: underlay[i], Peers: underlay, Bridge: "br0"}))
	}
	return hosts
}

// sandboxOn creates a namespace on host h's bridge with ip/24 and the MAC
// MACForIP(ip), as a job-node sandbox has, and announces it.
func sandboxOn(t *testing.T, h *Net, port, ip string) *Net {
	t.Helper()
	sb := newTestNet(t, "vxs")
	must(t, sb.DisableIPv6())
	must(t, AddVeth(VethEnd{Net: h, Name: port}, VethEnd{Net: sb, Name: "eth0", MAC: MACForIP(net.ParseIP(ip))}))
	must(t, h.SetMaster(port, "br0"))
	must(t, sb.AddAddr("eth0", ip+"/24"))
	must(t, AnnounceIP(sb.NS(), "eth0", net.ParseIP(ip)))
	return sb
}

// TestVXLANOverlay: job-node addresses on one subnet, on hosts that share
// no segment, reach each other through the overlay, also after one of
// them moved to another host and announced itself there.
func TestVXLANOverlay(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces")
	hosts := routedHosts(t, 3)
	a := sandboxOn(t, hosts[0], "sa", "192.168.77.1")
	b := sandboxOn(t, hosts[1], "sb", "192.168.77.2")
	l := listenIn(t, b, "tcp4", "192.168.77.2:7000").(net.Listener)
	serveEcho(l)
	if err := tcpRoundTrip(a, "192.168.77.2:7000", 10*time.Second); err != nil {
		t.Fatalf("from host 1 to host 2 over the overlay: %v", err)
	}
	// Full-size frames cross too (TCP segments of 1448 bytes).
	big := strings.Repeat("x", 20000)
	if err := tcpRoundTrip(a, "192.168.77.2:7000", 10*time.Second, big); err != nil {
		t.Fatalf("full-size segments over the overlay: %v", err)
	}

	// b moves to host 3: its sandbox on host 2 goes, one with the same
	// address and MAC comes up on host 3 and announces itself. Host 1's
	// VXLAN device learned b's MAC on host 2; only the announcement tells it.
	l.Close()
	must(t, hosts[1].DelLink("sb"))
	b2 := sandboxOn(t, hosts[2], "sb", "192.168.77.2")
	l2 := listenIn(t, b2, "tcp4", "192.168.77.2:7000").(net.Listener)
	serveEcho(l2)
	if err := tcpRoundTrip(a, "192.168.77.2:7000", 10*time.Second); err != nil {
		t.Fatalf("from host 1 to the job-node moved to host 3: %v", err)
	}
}

// TestSetVXLANAgain: setting the overlay again keeps the device and makes
// its peers the new list; a device with another ID is refused, not replaced.
func TestSetVXLANAgain(t *testing.T) {
	testutil.RequireRoot(t, "creates a network namespace")
	h := newTestNet(t, "vxa")
	must(t, h.AddBridge("br0"))
	must(t, h.AddAddr("lo", "10.78.0.1/32"))
	ips := func(s ...string) []net.IP {
		var out []net.IP
		for _, x := range s {
			out = append(out, net.ParseIP(x))
		}
		return out
	}
	local := net.ParseIP("10.78.0.1")
	v := VXLAN{Name: "tvx0", ID: 7, Local: local, Peers: ips("10.78.0.1", "10.78.0.2", "10.78.0.3"), Bridge: "br0"}
	must(t, h.SetVXLAN(v))
	check := func(want ...string) {
		t.Helper()
		got, err := h.FloodPeers("tvx0")
		must(t, err)
		var s []string
		for _, ip := range got {
			s = append(s, ip.String())
		}
		slices.Sort(s)
		if !slices.Equal(s, want) {
			t.Fatalf("flood peers %v, want %v", s, want)
		}
	}
	check("10.78.0.2", "10.78.0.3")
	v.Peers = ips("10.78.0.3", "10.78.0.4")
	must(t, h.SetVXLAN(v))
	check("10.78.0.3", "10.78.0.4")
	if got, err := h.LocalAddr(ips("10.78.0.4", "10.78.0.1")); err != nil || !got.Equal(local) {
		t.Fatalf("LocalAddr = %v, %v; want %v", got, err, local)
	}
	if _, err := h.LocalAddr(ips("10.78.0.4")); err == nil {
		t.Fatal("LocalAddr found an address this host does not have")
	}
	v.ID = 8
	err := h.SetVXLAN(v)
	if err == nil || !strings.Contains(err.Error(), "exists with id 7") {
		t.Fatalf("SetVXLAN with another ID: %v; want it refused", err)
	}
	if l, err := h.Link("tvx0"); err != nil || l.Type() != "vxlan" {
		t.Fatalf("the device is gone after a refused SetVXLAN: %v", err)
	}
}
