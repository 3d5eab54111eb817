package coordinator

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/torpor-hpc/torpor/agentapi"
)

// SlurmJobKey is the metadata key a client sets to the Slurm job it runs in
// ($SLURM_JOB_ID). The coordinator believes nothing of it but the number: it
// asks Slurm whose job that is, whether it runs and on which nodes.
const SlurmJobKey = "torpor-slurm-job"

// Allocations say which hosts a user holds. A coordinator with Allocations
// (`torpor coordinator --slurm`) places a user's job-nodes only on hosts of
// that user's running batch job; root is not restricted.
type Allocations interface {
	// Hosts returns the hosts of batch job id when it is running and is
	// uid's, and an error that says why not otherwise.
	Hosts(ctx context.Context, uid int, id string) ([]string, error)
}

// checkHosts refuses hosts outside the caller's allocation, when the
// coordinator places jobs by allocation.
func (s *Server) checkHosts(ctx context.Context, uid int, hosts []string) error {
	if s.Allocations == nil || uid == 0 {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	ids := md.Get(SlurmJobKey)
	if len(ids) != 1 || ids[0] == "" {
		return fmt.Errorf("%w: this coordinator places a user's job-nodes only on the nodes of the user's running Slurm job (torpor coordinator --slurm): run torpor inside a batch script or an salloc (SLURM_JOB_ID is not set)", agentapi.ErrPermission)
	}
	have, err := s.Allocations.Hosts(ctx, uid, ids[0])
	if err != nil {
		return fmt.Errorf("%w: %v", agentapi.ErrPermission, err)
	}
	for _, h := range hosts {
		if !slices.Contains(have, h) {
			return fmt.Errorf("%w: host %s is not a node of Slurm job %s (%s): place job-nodes only there", agentapi.ErrPermission, h, ids[0], strings.Join(have, ","))
		}
	}
	return nil
}

// specHosts lists the hosts of a job's job-nodes.
func specHosts(nodes []agentapi.NodeSpec) []string {
	var hs []string
	for _, n := range nodes {
		if !slices.Contains(hs, n.Host) {
			hs = append(hs, n.Host)
		}
	}
	return hs
}
