package pmix

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// MPICH ranks over PMI-1: the same MPI program as the Open MPI tests.

func TestRunMPICHOneNode(t *testing.T) {
	requireRootAndMPI(t)
	prog := buildMPIProgram(t, "mpicc.mpich")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cfg := oneNodeConfig(t, "t5mpich", 4, prog)
	cfg.Spec.Wire = WirePMI1
	n := startNode(t, ctx, cfg, 0, nil)
	res := n.wait(t)
	if res.Code != 0 {
		t.Fatalf("Run = %d, %q", res.Code, res.Err)
	}
	wantRanksOK(t, n.out.String(), "t5mpich")
	if res.Fences < 2 {
		t.Errorf("%d PMI barriers went through the upstream, want >= 2 (MPI_Init, MPI_Finalize)", res.Fences)
	}
	assertNoChildren(t)
}

func TestRunMPICHAbort(t *testing.T) {
	requireRootAndMPI(t)
	prog := buildMPIProgram(t, "mpicc.mpich")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cfg := oneNodeConfig(t, "t5abort", 4, prog, "abort", "2", "7")
	cfg.Spec.Wire = WirePMI1
	res := startNode(t, ctx, cfg, 0, nil).wait(t)
	if res.Code != 7 || res.Rank != 2 || res.Cause != "aborted" {
		t.Errorf("result %+v: want code 7, rank 2 aborted", res)
	}
	assertNoChildren(t)
}

// TestRunMPICHTwoNodes is opt-in: the cross-node KVS exchange works every
// time (all ranks pass MPI_Init, the allgather and the ring), but in about
// half the runs one MPICH 4.0.2 rank spins in ucp_worker_progress inside
// MPI_Finalize (closing its UCX 1.13 TCP endpoints needs its peers' progress)
// while its peers already block in the finalize PMI barrier_in: a deadlock of
// MPICH/UCX over TCP, not of the PMI server. Run it with
// TORPOR_TEST_MPICH_MULTINODE=1.
func TestRunMPICHTwoNodes(t *testing.T) {
	requireRootAndMPI(t)
	if os.Getenv("TORPOR_TEST_MPICH_MULTINODE") == "" {
		t.Skip("set TORPOR_TEST_MPICH_MULTINODE=1: MPICH 4.0.2 + UCX TCP can hang in MPI_Finalize across sandboxes (see comment)")
	}
	prog := buildMPIProgram(t, "mpicc.mpich")
	dir := t.TempDir()
	rl := newRelay(t, filepath.Join(dir, "relay.sock"))
	job := "t5two"
	hosts := []string{"torpor-m0", "torpor-m1"}
	nodes := []Node{{Hostname: hosts[0], Ranks: []int{0, 1}}, {Hostname: hosts[1], Ranks: []int{2, 3}}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	procs := startRelayedNodes(t, ctx, dir, hosts, func(i int) JobSpec {
		return JobSpec{Job: job, Wire: WirePMI1, Nodes: nodes, NodeIndex: i, Argv: []string{prog},
			// UCX finds the other sandbox on the same kernel and tries shared
			// memory through /proc/<pid> of another PID namespace: TCP only.
			ExtraEnv: []string{"UCX_TLS=tcp,self", "UCX_NET_DEVICES=lo"},
			TmpDir:   filepath.Join(dir, fmt.Sprintf("node%d", i)), TagOutput: true, KillGrace: time.Second}
	})
	out := waitNodes(t, procs)
	for r := 0; r < 4; r++ {
		want := fmt.Sprintf("rank %d of 4 ok sum=10 left=%d host=%s", r, (r+3)%4, hosts[r/2])
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if rl.nFence.Load() < 2 {
		t.Errorf("%d PMI barriers relayed between nodes, want >= 2", rl.nFence.Load())
	}
	assertNoChildren(t)
}
