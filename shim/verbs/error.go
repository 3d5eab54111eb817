package verbs

import (
	"errors"
	"fmt"
	"strings"
)

// ErrVerbsInUse is matched (errors.Is) by every [*Error].
var ErrVerbsInUse = errors.New("job holds RDMA verbs resources")

// Error is returned by [Check] when processes of the job hold RDMA
// resources. Its message is written for the user who asked for the
// checkpoint.
type Error struct {
	Findings []Finding
}

// maxListed bounds the processes named in the message; Findings has all.
const maxListed = 16

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("cannot checkpoint: the job holds RDMA verbs resources (InfiniBand/RoCE/Omni-Path)\n")
	b.WriteString("  CRIU cannot checkpoint RDMA verbs resources: queue pairs, completion queues and memory\n")
	b.WriteString("  registrations live in the HCA (the network adapter), not in process memory, so they can\n")
	b.WriteString("  be neither saved nor recreated with the same QP numbers and keys on restore.\n")
	b.WriteString("  held by:\n")
	byPID := map[int][]Finding{}
	var order []int
	for _, f := range e.Findings {
		if _, ok := byPID[f.PID]; !ok {
			order = append(order, f.PID)
		}
		byPID[f.PID] = append(byPID[f.PID], f)
	}
	for i, pid := range order {
		if i == maxListed {
			fmt.Fprintf(&b, "    ... and %d more processes\n", len(order)-maxListed)
			break
		}
		fs := byPID[pid]
		fmt.Fprintf(&b, "    pid %d (%s)", pid, fs[0].Comm)
		if fs[0].Rank >= 0 {
			fmt.Fprintf(&b, " rank %d", fs[0].Rank)
		}
		b.WriteString(":")
		for j, f := range fs {
			if j > 0 {
				b.WriteString(";")
			}
			if f.FD >= 0 {
				fmt.Fprintf(&b, " fd %d -> %s (%s)", f.FD, f.Path, f.Kind)
			} else {
				fmt.Fprintf(&b, " mapping %s of %s (%s)", f.Mapping, f.Path, f.Kind)
			}
		}
		b.WriteString("\n")
	}
	b.WriteString(`  what to do: restart the job so that it runs over TCP or shared memory, then checkpoint it:
    Open MPI 4.x:  mpirun --mca pml ob1 --mca btl tcp,self,vader --mca osc ^ucx ...
                   (or OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self,vader OMPI_MCA_osc=^ucx; --mca btl ^openib
                   alone only drops the openib BTL, not UCX; Open MPI 5 calls vader "sm")
    UCX (Open MPI pml ucx, MPICH ch4:ucx):  UCX_TLS=tcp,sm,self
    MPICH ch4:ofi (libfabric):              FI_PROVIDER=tcp
    TCP over IPoIB (e.g. --mca btl_tcp_if_include ib0) still uses the InfiniBand fabric and can be
    checkpointed; see docs/infiniband.md`)
	return b.String()
}

// Is makes errors.Is(err, ErrVerbsInUse) true.
func (e *Error) Is(target error) bool { return target == ErrVerbsInUse }

// Check scans pids and returns an [*Error] naming what they hold when any of
// them holds RDMA resources, nil when none does.
func Check(pids []int) error { return Scanner{}.Check(pids) }

// Check is [Check] with this scanner's roots.
func (s Scanner) Check(pids []int) error {
	found, err := s.Scan(pids)
	if err != nil {
		return fmt.Errorf("check job for rdma resources: %w", err)
	}
	if len(found) > 0 {
		return &Error{Findings: found}
	}
	return nil
}
