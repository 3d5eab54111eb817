package netquiesce

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

// The simulated-cluster topology the shim builds: a fabric namespace with one
// bridge; per host a namespace whose uplink veth is on the fabric bridge and is
// enslaved to the host's own br0 (which carries 198.18.0.<h>/15); per job-node a
// namespace with eth0 (MAC = MACForIP) whose peer is on its host's br0, and a
// floating 198.19.0.<n>/15.
type testCluster struct {
	t      *testing.T
	fabric *Net
	hosts  map[int]*Net
}

func newTestCluster(t *testing.T, hosts ...int) *testCluster {
	c := &testCluster{t: t, fabric: newTestNet(t, "fabric"), hosts: map[int]*Net{}}
	must(t, c.fabric.DisableIPv6())
	must(t, c.fabric.AddBridge("fabric"))
	for _, h := range hosts {
		hn := newTestNet(t, fmt.Sprintf("host%d", h))
		must(t, hn.DisableIPv6())
		port := fmt.Sprintf("h%d", h)
		must(t, AddVeth(VethEnd{Net: hn, Name: "uplink"}, VethEnd{Net: c.fabric, Name: port}))
		must(t, c.fabric.SetMaster(port, "fabric"))
		must(t, hn.AddBridge("br0"))
		must(t, hn.SetMaster("uplink", "br0"))
		must(t, hn.AddAddr("br0", fmt.Sprintf("198.18.0.%d/15", h)))
		c.hosts[h] = hn
	}
	return c
}

// addNode creates a job-node sandbox on host h, with its floating IP unless
// withIP is false. mac nil means MACForIP.
func (c *testCluster) addNode(h, n int, port string, mac net.HardwareAddr, withIP bool) *Net {
	t := c.t
	node := newTestNet(t, fmt.Sprintf("node%d", n))
	must(t, node.DisableIPv6())
	ip := net.ParseIP(fmt.Sprintf("198.19.0.%d", n))
	if mac == nil {
		mac = MACForIP(ip)
	}
	must(t, AddVeth(VethEnd{Net: node, Name: "eth0", MAC: mac}, VethEnd{Net: c.hosts[h], Name: port}))
	must(t, c.hosts[h].SetMaster(port, "br0"))
	if withIP {
		must(t, node.AddAddr("eth0", ip.String()+"/15"))
	}
	return node
}

// fdbPort returns the name of the bridge port on which n's bridge learned mac.
func fdbPort(t *testing.T, n *Net, mac net.HardwareAddr) string {
	t.Helper()
	ents, err := n.Handle().NeighList(0, unix.AF_BRIDGE)
	must(t, err)
	for _, e := range ents {
		if bytes.Equal(e.HardwareAddr, mac) {
			l, err := n.Handle().LinkByIndex(e.LinkIndex)
			must(t, err)
			return l.Attrs().Name
		}
	}
	return ""
}

func TestClusterTopologyAndIPMove(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces, cgroups and eBPF programs")
	c := newTestCluster(t, 1, 2)
	n1 := c.addNode(1, 1, "n1", nil, true)
	n2 := c.addNode(2, 2, "n2", nil, true)
	mac2 := MACForIP(net.ParseIP("198.19.0.2"))

	l2 := listenIn(t, n2, "tcp4", "198.19.0.2:7000").(net.Listener)
	serveEcho(l2)
	for name, from := range map[string]*Net{"node1": n1, "host1": c.hosts[1], "host2": c.hosts[2]} {
		if err := tcpRoundTrip(from, "198.19.0.2:7000", 5*time.Second); err != nil {
			t.Fatalf("tcp %s -> node2 (198.19.0.2): %v", name, err)
		}
	}
	if err := tcpRoundTrip(n2, "198.18.0.1:22", time.Second); err == nil {
		t.Fatal("connected to a port nobody listens on")
	}
	if got := fdbPort(t, c.fabric, mac2); got != "h2" {
		t.Fatalf("fabric learned node2's MAC on %q, want h2", got)
	}

	// Migrate node2 to host1: the old sandbox goes away, a new one with the
	// same MAC appears on host1 without its address yet.
	l2.Close()
	must(t, n2.DelLink("eth0"))
	n2b := c.addNode(1, 2, "n2", nil, false)
	if got := fdbPort(t, c.fabric, mac2); got != "h2" {
		t.Fatalf("fabric moved node2's MAC to %q before any announcement; the test proves nothing", got)
	}
	must(t, MoveIP(nil, "", n2b, "eth0", "198.19.0.2/15"))
	if got := fdbPort(t, c.fabric, mac2); got != "h1" {
		t.Fatalf("after AnnounceIP fabric has node2's MAC on %q, want h1", got)
	}
	if got := fdbPort(t, c.hosts[1], mac2); got != "n2" {
		t.Fatalf("after AnnounceIP host1's br0 has node2's MAC on %q, want n2", got)
	}
	serveEcho(listenIn(t, n2b, "tcp4", "198.19.0.2:7000").(net.Listener))
	for name, from := range map[string]*Net{"node1": n1, "host2": c.hosts[2]} {
		if err := tcpRoundTrip(from, "198.19.0.2:7000", 2*time.Second); err != nil {
			t.Fatalf("tcp %s -> moved node2: %v", name, err)
		}
	}

	// Move the address to a sandbox with a different MAC: node1's neighbour
	// entry must follow at once (gratuitous ARP overrides it).
	other := net.HardwareAddr{0x02, 0x74, 0xee, 0, 0, 2}
	n2c := c.addNode(2, 2, "n2c", other, false)
	must(t, MoveIP(n2b, "eth0", n2c, "eth0", "198.19.0.2/15"))
	neigh, err := n1.Handle().NeighList(0, unix.AF_INET)
	must(t, err)
	var found net.HardwareAddr
	for _, e := range neigh {
		if e.IP.Equal(net.ParseIP("198.19.0.2")) {
			found = e.HardwareAddr
		}
	}
	if !bytes.Equal(found, other) {
		t.Fatalf("node1's neighbour entry for 198.19.0.2 = %s, want %s", found, other)
	}
	serveEcho(listenIn(t, n2c, "tcp4", "198.19.0.2:7000").(net.Listener))
	if err := tcpRoundTrip(n1, "198.19.0.2:7000", 2*time.Second); err != nil {
		t.Fatalf("tcp node1 -> node2 after second move: %v", err)
	}
}
