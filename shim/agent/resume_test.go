package agent

import (
	"context"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/netquiesce"
)

// resumeLimit is how soon after a restart or a migration returns every
// job-node must receive a TCP segment again. Without asking for the
// neighbours the lock left unresolved, a restored job-node waits for the
// kernel's own next ARP request, 1 s after the dropped one.
const resumeLimit = 500 * time.Millisecond

// inSegs is the Tcp InSegs counter of job-node node's namespace.
func (e *e2e) inSegs(host, node string) uint64 {
	e.t.Helper()
	n, err := e.agents[host].get(agentapi.NodeRef{Job: "ring", Node: node})
	if err != nil {
		e.t.Fatal(err)
	}
	v, err := netquiesce.TCPInSegs(n.sb.Pid())
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// resumed waits until every job-node's namespace has received a TCP
// segment after the operation that returned at done, and fails if that
// took longer than resumeLimit.
func (e *e2e) resumed(what string, done time.Time) {
	e.t.Helper()
	j, err := e.c.Job("ring")
	if err != nil {
		e.t.Fatal(err)
	}
	base := map[string]uint64{}
	for _, n := range j.Spec.Nodes {
		base[n.Name] = e.inSegs(n.Host, n.Name)
	}
	deadline := done.Add(10 * time.Second)
	for _, n := range j.Spec.Nodes {
		for e.inSegs(n.Host, n.Name) <= base[n.Name] {
			if time.Now().After(deadline) {
				e.t.Fatalf("%s: %s received no TCP segment within 10 s", what, n.Name)
			}
			time.Sleep(time.Millisecond)
		}
	}
	took := time.Since(done)
	e.t.Logf("%s: every job-node received a TCP segment %v after the call returned", what, took)
	if took > resumeLimit {
		e.t.Fatalf("%s: the connections stood still for %v after the call returned, want < %v", what, took, resumeLimit)
	}
}

// A restart and a migration of a 2-job-node ring: the connections move as
// soon as the call returns. Without asking for the neighbours, the moved
// job-node of the migration waits for the kernel's retry (its peer, never
// restored, sends no gratuitous ARP that could resolve its entry); in the
// restart the job-nodes' own announcements resolve the entries of the
// peers already unlocked, so that half fails only for some unlock orders.
func TestRestoredConnectionsResumeAtOnce(t *testing.T) {
	e := newE2E(t, 3, 2)
	ctx := context.Background()
	if err := e.c.Start(ctx, e.spec); err != nil {
		t.Fatal(err)
	}
	e.progress("started")
	h, err := e.c.Checkpoint(ctx, "ring", coordinator.CheckpointOptions{Stop: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Restart(ctx, h, coordinator.RestartOptions{}); err != nil {
		t.Fatal(err)
	}
	e.resumed("restart", time.Now())
	e.progress("restart")
	if err := e.c.Migrate(ctx, "ring", "n1", "h3"); err != nil {
		t.Fatal(err)
	}
	e.resumed("migrate n1 to h3", time.Now())
	e.progress("migrate")
}
