package coordinator

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/torpor-hpc/torpor/agentapi"
)

// savedJob reads job id as the registry on disk has it.
func savedJob(t *testing.T, c *Coordinator, id string) Job {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(c.stateDir, jobsFile))
	if err != nil {
		t.Fatal(err)
	}
	var jobs map[string]*Job
	if err := json.Unmarshal(data, &jobs); err != nil {
		t.Fatal(err)
	}
	j, ok := jobs[id]
	if !ok {
		t.Fatalf("the registry on disk has no job %s", id)
	}
	return *j
}

// TestMigrateDestroysOldCopyAfterResume: a stop-and-copy migration thaws
// the job before it destroys the old copy, which stays frozen and locked
// until then; the new placement and the old copy are on disk before the
// old copy goes, and the old copy is gone when Migrate returns.
func TestMigrateDestroysOldCopyAfterResume(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	var mu sync.Mutex
	var problems []string
	var destroyed bool
	f.agents["h1"].onDestroy = func(ref agentapi.NodeRef) {
		mu.Lock()
		defer mu.Unlock()
		destroyed = true
		for host, key := range map[string]string{"h0": "job1/n0", "h3": "job1/n1", "h2": "job1/n2"} {
			if n, ok := f.agents[host].snapshot()[key]; !ok || n.frozen || n.locked {
				problems = append(problems, key+" on "+host+" is not running unfrozen and unlocked as the old copy goes")
			}
		}
		if n := f.agents["h1"].snapshot()["job1/n1"]; !n.frozen || !n.locked {
			problems = append(problems, "the old copy on h1 was not frozen and locked until it went")
		}
		j := savedJob(t, f.c, "job1")
		if n, _ := j.Spec.Node("n1"); n.Host != "h3" || j.Leaving == nil || j.Leaving.Host != "h1" || j.Leaving.Name != "n1" {
			problems = append(problems, "the registry on disk does not place n1 on h3 with its old copy on h1 leaving")
		}
	}
	if err := f.c.Migrate(context.Background(), "job1", "n1", "h3"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !destroyed {
		t.Fatal("the old copy on h1 was never destroyed")
	}
	for _, p := range problems {
		t.Error(p)
	}
	f.assertRunning(t)
	if _, ok := f.agents["h1"].snapshot()["job1/n1"]; ok {
		t.Fatal("old copy of n1 still on h1 after Migrate returned")
	}
	if j := savedJob(t, f.c, "job1"); j.Leaving != nil || j.State != StateRunning {
		t.Fatalf("registry after the migration: %s, leaving %+v", j.State, j.Leaving)
	}
}

// TestRecoverDestroysLeavingCopy: a coordinator that died after a
// migration's point of no return (new copy restored, placement saved with
// the old copy leaving, nothing unlocked yet) comes back, lets the new copy
// finish fetching its pages, destroys the old copy, and runs the job where
// it moved; the old copy is never thawed.
func TestRecoverDestroysLeavingCopy(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	ctx := context.Background()
	spec, _, err := f.c.begin("job1", []State{StateRunning}, StateMigrating)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range spec.Nodes {
		ref := agentapi.NodeRef{Job: "job1", Node: n.Name}
		_ = f.agents[n.Host].Freeze(ctx, ref)
		_ = f.agents[n.Host].Lock(ctx, ref)
	}
	moving, _ := spec.Node("n1")
	old := *moving
	moving.Host = "h3"
	if err := f.agents["h3"].Restore(ctx, "job1", *moving, agentapi.RestoreRequest{Checkpoint: "job1/000001"}); err != nil {
		t.Fatal(err)
	}
	f.c.leave("job1", spec, old)

	var mu sync.Mutex
	var order []string
	f.agents["h3"].onPages = func() { mu.Lock(); order = append(order, "pages h3"); mu.Unlock() }
	f.agents["h1"].onDestroy = func(agentapi.NodeRef) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, "destroy h1")
		if n := f.agents["h1"].snapshot()["job1/n1"]; !n.locked || !n.frozen {
			order = append(order, "old copy thawed or unlocked")
		}
	}
	c2, err := New(Options{StateDir: f.c.stateDir, Store: f.store, Agents: f.shims(), Deadlines: testDeadlines()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c2.events.flush)
	if err := c2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	f.c = c2
	f.spec = spec
	mu.Lock()
	got := slices.Clone(order)
	mu.Unlock()
	if !slices.Equal(got, []string{"pages h3", "destroy h1"}) {
		t.Fatalf("recovery did %q, want the new copy's pages waited for, then the old copy destroyed", got)
	}
	if _, ok := f.agents["h1"].snapshot()["job1/n1"]; ok {
		t.Fatal("the old copy of n1 is still on h1")
	}
	f.assertRunning(t)
	j, _ := c2.Job("job1")
	if n, _ := j.Spec.Node("n1"); n.Host != "h3" || j.Leaving != nil {
		t.Fatalf("after recovery n1 is on %s, leaving %+v", n.Host, j.Leaving)
	}
	if j := savedJob(t, c2, "job1"); j.Leaving != nil || j.State != StateRunning {
		t.Fatalf("registry after recovery: %s, leaving %+v", j.State, j.Leaving)
	}
}
