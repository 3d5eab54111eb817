package netquiesce

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/testutil"
)

func TestARPRequestLayout(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0x74, 1, 2, 3, 4}
	got := arpRequest(mac, net.IPv4(198, 19, 0, 1), net.IPv4(198, 19, 0, 2))
	want := []byte{0, 1, 8, 0, 6, 4, 0, 1, 2, 0x74, 1, 2, 3, 4, 198, 19, 0, 1, 0, 0, 0, 0, 0, 0, 198, 19, 0, 2}
	if !bytes.Equal(got, want) {
		t.Fatalf("request = % x\nwant      % x", got, want)
	}
}

// neighState is the state of n's neighbour entry for ip on eth0 (0: none).
func neighState(t *testing.T, n *Net, ip net.IP) int {
	t.Helper()
	l, err := n.Link("eth0")
	must(t, err)
	ents, err := n.Handle().NeighList(l.Attrs().Index, unix.AF_INET)
	must(t, err)
	for _, e := range ents {
		if e.IP.Equal(ip) {
			return e.State
		}
	}
	return 0
}

// A job-node restored into a new namespace sends its first packets while it
// is still locked: the lock drops the ARP request for the peer, and the
// packets wait in the unresolved neighbour entry until the kernel asks
// again. SolicitNeighbours, once the lock is gone, must get them delivered
// at once. The restored side's retrans_time_ms is a minute here, so a
// datagram that arrives within seconds came through SolicitNeighbours.
func TestSolicitNeighboursSendsWhatWaitedInTheLock(t *testing.T) {
	testutil.RequireRoot(t, "creates network namespaces and eBPF programs")
	c := newTestCluster(t, 1)
	restored := c.addNode(1, 1, "n1", nil, true)
	peer := c.addNode(1, 2, "n2", nil, true)
	self, peerIP := net.IPv4(198, 19, 0, 1), net.IPv4(198, 19, 0, 2)
	must(t, restored.WriteSysctl("net/ipv4/neigh/eth0/retrans_time_ms", "60000"))
	pc := listenIn(t, peer, "udp4", "198.19.0.2:7000").(net.PacketConn)

	lk, err := Attach(Target{Net: c.hosts[1], Interface: "n1"}, Options{Mode: ModeTCX})
	must(t, err)
	t.Cleanup(func() { lk.Close() })
	_, err = lk.Lock()
	must(t, err)
	conn := listenIn(t, restored, "udp4", "198.19.0.1:0").(net.PacketConn)
	if _, err := conn.WriteTo([]byte("queued"), &net.UDPAddr{IP: peerIP, Port: 7000}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an unresolved neighbour entry for the peer", func() bool {
		return neighState(t, restored, peerIP) == unix.NUD_INCOMPLETE
	})
	waitFor(t, "the ARP request dropped by the lock", func() bool {
		cs, err := lk.Counters()
		must(t, err)
		return cs[Ingress][Other].Packets > 0
	})
	_, err = lk.Unlock()
	must(t, err)

	buf := make([]byte, 64)
	must(t, pc.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
	if n, _, err := pc.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the datagram arrived by itself after the unlock (%q, %v): the test proves nothing", buf[:n], err)
	}

	start := time.Now()
	asked, err := SolicitNeighbours(restored, "eth0", self)
	must(t, err)
	if len(asked) != 1 || !asked[0].Equal(peerIP) {
		t.Fatalf("SolicitNeighbours asked for %v, want [%s]", asked, peerIP)
	}
	must(t, pc.SetReadDeadline(time.Now().Add(5*time.Second)))
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("the datagram queued under the lock did not arrive after SolicitNeighbours: %v", err)
	}
	if string(buf[:n]) != "queued" {
		t.Fatalf("got %q, want %q", buf[:n], "queued")
	}
	t.Logf("delivered %v after SolicitNeighbours", time.Since(start))
	valid := unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT
	if st := neighState(t, restored, peerIP); st&valid == 0 {
		t.Fatalf("neighbour entry for the peer in state %#x, want a valid one", st)
	}

	// Nothing left to ask for.
	asked, err = SolicitNeighbours(restored, "eth0", self)
	must(t, err)
	if len(asked) != 0 {
		t.Fatalf("second SolicitNeighbours asked for %v, want nothing", asked)
	}
}
