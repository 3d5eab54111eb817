package netquiesce

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// AnnounceIP sends gratuitous ARP for ip from interface ifname in namespace ns:
// one ARP request and one ARP reply, both broadcast, with ip as sender and
// target. Bridges learn the sender MAC's new port, and hosts that already have a
// neighbour entry for ip update it. The raw AF_PACKET socket is opened inside
// ns on a locked, throw-away thread.
func AnnounceIP(ns netns.NsHandle, ifname string, ip net.IP) error {
	v4 := ip.To4()
	if v4 == nil {
		return fmt.Errorf("announce %s on %q: only IPv4 addresses are announced", ip, ifname)
	}
	return nsrun.InNetNS(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("announce %s: find interface %q: %w", ip, ifname, err)
		}
		if len(ifi.HardwareAddr) != 6 {
			return fmt.Errorf("announce %s: interface %q has no Ethernet address", ip, ifname)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return fmt.Errorf("announce %s: open packet socket: %w", ip, err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{
			Protocol: htons(unix.ETH_P_ARP),
			Ifindex:  ifi.Index,
			Halen:    6,
		}
		copy(to.Addr[:], broadcastMAC)
		for _, op := range []uint16{1, 2} { // request, reply
			pkt := garp(op, ifi.HardwareAddr, v4)
			if err := unix.Sendto(fd, pkt, 0, to); err != nil {
				return fmt.Errorf("announce %s: send gratuitous ARP on %q: %w", ip, ifname, err)
			}
		}
		return nil
	})
}

// SolicitNeighbours sends, from interface ifname of n with ip as the sender,
// one broadcast ARP request for every IPv4 neighbour entry of ifname that is
// unresolved (INCOMPLETE) or has failed, and returns the addresses it asked
// for. The replies resolve the entries at once, and the kernel sends the
// packets that waited in them.
//
// A restored job-node lives in a new namespace whose neighbour table starts
// empty. The first packets its restored connections send while it is still
// locked (CRIU's window probes, segments the peers' retransmissions call
// for) make the kernel ask for the peer's address; the lock drops that ARP
// request, the packets wait in the unresolved entry, and the kernel asks
// again only after retrans_time_ms (1 s by default). Call it when every
// job-node the entries may point to is unlocked.
func SolicitNeighbours(n *Net, ifname string, ip net.IP) ([]net.IP, error) {
	v4 := ip.To4()
	if v4 == nil {
		return nil, fmt.Errorf("solicit neighbours of %s on %q: only IPv4 is supported", ip, ifname)
	}
	l, err := n.Link(ifname)
	if err != nil {
		return nil, fmt.Errorf("solicit neighbours of %s: %w", ip, err)
	}
	ents, err := n.h.NeighList(l.Attrs().Index, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("solicit neighbours of %s: list neighbours of %q: %w", ip, ifname, err)
	}
	var want []net.IP
	for _, e := range ents {
		if e.State&(unix.NUD_INCOMPLETE|unix.NUD_FAILED) != 0 && e.IP.To4() != nil {
			want = append(want, e.IP.To4())
		}
	}
	if len(want) == 0 {
		return nil, nil
	}
	mac := l.Attrs().HardwareAddr
	if len(mac) != 6 {
		return nil, fmt.Errorf("solicit neighbours of %s: interface %q has no Ethernet address", ip, ifname)
	}
	err = nsrun.InNetNS(n.ns, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return fmt.Errorf("open packet socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: l.Attrs().Index, Halen: 6}
		copy(to.Addr[:], broadcastMAC)
		for _, target := range want {
			if err := unix.Sendto(fd, arpRequest(mac, v4, target), 0, to); err != nil {
				return fmt.Errorf("send ARP request for %s on %q: %w", target, ifname, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("solicit neighbours of %s: %w", ip, err)
	}
	return want, nil
}

var broadcastMAC = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// garp builds an ARP payload (RFC 826) announcing ip at mac.
func garp(op uint16, mac net.HardwareAddr, ip net.IP) []byte {
	b := arpPayload(op, mac, ip, ip)
	if op == 2 {
		copy(b[18:24], broadcastMAC)
	} // a request leaves the target MAC zero
	return b
}

// arpRequest builds an ARP request (RFC 826) from sender (at mac) asking
// for target's hardware address.
func arpRequest(mac net.HardwareAddr, sender, target net.IP) []byte {
	return arpPayload(1, mac, sender, target)
}

// arpPayload lays out an Ethernet/IPv4 ARP payload with a zero target MAC.
func arpPayload(op uint16, mac net.HardwareAddr, sender, target net.IP) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)      // hardware: Ethernet
	binary.BigEndian.PutUint16(b[2:], 0x0800) // protocol: IPv4
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], op)
	copy(b[8:14], mac)
	copy(b[14:18], sender.To4())
	copy(b[24:28], target.To4())
	return b
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
