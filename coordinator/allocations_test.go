package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/torpor-hpc/torpor/agentapi"
	apiv1 "github.com/torpor-hpc/torpor/api/v1"
)

// fakeAllocations: Slurm job "7" is uid 1000's and runs on h0 and h1.
type fakeAllocations struct{ asked []string }

func (a *fakeAllocations) Hosts(_ context.Context, uid int, id string) ([]string, error) {
	a.asked = append(a.asked, fmt.Sprintf("%d:%s", uid, id))
	if id != "7" || uid != 1000 {
		return nil, fmt.Errorf("Slurm job %s is not yours (uid %d)", id, uid)
	}
	return []string{"h0", "h1"}, nil
}

// relayed is the context of a call a shim relayed for uid, from Slurm job
// slurmJob ("": none).
func relayed(uid int, slurmJob string) context.Context {
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{}})
	md := metadata.Pairs(RelayUIDKey, fmt.Sprint(uid), RelayHostKey, "h0")
	if slurmJob != "" {
		md.Set(SlurmJobKey, slurmJob)
	}
	return metadata.NewIncomingContext(ctx, md)
}

// TestRelayedCalls: a call over mutual TLS is a user's only with a relayed
// uid, and is then authorized as that user's.
func TestRelayedCalls(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	s := &Server{C: f.c}
	jl, err := s.Jobs(relayed(1000, ""), &apiv1.Empty{})
	if err != nil || len(jl.Jobs) != 1 {
		t.Fatalf("owner's jobs: %v %v", jl, err)
	}
	if jl, err := s.Jobs(relayed(1001, ""), &apiv1.Empty{}); err != nil || len(jl.Jobs) != 0 {
		t.Fatalf("another user's list: %v %v", jl, err)
	}
	if _, err := s.Cancel(relayed(1001, ""), &apiv1.JobRef{Job: "job1"}); err == nil {
		t.Fatal("another user cancelled the job through a relay")
	}
	bare := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{}})
	if _, err := s.Jobs(bare, &apiv1.Empty{}); err == nil || !strings.Contains(err.Error(), "--user-socket") {
		t.Fatalf("a shim's own call as a user: %v", err)
	}
	bad := metadata.NewIncomingContext(bare, metadata.Pairs(RelayUIDKey, "-1"))
	if _, err := s.Jobs(bad, &apiv1.Empty{}); err == nil {
		t.Fatal("negative relayed uid accepted")
	}
	// Root relayed from a compute node is not root here.
	if _, err := s.Cancel(relayed(0, ""), &apiv1.JobRef{Job: "job1"}); !errors.Is(agentapi.FromRPC(err), agentapi.ErrPermission) || !strings.Contains(err.Error(), "coordinator's own socket") {
		t.Fatalf("root's cancel relayed by a shim: %v, want ErrPermission", err)
	}
	if j, err := f.c.Job("job1"); err != nil || j.State != StateRunning {
		t.Fatalf("after a relayed root's cancel the job is %v (%v)", j.State, err)
	}
}

// TestAllocations: with Allocations, a user's migration and restart go only
// to the nodes of the user's running Slurm job; root's are not restricted.
func TestAllocations(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	a := &fakeAllocations{}
	s := &Server{C: f.c, Allocations: a}
	ctx := relayed(1000, "7")
	_, err := s.Migrate(relayed(1000, ""), &apiv1.MigrateRequest{Job: "job1", Node: "n2", To: "h1"})
	if err == nil || !strings.Contains(err.Error(), "SLURM_JOB_ID is not set") {
		t.Fatalf("migrate without a Slurm job: %v", err)
	}
	_, err = s.Migrate(ctx, &apiv1.MigrateRequest{Job: "job1", Node: "n2", To: "h3"})
	if err == nil || !strings.Contains(err.Error(), "host h3 is not a node of Slurm job 7 (h0,h1)") {
		t.Fatalf("migrate out of the allocation: %v", err)
	}
	if _, err := s.Migrate(relayed(1000, "8"), &apiv1.MigrateRequest{Job: "job1", Node: "n2", To: "h1"}); err == nil || !strings.Contains(err.Error(), "not yours") {
		t.Fatalf("migrate with another's Slurm job: %v", err)
	}
	if _, err := s.Migrate(ctx, &apiv1.MigrateRequest{Job: "job1", Node: "n2", To: "h1"}); err != nil {
		t.Fatalf("migrate inside the allocation: %v", err)
	}
	if _, err := s.Checkpoint(ctx, &apiv1.CheckpointRequest{Job: "job1", Stop: true}); err != nil {
		t.Fatal(err)
	}
	// n0 h0, n1 h1, n2 h1 now: a restart that puts n1 on h2 is refused
	// before anything is restored, and the job stays restartable.
	_, err = s.Restart(ctx, &apiv1.RestartRequest{Ref: "job1", Hosts: map[string]string{"n1": "h2"}})
	if err == nil || !strings.Contains(err.Error(), "host h2 is not a node of Slurm job 7") {
		t.Fatalf("restart out of the allocation: %v", err)
	}
	if j, _ := f.c.Job("job1"); j.State != StateSuspended {
		t.Fatalf("after a refused restart the job is %s", j.State)
	}
	if _, err := s.Restart(ctx, &apiv1.RestartRequest{Ref: "job1", Hosts: map[string]string{"n2": "h0"}}); err != nil {
		t.Fatalf("restart inside the allocation: %v", err)
	}
	root := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: PeerCred{UID: 0}})
	if _, err := s.Migrate(root, &apiv1.MigrateRequest{Job: "job1", Node: "n2", To: "h3"}); err != nil {
		t.Fatalf("root's migration: %v", err)
	}
	if !slices.Contains(a.asked, "1000:7") || slices.ContainsFunc(a.asked, func(q string) bool { return strings.HasPrefix(q, "0:") }) {
		t.Fatalf("Slurm was asked %v", a.asked)
	}
}

// endingAllocations: Slurm job "7" is uid 1000's on h0 and h1 until ended
// is set; down makes Slurm unreachable.
type endingAllocations struct {
	mu          sync.Mutex
	ended, down bool
}

func (a *endingAllocations) Hosts(_ context.Context, uid int, id string) ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.down:
		return nil, errors.New("squeue: Unable to contact slurm controller")
	case a.ended:
		return nil, fmt.Errorf("%w: Slurm job %s is COMPLETED", ErrAllocationEnded, id)
	}
	return []string{"h0", "h1"}, nil
}

func (a *endingAllocations) set(ended, down bool) {
	a.mu.Lock()
	a.ended, a.down = ended, down
	a.mu.Unlock()
}

// TestWatchAllocations: a running job placed in a Slurm job is checkpointed
// and stopped once that Slurm job no longer runs, and left alone while
// Slurm cannot be asked.
func TestWatchAllocations(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	a := &endingAllocations{}
	s := &Server{C: f.c, Allocations: a}
	// job1 runs on h0, h1, h2; a user's job2 is placed in Slurm job 7.
	spec := f.spec
	spec.ID = "job2"
	spec.Nodes = spec.Nodes[:2]
	for i := range spec.Nodes {
		spec.Nodes[i].IP = fmt.Sprintf("198.19.0.%d/15", 20+i)
		spec.Nodes[i].Hostname = fmt.Sprintf("job2-n%d", i)
	}
	if _, err := s.Run(relayed(1000, "7"), &apiv1.RunRequest{Spec: SpecToPB(spec)}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s.allocs.Range(func(k, v any) bool { s.checkAllocation(ctx, k.(string), v.(placedIn)); return true })
	if j, _ := f.c.Job("job2"); j.State != StateRunning {
		t.Fatalf("job2 is %s while its Slurm job runs", j.State)
	}
	a.set(false, true)
	s.allocs.Range(func(k, v any) bool { s.checkAllocation(ctx, k.(string), v.(placedIn)); return true })
	if j, _ := f.c.Job("job2"); j.State != StateRunning {
		t.Fatalf("job2 is %s after Slurm could not be asked", j.State)
	}
	a.set(true, false)
	s.allocs.Range(func(k, v any) bool { s.checkAllocation(ctx, k.(string), v.(placedIn)); return true })
	j, _ := f.c.Job("job2")
	if j.State != StateSuspended || j.LastCheckpoint == "" {
		t.Fatalf("job2 is %s (checkpoint %q) after its Slurm job ended, want suspended with a checkpoint", j.State, j.LastCheckpoint)
	}
	if j, _ := f.c.Job("job1"); j.State != StateRunning {
		t.Fatalf("root's job1, placed outside Slurm, is %s", j.State)
	}
	n := 0
	s.allocs.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d jobs still watched after the suspend", n)
	}
}
