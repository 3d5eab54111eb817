package coordinator

import (
	"fmt"
	"net/netip"

	"github.com/torpor-hpc/torpor/agentapi"
)

// DefaultNodeNet is where job-node addresses come from when nothing is
// configured: the simulated cluster's job-node range (simhost), which is
// on-link with its hosts through DefaultNodeBits.
var DefaultNodeNet = netip.MustParsePrefix("198.19.0.0/16")

// DefaultNodeBits is the prefix length job-node addresses carry by default:
// 198.18.0.0/15 holds simulated hosts and job-nodes in one L2 domain.
const DefaultNodeBits = 15

// assignAddresses gives every job-node without an address the lowest free
// address of the coordinator's job-node range, and every job-node without a
// hostname "<job>-<node>". Addresses of every known job are taken.
func (c *Coordinator) assignAddresses(spec *JobSpec) error {
	used := map[netip.Addr]bool{}
	for _, j := range c.jobs {
		if j.State == StateFinished {
			continue
		}
		for _, n := range j.Spec.Nodes {
			if p, err := netip.ParsePrefix(n.IP); err == nil {
				used[p.Addr()] = true
			}
		}
	}
	for _, n := range spec.Nodes {
		if p, err := netip.ParsePrefix(n.IP); err == nil {
			used[p.Addr()] = true
		}
	}
	next := c.nodeNet.Masked().Addr().Next()
	for i := range spec.Nodes {
		n := &spec.Nodes[i]
		if n.Hostname == "" {
			n.Hostname = spec.ID + "-" + n.Name
		}
		if n.IP != "" {
			if _, err := netip.ParsePrefix(n.IP); err != nil {
				return fmt.Errorf("%w: job-node %s: address %q is not ADDR/PREFIX", agentapi.ErrInvalid, n.Name, n.IP)
			}
			continue
		}
		for used[next] || !c.nodeNet.Contains(next) {
			if !c.nodeNet.Contains(next) {
				return fmt.Errorf("%w: no free job-node address left in %s", agentapi.ErrInvalid, c.nodeNet)
			}
			next = next.Next()
		}
		n.IP = netip.PrefixFrom(next, c.nodeBits).String()
		used[next] = true
	}
	return nil
}
