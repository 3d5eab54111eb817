package netquiesce

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// Net is a netlink handle bound to one network namespace. Every method acts on
// that namespace only, whatever namespace the calling goroutine is in.
type Net struct {
	ns netns.NsHandle // owned duplicate of the caller's handle
	h  *netlink.Handle
}

// OpenNet returns a Net bound to ns. It keeps its own duplicate of ns, so the
// caller may close ns afterwards. Close releases it.
func OpenNet(ns netns.NsHandle) (*Net, error) {
	fd, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate network namespace handle %s: %w", ns, err)
	}
	own := netns.NsHandle(fd)
	h, err := netlink.NewHandleAt(own)
	if err != nil {
		own.Close()
		return nil, fmt.Errorf("open netlink handle in network namespace %s: %w", ns, err)
	}
	return &Net{ns: own, h: h}, nil
}

// OpenNamedNet opens the namespace /run/netns/<name>.
func OpenNamedNet(name string) (*Net, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %q: %w", name, err)
	}
	defer ns.Close()
	return OpenNet(ns)
}

// Close releases the netlink handle and the namespace handle.
func (n *Net) Close() error {
	n.h.Close()
	return n.ns.Close()
}

// NS returns the namespace handle the Net is bound to; it stays owned by n.
func (n *Net) NS() netns.NsHandle { return n.ns }

// Handle returns the namespace-bound netlink handle for anything this type
// does not cover; it stays owned by n.
func (n *Net) Handle() *netlink.Handle { return n.h }

// Link looks up a link by name in the namespace.
func (n *Net) Link(name string) (netlink.Link, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find link %q in network namespace %s: %w", name, n.ns, err)
	}
	return l, nil
}

// AddBridge creates a bridge and sets it up. Bridged frames are kept away from
// the namespace's iptables (bridge-nf-call-* = 0 where br_netfilter exists), so
// a host firewall cannot silently eat sandbox traffic.
func (n *Net) AddBridge(name string) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := n.h.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %q: %w", name, err)
	}
	if err := n.disableBridgeNetfilter(); err != nil {
		return fmt.Errorf("create bridge %q: %w", name, err)
	}
	if err := n.PinMAC(name); err != nil {
		return fmt.Errorf("create bridge %q: %w", name, err)
	}
	return n.LinkUp(name)
}

// PinMAC sets a bridge's Ethernet address to the one it has now. A bridge
// whose address was never set follows the lowest address among its ports,
// so a sandbox veth that joins or leaves it can change it: the host's own
// address on the bridge then answers with another MAC, and peers that
// cached the old one cannot reach the host until they ask again (slurmd on
// a simulated host was unreachable for 20 to 70 s after a job-node was
// restored there, and once declared dead). An address that was set stays.
func (n *Net) PinMAC(bridge string) error {
	l, err := n.Link(bridge)
	if err != nil {
		return err
	}
	if err := n.h.LinkSetHardwareAddr(l, l.Attrs().HardwareAddr); err != nil {
		return fmt.Errorf("pin the Ethernet address of bridge %q: %w", bridge, err)
	}
	return nil
}

func (n *Net) disableBridgeNetfilter() error {
	return nsrun.InNetNS(n.ns, func() error {
		for _, k := range []string{"iptables", "ip6tables", "arptables"} {
			p := "/proc/sys/net/bridge/bridge-nf-call-" + k
			err := os.WriteFile(p, []byte("0\n"), 0o644)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("write %s: %w", p, err)
			}
		}
		return nil
	})
}

// VethEnd names one end of a veth pair: the namespace it lives in, its
// interface name, and an optional MAC address (nil: kernel-chosen).
type VethEnd struct {
	Net  *Net
	Name string
	MAC  net.HardwareAddr
}

// AddVeth creates a veth pair whose ends live in a.Net and b.Net with the given
// names and MACs, and sets both ends up.
func AddVeth(a, b VethEnd) error {
	peerFd, err := unix.FcntlInt(uintptr(b.Net.ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("create veth %s/%s: duplicate namespace handle: %w", a.Name, b.Name, err)
	}
	defer unix.Close(peerFd)
	v := netlink.NewVeth(netlink.LinkAttrs{Name: a.Name, HardwareAddr: a.MAC})
	v.PeerName = b.Name
	v.PeerHardwareAddr = b.MAC
	v.PeerNamespace = netlink.NsFd(peerFd)
	if err := a.Net.h.LinkAdd(v); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", a.Name, b.Name, err)
	}
	if err := a.Net.LinkUp(a.Name); err != nil {
		return err
	}
	return b.Net.LinkUp(b.Name)
}

// SetMaster enslaves link to bridge.
func (n *Net) SetMaster(link, bridge string) error {
	l, err := n.Link(link)
	if err != nil {
		return err
	}
	br, err := n.Link(bridge)
	if err != nil {
		return err
	}
	if err := n.h.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("attach %q to bridge %q: %w", link, bridge, err)
	}
	return nil
}

// LinkUp sets a link up (use "lo" for loopback).
func (n *Net) LinkUp(name string) error {
	l, err := n.Link(name)
	if err != nil {
		return err
	}
	if err := n.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set link %q up: %w", name, err)
	}
	return nil
}

// DelLink deletes a link; deleting one end of a veth deletes both.
// A link that does not exist is not an error.
func (n *Net) DelLink(name string) error {
	l, err := n.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %q: %w", name, err)
	}
	if err := n.h.LinkDel(l); err != nil {
		return fmt.Errorf("delete link %q: %w", name, err)
	}
	return nil
}

// AddAddr adds an address in CIDR notation ("198.19.0.7/15") to link.
func (n *Net) AddAddr(link, cidr string) error {
	l, err := n.Link(link)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("add address %q to %q: %w", cidr, link, err)
	}
	if err := n.h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add address %s to %q: %w", cidr, link, err)
	}
	return nil
}

// DelAddr removes an address in CIDR notation from link. An address that is
// not there is not an error.
func (n *Net) DelAddr(link, cidr string) error {
	l, err := n.Link(link)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("delete address %q from %q: %w", cidr, link, err)
	}
	if err := n.h.AddrDel(l, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("delete address %s from %q: %w", cidr, link, err)
	}
	return nil
}

// Addrs lists the IPv4 addresses on link.
func (n *Net) Addrs(link string) ([]netlink.Addr, error) {
	l, err := n.Link(link)
	if err != nil {
		return nil, err
	}
	as, err := n.h.AddrList(l, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %q: %w", link, err)
	}
	return as, nil
}

// AddDefaultRoute adds a default route via gw out of link.
func (n *Net) AddDefaultRoute(link string, gw net.IP) error {
	l, err := n.Link(link)
	if err != nil {
		return err
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw}
	if err := n.h.RouteAdd(r); err != nil {
		return fmt.Errorf("add default route via %s dev %q: %w", gw, link, err)
	}
	return nil
}

// AddOnLinkRoute adds a route to dst reachable directly on link (scope link).
func (n *Net) AddOnLinkRoute(link string, dst *net.IPNet) error {
	l, err := n.Link(link)
	if err != nil {
		return err
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}
	if err := n.h.RouteAdd(r); err != nil {
		return fmt.Errorf("add route %s dev %q: %w", dst, link, err)
	}
	return nil
}

// MACForIP derives a locally administered, unicast MAC address from an IPv4
// address: 02:74:<the 4 address bytes> (0x74 is 't' for torpor). A job-node keeps the
// same MAC wherever its floating IP goes, so peers' caches stay right.
// It returns nil for a non-IPv4 address.
func MACForIP(ip net.IP) net.HardwareAddr {
	v4 := ip.To4()
	if v4 == nil {
		return nil
	}
	return net.HardwareAddr{0x02, 0x74, v4[0], v4[1], v4[2], v4[3]}
}

// MoveIP moves a floating address (CIDR) from one namespace's link to
// another's, then announces it from its new place so peers and bridges learn
// the new location at once. from may be nil when the address is not assigned
// anywhere yet.
func MoveIP(from *Net, fromLink string, to *Net, toLink, cidr string) error {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("move address %q: %w", cidr, err)
	}
	if from != nil {
		if err := from.DelAddr(fromLink, cidr); err != nil {
			return fmt.Errorf("move address %s: %w", cidr, err)
		}
	}
	if err := to.AddAddr(toLink, cidr); err != nil {
		return fmt.Errorf("move address %s: %w", cidr, err)
	}
	if err := AnnounceIP(to.ns, toLink, a.IP); err != nil {
		return fmt.Errorf("move address %s: %w", cidr, err)
	}
	return nil
}

// DisableIPv6 turns IPv6 off in the namespace (all and default interfaces), so
// a sandbox sends nothing on its own: no router solicitations, no DAD. Call it
// before creating interfaces.
func (n *Net) DisableIPv6() error {
	return n.WriteSysctl("net/ipv6/conf/all/disable_ipv6", "1")
}

// WriteSysctl writes a per-namespace sysctl such as
// "net/ipv4/conf/all/arp_notify" inside the namespace.
func (n *Net) WriteSysctl(key, value string) error {
	return nsrun.InNetNS(n.ns, func() error {
		p := "/proc/sys/" + key
		if err := os.WriteFile(p, []byte(value+"\n"), 0o644); err != nil {
			return fmt.Errorf("write sysctl %s in network namespace %s: %w", key, n.ns, err)
		}
		if key == "net/ipv6/conf/all/disable_ipv6" {
			// New interfaces take "default", existing ones "all".
			d := "/proc/sys/net/ipv6/conf/default/disable_ipv6"
			if err := os.WriteFile(d, []byte(value+"\n"), 0o644); err != nil {
				return fmt.Errorf("write %s: %w", d, err)
			}
		}
		return nil
	})
}

func netInterfaceIndex(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("find interface %q: %w", name, err)
	}
	return ifi.Index, nil
}

// SetMTU sets the MTU of link.
func (n *Net) SetMTU(link string, mtu int) error {
	l, err := n.Link(link)
	if err != nil {
		return err
	}
	if err := n.h.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("set the MTU of %q to %d: %w", link, mtu, err)
	}
	return nil
}
