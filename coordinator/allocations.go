package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/torpor-hpc/torpor/agentapi"
)

// SlurmJobKey is the metadata key a client sets to the Slurm job it runs in
// ($SLURM_JOB_ID). The coordinator believes nothing of it but the number: it
// asks Slurm whose job that is, whether it runs and on which nodes.
const SlurmJobKey = "torpor-slurm-job"

// ErrAllocationEnded is what Allocations.Hosts wraps when the batch job is
// not running (pending after a requeue, ended, unknown to Slurm): its nodes
// are not the user's now. Other errors (Slurm cannot be asked) say nothing
// about the job.
var ErrAllocationEnded = errors.New("the Slurm job does not run")

// Allocations say which hosts a user holds. A coordinator with Allocations
// (`torpor coordinator --slurm`) places a user's job-nodes only on hosts of
// that user's running batch job; root is not restricted.
type Allocations interface {
	// Hosts returns the hosts of batch job id when it is running and is
	// uid's, and an error that says why not otherwise.
	Hosts(ctx context.Context, uid int, id string) ([]string, error)
}

// placedIn is the Slurm job a user's job was placed in.
type placedIn struct {
	uid      int
	slurmJob string
}

// checkHosts refuses hosts outside the caller's allocation, when the
// coordinator places jobs by allocation.
func (s *Server) checkHosts(ctx context.Context, uid int, hosts []string) error {
	if s.Allocations == nil || uid == 0 {
		return nil
	}
	ids := callerSlurmJob(ctx)
	if len(ids) != 1 || ids[0] == "" {
		return fmt.Errorf("%w: this coordinator places a user's job-nodes only on the nodes of the user's running Slurm job (torpor coordinator --slurm): run torpor inside a batch script or an salloc (SLURM_JOB_ID is not set)", agentapi.ErrPermission)
	}
	have, err := s.Allocations.Hosts(ctx, uid, ids[0])
	if err != nil {
		return fmt.Errorf("%w: %v", agentapi.ErrPermission, err)
	}
	if why := outside(hosts, have, ids[0]); why != "" {
		return fmt.Errorf("%w: %s: place job-nodes only there", agentapi.ErrPermission, why)
	}
	return nil
}

// callerSlurmJob is the Slurm job the caller says it runs in.
func callerSlurmJob(ctx context.Context) []string {
	md, _ := metadata.FromIncomingContext(ctx)
	return md.Get(SlurmJobKey)
}

// placed remembers the Slurm job whose nodes a user's job was just placed
// on (checkHosts passed), for WatchAllocations.
func (s *Server) placed(ctx context.Context, uid int, job string) {
	if s.Allocations == nil || uid == 0 {
		return
	}
	if ids := callerSlurmJob(ctx); len(ids) == 1 {
		s.allocs.Store(job, placedIn{uid: uid, slurmJob: ids[0]})
	}
}

// WatchAllocations looks every interval at the running jobs placed in a
// Slurm job (Run, Restart and Migrate checked their hosts) and checkpoints
// and stops each whose Slurm job no longer runs, or whose job-nodes are no
// longer all on its nodes: a batch script killed before `torpor batch`
// could do so (SIGKILL, a KillWait too short) would otherwise leave
// job-nodes on nodes Slurm gives to other jobs. A job whose checkpoint
// fails is cancelled (its earlier checkpoints are kept). Nothing is done
// while Slurm cannot be asked. It returns when ctx ends.
func (s *Server) WatchAllocations(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.allocs.Range(func(k, v any) bool {
			s.checkAllocation(ctx, k.(string), v.(placedIn))
			return ctx.Err() == nil
		})
	}
}

func (s *Server) checkAllocation(ctx context.Context, job string, p placedIn) {
	j, err := s.C.Job(job)
	if err != nil || j.State == StateFinished || j.State == StateFailed || j.State == StateSuspended {
		s.allocs.CompareAndDelete(job, p) // a restart places it again
		return
	}
	if j.State != StateRunning {
		return // an operation is under way: look again next time
	}
	log := s.C.log.With("job", job, "slurm_job", p.slurmJob)
	hosts, err := s.Allocations.Hosts(ctx, p.uid, p.slurmJob)
	var why string
	switch {
	case errors.Is(err, ErrAllocationEnded):
		why = err.Error()
	case err != nil:
		log.Warn("cannot ask Slurm about a job's allocation; looking again later", "err", err)
		return
	default:
		if why = outside(specHosts(j.Spec.Nodes), hosts, p.slurmJob); why == "" {
			return
		}
	}
	log.Warn("the job's Slurm allocation is gone: checkpointing and stopping the job", "why", why)
	_, err = s.C.CheckpointDetails(ctx, job, CheckpointOptions{Stop: true})
	if errors.Is(err, agentapi.ErrBusy) || errors.Is(err, agentapi.ErrState) {
		// Another operation got there first (torpor batch's own
		// checkpoint, usually): look again next time.
		log.Info("the job is busy; looking again later", "err", err)
		return
	}
	if err != nil {
		log.Error("checkpoint and stop failed: cancelling the job, its earlier checkpoints are kept", "err", err)
		if err := s.C.Cancel(ctx, job); err != nil {
			log.Error("cancel failed", "err", err)
		}
	}
	s.allocs.CompareAndDelete(job, p)
}

// outside names the first of hosts that is not a node of Slurm job id
// (nodes), or is "" when all are.
func outside(hosts, nodes []string, id string) string {
	for _, h := range hosts {
		if !slices.Contains(nodes, h) {
			return fmt.Sprintf("host %s is not a node of Slurm job %s (%s)", h, id, strings.Join(nodes, ","))
		}
	}
	return ""
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
