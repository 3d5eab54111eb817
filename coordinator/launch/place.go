package launch

import (
	"fmt"
	"strings"
)

// MaxRanks bounds the number of ranks of one job.
const MaxRanks = 1 << 20

// Plan says which ranks run on which host. Each PlanNode becomes one
// job-node (one sandbox with its own pmixd).
type Plan struct {
	Nodes []PlanNode
}

// PlanNode is the ranks of one host, sorted ascending.
type PlanNode struct {
	Host  string
	Ranks []int
	// Oversubscribed says the host got more ranks than its slots (only
	// with --oversubscribe), as Open MPI's mpirun calls a node
	// oversubscribed.
	Oversubscribed bool
}

// NP is the number of ranks in the plan.
func (p Plan) NP() int {
	n := 0
	for _, nd := range p.Nodes {
		n += len(nd.Ranks)
	}
	return n
}

// RankHosts returns the host of every rank, indexed by rank.
func (p Plan) RankHosts() []string {
	out := make([]string, p.NP())
	for _, nd := range p.Nodes {
		for _, r := range nd.Ranks {
			if r >= 0 && r < len(out) {
				out[r] = nd.Host
			}
		}
	}
	return out
}

// String is a short human form, e.g. "node1:[0 1] node2:[2 3]".
func (p Plan) String() string {
	parts := make([]string, len(p.Nodes))
	for i, nd := range p.Nodes {
		parts[i] = fmt.Sprintf("%s:%v", nd.Host, nd.Ranks)
	}
	return strings.Join(parts, " ")
}

// Place maps np ranks onto hosts.
//
// MapBySlot (the default, also for "") fills each host's slots in host order,
// so a host gets a contiguous block of ranks. MapByNode deals ranks one at a
// time to the hosts in order, skipping full hosts. More ranks than slots is an
// ErrNotEnoughSlots error unless oversubscribe; then, as Open MPI does, every
// host is filled and the extra ranks are spread evenly over the hosts (one
// more per host per round, never beyond a host's MaxSlots); both policies give
// a host the same number of ranks then, and differ only in which ranks. With no hosts the plan is the embedded
// default: one host LocalHost with np slots. Hosts with no rank are left out.
func Place(np int, hosts []HostSlots, mapBy string, oversubscribe bool) (Plan, error) {
	if np < 1 || np > MaxRanks {
		return Plan{}, usagef("place %d ranks: the number of ranks must be between 1 and %d", np, MaxRanks)
	}
	if len(hosts) == 0 {
		hosts = []HostSlots{{Host: LocalHost, Slots: np}}
	}
	hosts = MergeHosts(hosts)
	total, capacity := 0, 0 // capacity < 0: unlimited
	for _, h := range hosts {
		if h.Host == "" {
			return Plan{}, hostErrf("place ranks: a host has no name")
		}
		if h.Slots < 1 || h.Slots > maxSlots {
			return Plan{}, hostErrf("place ranks: host %s has %d slots; give between 1 and %d", h.Host, h.Slots, maxSlots)
		}
		if h.MaxSlots != 0 && (h.MaxSlots < h.Slots || h.MaxSlots > maxSlots) {
			return Plan{}, hostErrf("place ranks: host %s has max_slots=%d for slots=%d; max_slots must be at least slots", h.Host, h.MaxSlots, h.Slots)
		}
		total += h.Slots
		switch {
		case h.MaxSlots == 0:
			capacity = -1
		case capacity >= 0:
			capacity += h.MaxSlots
		}
	}
	if np > total {
		if !oversubscribe {
			return Plan{}, fmt.Errorf("place %d ranks: only %d slots (%s): %w; add hosts or slots, lower -n, or pass --oversubscribe",
				np, total, slotSummary(hosts), ErrNotEnoughSlots)
		}
		if capacity >= 0 && np > capacity {
			return Plan{}, fmt.Errorf("place %d ranks: max_slots allows only %d ranks even with --oversubscribe (%s): %w; raise max_slots in the hostfile or add hosts",
				np, capacity, slotSummary(hosts), ErrNotEnoughSlots)
		}
	}
	var ranks [][]int
	switch mapBy {
	case "", MapBySlot:
		ranks = mapBySlot(np, total, hosts)
	case MapByNode:
		ranks = mapByNode(np, total, hosts)
	default:
		return Plan{}, usagef("place ranks: --map-by %s: torpor maps by slot or node", mapBy)
	}
	var p Plan
	for i, h := range hosts {
		if len(ranks[i]) > 0 {
			p.Nodes = append(p.Nodes, PlanNode{Host: h.Host, Ranks: ranks[i], Oversubscribed: len(ranks[i]) > h.Slots})
		}
	}
	return p, nil
}

// hasRoom says whether host h may take one more rank, given how many ranks
// it has and whether slots are all used (then only max_slots limits).
func hasRoom(h HostSlots, have int, slotsFull bool) bool {
	if !slotsFull {
		return have < h.Slots
	}
	return h.MaxSlots == 0 || have < h.MaxSlots
}

// rankCounts is how many ranks each host gets when np > total slots (every
// host full, then one extra rank per host per round, so the extra ranks are
// spread evenly as in Open MPI's balancing, within max_slots), or, when np <=
// total, the free slots of each host (quota for node mapping).
func rankCounts(np, total int, hosts []HostSlots) []int {
	counts := make([]int, len(hosts))
	for i, h := range hosts {
		counts[i] = h.Slots
	}
	for left := np - total; left > 0; {
		for i, h := range hosts {
			if left > 0 && hasRoom(h, counts[i], true) {
				counts[i]++
				left--
			}
		}
	}
	return counts
}

// mapBySlot gives each host a contiguous block of ranks, in host order.
func mapBySlot(np, total int, hosts []HostSlots) [][]int {
	counts := rankCounts(np, total, hosts)
	ranks := make([][]int, len(hosts))
	next := 0
	for i, c := range counts {
		c = min(c, np-next)
		ranks[i] = make([]int, c)
		for j := range c {
			ranks[i][j] = next
			next++
		}
	}
	return ranks
}

// mapByNode deals ranks one at a time to the hosts in order, skipping hosts
// that reached their share (slots, plus the even extra when oversubscribed).
func mapByNode(np, total int, hosts []HostSlots) [][]int {
	counts := rankCounts(np, total, hosts)
	ranks := make([][]int, len(hosts))
	for r := 0; r < np; {
		for i := range hosts {
			if r < np && len(ranks[i]) < counts[i] {
				ranks[i] = append(ranks[i], r)
				r++
			}
		}
	}
	return ranks
}

func slotSummary(hosts []HostSlots) string {
	const show = 4
	parts := make([]string, 0, show+1)
	for i, h := range hosts {
		if i == show {
			parts = append(parts, fmt.Sprintf("and %d more hosts", len(hosts)-show))
			break
		}
		parts = append(parts, fmt.Sprintf("%s:%d", h.Host, h.Slots))
	}
	return strings.Join(parts, ", ")
}
