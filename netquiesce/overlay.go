package netquiesce

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// VXLAN is an overlay that stretches a host's job-node bridge over a routed
// network: the bridge gets a VXLAN port, which carries every frame to the
// other hosts in UDP. Hosts then need to reach each other only by IP, not
// share a bridge or a segment (cloud networks, routed data centres).
//
// Broadcasts and frames to unknown MACs go to every peer (head-end
// replication: an all-zero FDB entry per peer, no multicast needed).
// Learning is on, so a device learns which host a MAC is on from the frames
// that host sends; after a restore or a migration the job-node announces
// itself (gratuitous ARP, Sandbox.Announce), which every peer receives and
// learns the job-node's new host from. A job-node keeps its MAC (MACForIP)
// wherever it runs, so nothing else needs to change on a move.
type VXLAN struct {
	// Name of the device, e.g. "tvx0".
	Name string
	// ID is the VXLAN network identifier; every host of one cluster uses
	// the same.
	ID int
	// Local is this host's address on the routed network: the source of
	// the encapsulated packets.
	Local net.IP
	// Peers are the other hosts' addresses (Local, if listed, is skipped).
	Peers []net.IP
	// Port is the UDP port (4789 is IANA's).
	Port int
	// Bridge is the job-node bridge the device joins.
	Bridge string
}

// VXLANPort is the IANA port for VXLAN.
const VXLANPort = 4789

// SetVXLAN creates the device v describes on v.Bridge, or keeps the one
// there if it has the same ID, local address and port, and sets its
// flooding entries to exactly v.Peers. It refuses a device of that name
// that is something else rather than replace it under running job-nodes.
func (n *Net) SetVXLAN(v VXLAN) error {
	if v.Local.To4() == nil {
		return fmt.Errorf("vxlan %s: local address %v is not IPv4", v.Name, v.Local)
	}
	if v.Port == 0 {
		v.Port = VXLANPort
	}
	l, err := n.h.LinkByName(v.Name)
	var missing netlink.LinkNotFoundError
	switch {
	case errors.As(err, &missing):
		if err := n.addVXLAN(v); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("vxlan %s: %w", v.Name, err)
	default:
		x, ok := l.(*netlink.Vxlan)
		if !ok {
			return fmt.Errorf("vxlan %s: a %s link of that name exists: remove it or pick another name", v.Name, l.Type())
		}
		if x.VxlanId != v.ID || !x.SrcAddr.Equal(v.Local) || x.Port != v.Port {
			return fmt.Errorf("vxlan %s exists with id %d, local %v, port %d, not id %d, local %v, port %d: remove it (`ip link del %s`) once no job-node runs on this host",
				v.Name, x.VxlanId, x.SrcAddr, x.Port, v.ID, v.Local, v.Port, v.Name)
		}
		if err := n.SetMaster(v.Name, v.Bridge); err != nil {
			return err
		}
	}
	if err := n.setFloodPeers(v); err != nil {
		return err
	}
	return n.LinkUp(v.Name)
}

func (n *Net) addVXLAN(v VXLAN) error {
	x := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: v.Name}, VxlanId: v.ID, SrcAddr: v.Local,
		Port: v.Port, Learning: true}
	if err := n.h.LinkAdd(x); err != nil {
		return fmt.Errorf("create vxlan %s (id %d, local %v): %w", v.Name, v.ID, v.Local, err)
	}
	if err := n.SetMaster(v.Name, v.Bridge); err != nil {
		_ = n.DelLink(v.Name)
		return err
	}
	return nil
}

var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// setFloodPeers makes the all-zero FDB entries of the device exactly one
// per peer.
func (n *Net) setFloodPeers(v VXLAN) error {
	l, err := n.Link(v.Name)
	if err != nil {
		return err
	}
	want := []net.IP{}
	for _, p := range v.Peers {
		if p.To4() == nil {
			return fmt.Errorf("vxlan %s: peer %v is not IPv4", v.Name, p)
		}
		if !p.Equal(v.Local) && !slices.ContainsFunc(want, p.Equal) {
			want = append(want, p)
		}
	}
	have, err := n.FloodPeers(v.Name)
	if err != nil {
		return err
	}
	entry := func(ip net.IP) *netlink.Neigh {
		return &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			State: netlink.NUD_PERMANENT | netlink.NUD_NOARP, HardwareAddr: zeroMAC, IP: ip}
	}
	for _, ip := range have {
		if !slices.ContainsFunc(want, ip.Equal) {
			if err := n.h.NeighDel(entry(ip)); err != nil {
				return fmt.Errorf("vxlan %s: remove peer %v: %w", v.Name, ip, err)
			}
		}
	}
	for _, ip := range want {
		if !slices.ContainsFunc(have, ip.Equal) {
			if err := n.h.NeighAppend(entry(ip)); err != nil {
				return fmt.Errorf("vxlan %s: add peer %v: %w", v.Name, ip, err)
			}
		}
	}
	return nil
}

// FloodPeers returns the hosts the VXLAN device name floods to.
func (n *Net) FloodPeers(name string) ([]net.IP, error) {
	l, err := n.Link(name)
	if err != nil {
		return nil, err
	}
	ents, err := n.h.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("vxlan %s: list its FDB: %w", name, err)
	}
	var out []net.IP
	for _, e := range ents {
		if e.HardwareAddr.String() == zeroMAC.String() && e.IP != nil {
			out = append(out, e.IP)
		}
	}
	return out, nil
}

// LocalAddr returns the one address of ips that is assigned to an interface
// of n: which host of a list this one is.
func (n *Net) LocalAddr(ips []net.IP) (net.IP, error) {
	addrs, err := n.h.AddrList(nil, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var found []net.IP
	for _, a := range addrs {
		if slices.ContainsFunc(ips, a.IP.Equal) {
			found = append(found, a.IP)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return nil, fmt.Errorf("none of %v is an address of this host", ips)
	}
	return nil, fmt.Errorf("several of %v are addresses of this host: %v", ips, found)
}
