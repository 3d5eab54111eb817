package coordinator

import (
	"fmt"
	"sort"

	"github.com/torpor-hpc/torpor/agentapi"
)

// placeRestart decides which host each job-node of spec is restored on:
// the one hosts names for it (RestartOptions.Hosts: job-node name -> host),
// else the host it was checkpointed on. Every resulting host must be one
// known accepts (the coordinator's: a shim is registered for it). A name in
// hosts that is no job-node of spec is an error (agentapi.ErrNotFound);
// errors come in job-node name order, so the same request always gets the
// same one. It returns a new slice; spec is not changed.
func placeRestart(spec JobSpec, hosts map[string]string, known func(host string) error) ([]agentapi.NodeSpec, error) {
	nodes := append([]agentapi.NodeSpec(nil), spec.Nodes...)
	index := make(map[string]int, len(nodes))
	for i, n := range nodes {
		index[n.Name] = i
	}
	names := make([]string, 0, len(hosts))
	for name := range hosts {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		i, ok := index[name]
		if !ok {
			return nil, fmt.Errorf("%w: job %s has no job-node %q", agentapi.ErrNotFound, spec.ID, name)
		}
		nodes[i].Host = hosts[name]
	}
	for _, n := range nodes {
		if err := known(n.Host); err != nil {
			return nil, fmt.Errorf("job-node %s: %w", n.Name, err)
		}
	}
	return nodes, nil
}
