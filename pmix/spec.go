package pmix

import (
	"fmt"

	"github.com/torpor-hpc/torpor/pmix/jobspec"
	"github.com/torpor-hpc/torpor/pmix/libpmix"
)

// The job spec lives in package jobspec, which needs no cgo; these names
// keep pmixd's code short.
type (
	JobSpec = jobspec.JobSpec
	Node    = jobspec.Node
	Wire    = jobspec.Wire
)

const (
	WirePMIx = jobspec.WirePMIx
	WirePMI1 = jobspec.WirePMI1
)

// ErrBadSpec is wrapped by JobSpec validation errors.
var ErrBadSpec = jobspec.ErrBadSpec

// jobMap is the namespace as libpmix registers it.
func jobMap(s JobSpec) libpmix.JobMap {
	m := libpmix.JobMap{Nspace: s.Job, Local: s.NodeIndex, TmpDir: s.JobTmpDir(), NsDir: s.NsDir()}
	for _, nd := range s.Nodes {
		rs := make([]libpmix.Rank, len(nd.Ranks))
		for i, r := range nd.Ranks {
			rs[i] = libpmix.Rank(r)
		}
		m.Nodes = append(m.Nodes, libpmix.NodeMap{Hostname: nd.Hostname, Ranks: rs})
	}
	return m
}

// validate checks s as jobspec does, and the namespace map libpmix will register.
func validate(s JobSpec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if err := jobMap(s).Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadSpec, err)
	}
	return nil
}
