// Package simhost simulates a cluster of hosts on one machine: every host is
// a network namespace (torpor-<cluster>-h<i>) with a bridge br0 that
// job-node sandboxes join. Host i has 198.18.0.<i>/15 on br0; job-nodes take
// addresses from 198.19.0.0/15. These addresses exist only inside the
// namespaces.
//
// In a flat cluster (NewCluster) br0 enslaves an uplink veth into a shared
// "fabric" namespace with its own bridge: one L2 segment joins every host
// and job-node. In a routed cluster (NewRoutedCluster) the fabric is a
// router instead: host i's uplink has 10.250.<i>.2/24, the router
// 10.250.<i>.1, and br0 has no uplink. Hosts then reach each other only by
// IP, as on a routed data-centre or cloud network, and job-nodes on
// different hosts only through an overlay the shims build (torpor shim
// --vxlan with every host's Underlay address).
package simhost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/torpor-hpc/torpor/netquiesce"
)

const (
	// Bridge is the bridge of every simulated host that sandboxes join.
	Bridge = "br0"
	// Prefix is the netmask length of host and job-node addresses.
	Prefix = 15
	// MaxHosts is how many hosts one cluster may have.
	MaxHosts = 250
)

// Host is one simulated host.
type Host struct {
	Index  int
	NetNS  string // name under /run/netns
	Addr   string // "198.18.0.<i>/15"
	Bridge string
	// Underlay is the host's address on the routed network of a routed
	// cluster ("10.250.<i>.2"), "" in a flat one.
	Underlay string
	// MountNS is the host's mount namespace file when it has one of its
	// own (Cluster.NewMountNS), else "".
	MountNS string
	net     *netquiesce.Net
}

// NetNSPath is the host's namespace file.
func (h *Host) NetNSPath() string { return filepath.Join(netquiesce.NetnsDir, h.NetNS) }

// Cluster is a set of simulated hosts.
type Cluster struct {
	Name   string
	Hosts  []*Host
	Routed bool
	// Control is the host of a routed cluster's coordinator
	// (AddControlHost), nil until it is added.
	Control *Host
	fabric  *netquiesce.Net

	closeOnce sync.Once
	closeErr  error
}

// NodeAddr is the floating address of job-node n (1-based), with prefix.
func NodeAddr(n int) string { return fmt.Sprintf("198.19.%d.%d/%d", n/250, n%250+1, Prefix) }

// NetNSName is the namespace name of something named part in cluster name.
func NetNSName(cluster, part string) string { return "torpor-" + cluster + "-" + part }

// checkCluster checks a cluster's name and host count.
func checkCluster(name string, n int) error {
	if name == "" || strings.ContainsAny(name, "/ ") {
		return fmt.Errorf("bad name %q", name)
	}
	if n < 1 || n > MaxHosts {
		return fmt.Errorf("%s: %d hosts, want 1..%d", name, n, MaxHosts)
	}
	return nil
}

// NewCluster creates n simulated hosts (indices 1..n) on one L2 segment.
// name must be short and unique (e.g. "t" + pid); on error nothing is left
// behind.
func NewCluster(ctx context.Context, name string, n int) (*Cluster, error) {
	return newCluster(ctx, name, n, false)
}

// NewRoutedCluster creates n simulated hosts that share no L2 segment: each
// is on a subnet of its own behind a router.
func NewRoutedCluster(ctx context.Context, name string, n int) (*Cluster, error) {
	return newCluster(ctx, name, n, true)
}

// underlayMTU is the MTU of a routed cluster's links: room for the 50
// bytes VXLAN adds to a job-node's 1500-byte frames.
const underlayMTU = 1550

func underlayAddr(i int) string { return fmt.Sprintf("10.250.%d.2", i) }

func newCluster(ctx context.Context, name string, n int, routed bool) (_ *Cluster, err error) {
	if err := checkCluster(name, n); err != nil {
		return nil, fmt.Errorf("create cluster: %w", err)
	}
	c := &Cluster{Name: name, Routed: routed}
	defer func() {
		if err != nil {
			_ = c.Close()
			err = fmt.Errorf("create cluster %s: %w", name, err)
		}
	}()
	fns, err := netquiesce.NewNamedNetns(NetNSName(name, "fabric"))
	if err != nil {
		return nil, err
	}
	c.fabric, err = netquiesce.OpenNet(fns)
	fns.Close()
	if err != nil {
		return nil, err
	}
	if err := c.fabric.DisableIPv6(); err != nil {
		return nil, err
	}
	if routed {
		err = c.fabric.WriteSysctl("net/ipv4/ip_forward", "1")
	} else {
		err = c.fabric.AddBridge("fab0")
	}
	if err != nil {
		return nil, err
	}
	for i := 1; i <= n; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := c.addHost(i)
		if err != nil {
			return nil, err
		}
		c.Hosts = append(c.Hosts, h)
	}
	return c, nil
}

func (c *Cluster) addHost(i int) (*Host, error) {
	h := c.newHost(i)
	ns, err := netquiesce.NewNamedNetns(h.NetNS)
	if err != nil {
		return nil, err
	}
	h.net, err = netquiesce.OpenNet(ns)
	ns.Close()
	if err != nil {
		_ = netquiesce.DeleteNamedNetns(h.NetNS)
		return nil, err
	}
	if err := h.setup(c.fabric, c.Routed); err != nil {
		h.net.Close()
		return nil, err
	}
	return h, nil
}

// setup gives a fresh host namespace its bridge, uplink and address. Close
// removes the namespace if this fails halfway.
func (h *Host) setup(fabric *netquiesce.Net, routed bool) error {
	i := h.Index
	if err := h.net.DisableIPv6(); err != nil {
		return err
	}
	if err := h.net.LinkUp("lo"); err != nil {
		return err
	}
	if err := h.net.AddBridge(Bridge); err != nil {
		return err
	}
	fab := "h" + strconv.Itoa(i)
	if err := netquiesce.AddVeth(netquiesce.VethEnd{Net: fabric, Name: fab}, netquiesce.VethEnd{Net: h.net, Name: "up0"}); err != nil {
		return err
	}
	if routed {
		if err := h.routeUplink(fabric, fab); err != nil {
			return err
		}
	} else {
		if err := fabric.SetMaster(fab, "fab0"); err != nil {
			return err
		}
		if err := h.net.SetMaster("up0", Bridge); err != nil {
			return err
		}
	}
	return h.net.AddAddr(Bridge, h.Addr)
}

// routeUplink puts the host's uplink on a subnet of its own behind the
// router: 10.250.<i>.2/24 here, 10.250.<i>.1/24 on the router's end fab,
// and the default route through it.
func (h *Host) routeUplink(router *netquiesce.Net, fab string) error {
	for _, end := range []struct {
		n    *netquiesce.Net
		link string
	}{{router, fab}, {h.net, "up0"}} {
		if err := end.n.SetMTU(end.link, underlayMTU); err != nil {
			return err
		}
	}
	gw := fmt.Sprintf("10.250.%d.1", h.Index)
	if err := router.AddAddr(fab, gw+"/24"); err != nil {
		return err
	}
	if err := h.net.AddAddr("up0", h.Underlay+"/24"); err != nil {
		return err
	}
	return h.net.AddDefaultRoute("up0", net.ParseIP(gw))
}

// AddControlHost gives a routed cluster one more host, for its coordinator:
// namespace torpor-<name>-coord on a subnet of its own behind the router
// (Underlay 10.250.0.2), with no bridge and no job-nodes. Close removes it
// with the others.
func (c *Cluster) AddControlHost() (*Host, error) {
	if !c.Routed {
		return nil, fmt.Errorf("cluster %s: a control host needs a routed cluster", c.Name)
	}
	if c.Control != nil {
		return c.Control, nil
	}
	h := &Host{NetNS: NetNSName(c.Name, "coord"), Underlay: underlayAddr(0)}
	ns, err := netquiesce.NewNamedNetns(h.NetNS)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: control host: %w", c.Name, err)
	}
	h.net, err = netquiesce.OpenNet(ns)
	ns.Close()
	if err == nil {
		err = h.setupControl(c.fabric)
	}
	if err != nil {
		if h.net != nil {
			h.net.Close()
		}
		_ = netquiesce.DeleteNamedNetns(h.NetNS)
		return nil, fmt.Errorf("cluster %s: control host: %w", c.Name, err)
	}
	c.Control = h
	return h, nil
}

// setupControl gives a fresh control host namespace its uplink to the router.
func (h *Host) setupControl(router *netquiesce.Net) error {
	if err := h.net.DisableIPv6(); err != nil {
		return err
	}
	if err := h.net.LinkUp("lo"); err != nil {
		return err
	}
	if err := netquiesce.AddVeth(netquiesce.VethEnd{Net: router, Name: "c0"}, netquiesce.VethEnd{Net: h.net, Name: "up0"}); err != nil {
		return err
	}
	return h.routeUplink(router, "c0")
}

// newHost describes host i of c.
func (c *Cluster) newHost(i int) *Host {
	h := &Host{Index: i, NetNS: NetNSName(c.Name, "h"+strconv.Itoa(i)),
		Addr: fmt.Sprintf("198.18.0.%d/%d", i, Prefix), Bridge: Bridge}
	if c.Routed {
		h.Underlay = underlayAddr(i)
	}
	return h
}

// Underlay returns every host's Underlay address: what `torpor shim
// --vxlan` takes in a routed cluster.
func (c *Cluster) Underlay() []string {
	var out []string
	for _, h := range c.Hosts {
		out = append(out, h.Underlay)
	}
	return out
}

// Host returns host i (1-based).
// OpenCluster takes over the cluster name that another process created
// and left: its fabric and its n hosts, each with its bridge, must all be
// there. Close removes it as if it had been created here; Detach leaves it.
func OpenCluster(name string, n int) (_ *Cluster, err error) {
	if err := checkCluster(name, n); err != nil {
		return nil, fmt.Errorf("open cluster: %w", err)
	}
	c := &Cluster{Name: name}
	defer func() {
		if err != nil {
			c.Detach()
			err = fmt.Errorf("open cluster %s: %w", name, err)
		}
	}()
	if c.fabric, err = netquiesce.OpenNamedNet(NetNSName(name, "fabric")); err != nil {
		return nil, err
	}
	// A routed cluster's fabric is a router, with no bridge.
	if _, err := c.fabric.Link("fab0"); err != nil {
		if _, rerr := c.fabric.Link("h1"); rerr != nil {
			return nil, err
		}
		c.Routed = true
	}
	for i := 1; i <= n; i++ {
		h := c.newHost(i)
		if h.net, err = netquiesce.OpenNamedNet(h.NetNS); err != nil {
			return nil, err
		}
		c.Hosts = append(c.Hosts, h)
		if _, err := h.net.Link(Bridge); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Detach closes this process's handles on the cluster and leaves its
// namespaces in place, for another process to OpenCluster.
func (c *Cluster) Detach() {
	c.closeOnce.Do(func() {
		for _, h := range append(c.Hosts[:len(c.Hosts):len(c.Hosts)], c.Control) {
			if h != nil && h.net != nil {
				h.net.Close()
			}
		}
		if c.fabric != nil {
			c.fabric.Close()
		}
	})
}

func (c *Cluster) Host(i int) *Host { return c.Hosts[i-1] }

// Close removes every namespace of the cluster, including sandboxes' that
// were left behind (their processes must be gone). It is idempotent.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		for _, h := range append(c.Hosts[:len(c.Hosts):len(c.Hosts)], c.Control) {
			if h != nil && h.net != nil {
				h.net.Close()
			}
		}
		if c.fabric != nil {
			c.fabric.Close()
		}
		names, err := c.namespaces()
		if err != nil {
			errs = append(errs, err)
		}
		for _, n := range names {
			if err := netquiesce.DeleteNamedNetns(n); err != nil {
				errs = append(errs, err)
			}
		}
		if err := c.removeMountNSes(); err != nil {
			errs = append(errs, err)
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// namespaces lists /run/netns entries that belong to the cluster.
func (c *Cluster) namespaces() ([]string, error) {
	ents, err := os.ReadDir(netquiesce.NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", netquiesce.NetnsDir, err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "torpor-"+c.Name+"-") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Remove deletes every namespace of the simulated cluster called name, as
// Close does, for a cluster created by another process (`torpor sim down`).
func Remove(name string) error {
	if name == "" || strings.ContainsAny(name, "/ ") {
		return fmt.Errorf("remove cluster: bad name %q", name)
	}
	c := &Cluster{Name: name}
	return c.Close()
}
