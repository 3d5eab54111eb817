package coordinator

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
)

// held is what host's fake shim would say it holds as it registers.
func (f *fixture) held(host string) []agentapi.NodeRef {
	var refs []agentapi.NodeRef
	for k := range f.agents[host].snapshot() {
		job, node, _ := strings.Cut(k, "/")
		refs = append(refs, agentapi.NodeRef{Job: job, Node: node})
	}
	return refs
}

// register is host's shim registering: the coordinator destroys its
// strays, in the background, waited for here.
func (f *fixture) register(host string) {
	f.c.DestroyStrays(host, f.held(host))
	f.c.WaitBackground()
}

// strayEvents are the stray-destroyed events of the history, as
// "<node>@<host>: <reason>".
func (f *fixture) strayEvents() []string {
	evs, _ := f.c.History(EventFilter{})
	var out []string
	for _, e := range evs {
		if e.Type == EventStrayDestroyed {
			out = append(out, e.Node+"@"+e.FromHost+": "+e.Reason)
		}
	}
	return out
}

// strayFromRollback makes a stray: a migration of n1 to h3 fails after its
// restore while h3's shim fails destroys, so the rollback leaves a frozen,
// locked copy of n1 there. h3 still fails destroys afterwards.
func (f *fixture) strayFromRollback(t *testing.T) {
	t.Helper()
	f.c.faults.AfterRestore = func(job, node string) error { return errors.New("injected after restore") }
	f.agents["h3"].fail[PhaseDestroy] = errors.New("injected: shim cut off")
	if err := f.c.Migrate(context.Background(), "job1", "n1", "h3"); err == nil {
		t.Fatal("migration succeeded despite the fault")
	}
	f.c.faults.AfterRestore = nil
	if st, ok := f.agents["h3"].snapshot()["job1/n1"]; !ok || !st.locked {
		t.Fatalf("no locked copy of n1 left on h3 (%v, %+v): the test does not make the stray it is about", ok, st)
	}
}

// TestStrayFromFailedRollback: a migration that fails after its new copy
// was restored, with the destination's shim failing the rollback's
// destroy, leaves the job running on its old hosts and a frozen, locked
// copy on the destination. Its shim's next registration has it destroyed;
// the job's own job-nodes are untouched, before and after.
func TestStrayFromFailedRollback(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	f.strayFromRollback(t)
	// Registrations of the job's own hosts destroy nothing.
	for _, h := range []string{"h0", "h1", "h2"} {
		f.register(h)
	}
	if ev := f.strayEvents(); len(ev) != 0 {
		t.Fatalf("strays destroyed on the job's own hosts: %q", ev)
	}
	// While h3 still fails destroys, the copy stays, and the job with it
	// is free again afterwards.
	f.register("h3")
	if _, ok := f.agents["h3"].snapshot()["job1/n1"]; !ok {
		t.Fatal("the stray is gone though its shim failed the destroy")
	}
	f.heal("h3", PhaseDestroy)
	f.register("h3")
	f.assertRunning(t) // every job-node on its host, and no other copy
	if ev := f.strayEvents(); len(ev) != 1 || ev[0] != "n1@h3: the job runs it on h1" {
		t.Fatalf("stray events %q, want the one of n1 on h3", ev)
	}
	// The job is free: the migration that failed now succeeds.
	if err := f.c.Migrate(context.Background(), "job1", "n1", "h3"); err != nil {
		t.Fatal(err)
	}
	f.assertRunning(t)
}

// TestMigrateOverStray: a migration onto a host that still holds a stray
// copy of the job-node (a rollback's destroy that did not reach it, and no
// registration of that host since) destroys the copy and restores the
// job-node there at once. While the copy cannot be destroyed, the migration
// fails saying so and the job runs on where it was.
func TestMigrateOverStray(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	ctx := context.Background()
	f.strayFromRollback(t)
	err := f.c.Migrate(ctx, "job1", "n1", "h3")
	if err == nil || !strings.Contains(err.Error(), "a copy of job-node n1 is already on h3 and could not be destroyed") {
		t.Fatalf("migration over a stray that cannot be destroyed: %v", err)
	}
	j, _ := f.c.Job("job1")
	if n1, _ := j.Spec.Node("n1"); j.State != StateRunning || n1.Host != "h1" {
		t.Fatalf("job %s with n1 on %s, want running on h1", j.State, n1.Host)
	}
	f.heal("h3", PhaseDestroy)
	if err := f.c.Migrate(ctx, "job1", "n1", "h3"); err != nil {
		t.Fatal(err)
	}
	f.assertRunning(t) // n1 on h3, and no other copy
	j, _ = f.c.Job("job1")
	if n1, _ := j.Spec.Node("n1"); n1.Host != "h3" {
		t.Fatalf("n1 is on %s, want h3", n1.Host)
	}
	if ev := f.strayEvents(); len(ev) != 1 || ev[0] != "n1@h3: it was in the way of the migration from h1" {
		t.Fatalf("stray events %q", ev)
	}
}

// TestStrayOfEndedJob: a job that ended while one of its hosts did not
// answer keeps its job-node there until that host's shim registers.
func TestStrayOfEndedJob(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	f.exit("h1", "job1/n1", 7)
	f.agents["h2"].fail[PhaseDestroy] = errors.New("injected: shim cut off")
	f.c.pollOnce(context.Background())
	if j, _ := f.c.Job("job1"); j.State != StateFailed {
		t.Fatalf("job is %s, want failed", j.State)
	}
	if _, ok := f.agents["h2"].snapshot()["job1/n2"]; !ok {
		t.Fatal("n2 is gone from h2 though its shim failed the destroy: the test does not make the stray it is about")
	}
	f.heal("h2", PhaseDestroy)
	f.register("h2")
	if got := f.agents["h2"].snapshot(); len(got) != 0 {
		t.Fatalf("h2 still holds %v", got)
	}
	if ev := f.strayEvents(); len(ev) != 1 || ev[0] != "n2@h2: the job is failed" {
		t.Fatalf("stray events %q", ev)
	}
}

// TestStrayLeftAlone: what a shim holds is not destroyed when the registry
// cannot say it is a stray: a job it does not know, a job-node name the job
// does not have, a job an operation holds (judged again at the next
// registration), a migration's other copy (Job.Arriving, settled by
// recovery).
func TestStrayLeftAlone(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	h3 := f.agents["h3"]
	h3.mu.Lock()
	h3.node["other/n0"] = &fakeNode{exists: true}
	h3.node["job1/n7"] = &fakeNode{exists: true}
	h3.node["job1/n1"] = &fakeNode{exists: true, frozen: true, locked: true}
	h3.mu.Unlock()
	// An operation holds the job.
	f.c.mu.Lock()
	f.c.busy["job1"] = true
	f.c.mu.Unlock()
	f.register("h3")
	if got := len(h3.snapshot()); got != 3 {
		t.Fatalf("h3 holds %d job-nodes after a registration while job1 is busy, want 3", got)
	}
	// A migration's restored copy, with the job left migrating.
	f.c.mu.Lock()
	delete(f.c.busy, "job1")
	j := f.c.jobs["job1"]
	j.State = StateMigrating
	j.Arriving = &agentapi.NodeSpec{Name: "n1", Host: "h3"}
	f.c.mu.Unlock()
	f.register("h3")
	if got := len(h3.snapshot()); got != 3 {
		t.Fatalf("h3 holds %d job-nodes after a registration during a migration, want 3", got)
	}
	// Running again: only n1 is a stray.
	f.c.mu.Lock()
	j.State, j.Arriving = StateRunning, nil
	f.c.mu.Unlock()
	f.register("h3")
	got := h3.snapshot()
	if _, ok := got["job1/n1"]; ok || len(got) != 2 {
		t.Fatalf("h3 holds %v, want other/n0 and job1/n7 only", got)
	}
	if ev := f.strayEvents(); len(ev) != 1 || ev[0] != "n1@h3: the job runs it on h1" {
		t.Fatalf("stray events %q", ev)
	}
}
