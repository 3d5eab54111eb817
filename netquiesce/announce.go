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
		copy(to.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		for _, op := range []uint16{1, 2} { // request, reply
			pkt := garp(op, ifi.HardwareAddr, v4)
			if err := unix.Sendto(fd, pkt, 0, to); err != nil {
				return fmt.Errorf("announce %s: send gratuitous ARP on %q: %w", ip, ifname, err)
			}
		}
		return nil
	})
}

// garp builds an ARP payload (RFC 826) announcing ip at mac.
func garp(op uint16, mac net.HardwareAddr, ip net.IP) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)      // hardware: Ethernet
	binary.BigEndian.PutUint16(b[2:], 0x0800) // protocol: IPv4
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], op)
	copy(b[8:14], mac)
	copy(b[14:18], ip)
	if op == 2 {
		copy(b[18:24], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	} // a request leaves the target MAC zero
	copy(b[24:28], ip)
	return b
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
