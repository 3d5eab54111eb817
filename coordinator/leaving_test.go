package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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

// TestMigrateRecordsArrivingCopy: from the start of a migration until its
// point of no return the registry on disk names the copy being restored on
// the new host (Job.Arriving) while still placing the job-node on its old
// one; past that point and after the migration nothing is arriving.
func TestMigrateRecordsArrivingCopy(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	var seen []string
	f.c.faults.AfterRestore = func(job, node string) error {
		j := savedJob(t, f.c, job)
		n, _ := j.Spec.Node(node)
		seen = append(seen, fmt.Sprintf("%s on %s, arriving %v", node, n.Host, j.Arriving != nil && j.Arriving.Host == "h3" && j.Arriving.Name == node))
		return nil
	}
	f.c.faults.PastNoReturn = func(job, node string) {
		j := savedJob(t, f.c, job)
		n, _ := j.Spec.Node(node)
		seen = append(seen, fmt.Sprintf("%s on %s, arriving %v", node, n.Host, j.Arriving != nil))
	}
	if err := f.c.Migrate(context.Background(), "job1", "n1", "h3"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"n1 on h1, arriving true", "n1 on h3, arriving false"}; !slices.Equal(seen, want) {
		t.Fatalf("the registry on disk said %q, want %q", seen, want)
	}
	if j := savedJob(t, f.c, "job1"); j.Arriving != nil || j.Leaving != nil || j.State != StateRunning {
		t.Fatalf("registry after the migration: %s, arriving %+v, leaving %+v", j.State, j.Arriving, j.Leaving)
	}
	f.assertRunning(t)

	// A refused migration records nothing.
	if err := f.c.Migrate(context.Background(), "job1", "n1", "h3"); err == nil {
		t.Fatal("a migration to the job-node's own host was not refused")
	}
	if j := savedJob(t, f.c, "job1"); j.Arriving != nil || j.State != StateRunning {
		t.Fatalf("registry after a refused migration: %s, arriving %+v", j.State, j.Arriving)
	}
}

// TestRecoverDestroysArrivingCopy: a coordinator that died after a
// migration's destination restored the job-node, short of the point of no
// return, comes back, destroys the restored copy before it thaws the old
// one, and the job runs where it was; the same migration then succeeds
// (the destination's shim would refuse a second copy).
func TestRecoverDestroysArrivingCopy(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	ctx := context.Background()
	f.c.faults.AfterRestore = func(string, string) error {
		runtime.Goexit() // the coordinator dies here: nothing after runs
		return nil
	}
	died := make(chan struct{})
	go func() {
		defer close(died)
		_ = f.c.Migrate(ctx, "job1", "n1", "h3")
		t.Error("Migrate returned; the fault should have ended it")
	}()
	<-died
	if n := f.agents["h3"].snapshot()["job1/n1"]; !n.exists || !n.locked {
		t.Fatalf("before recovery h3 does not hold a locked restored copy of n1: %+v", n)
	}

	var mu sync.Mutex
	var order []string
	f.agents["h3"].onDestroy = func(agentapi.NodeRef) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, "destroy h3")
		if n := f.agents["h1"].snapshot()["job1/n1"]; !n.locked || !n.frozen {
			order = append(order, "old copy thawed or unlocked first")
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
	mu.Lock()
	got := slices.Clone(order)
	mu.Unlock()
	if !slices.Equal(got, []string{"destroy h3"}) {
		t.Fatalf("recovery did %q, want the restored copy on h3 destroyed while the old copy was still frozen and locked", got)
	}
	f.assertRunning(t) // n1 on h1, and no other copy anywhere
	j := savedJob(t, c2, "job1")
	if n, _ := j.Spec.Node("n1"); n.Host != "h1" || j.Arriving != nil || j.State != StateRunning {
		t.Fatalf("registry after recovery: n1 on %s, %s, arriving %+v", n.Host, j.State, j.Arriving)
	}
	if err := c2.Migrate(ctx, "job1", "n1", "h3"); err != nil {
		t.Fatalf("the same migration after recovery: %v", err)
	}
	f.assertRunning(t)
}

// TestSettleWaitsForArrivingHost: the restored copy's host has not
// registered with the new coordinator yet: the job stays frozen where it
// was until it has, then the copy is destroyed and the job thawed. Only
// after settleTimeout does the job go on without that host.
func TestSettleWaitsForArrivingHost(t *testing.T) {
	for _, late := range []bool{false, true} {
		f := newFixture(t, "h0", "h1", "h2", "h3")
		ctx := context.Background()
		f.c.faults.AfterRestore = func(string, string) error {
			runtime.Goexit()
			return nil
		}
		died := make(chan struct{})
		go func() { defer close(died); _ = f.c.Migrate(ctx, "job1", "n1", "h3") }()
		<-died
		agents := f.shims()
		delete(agents, "h3")
		c2, err := New(Options{StateDir: f.c.stateDir, Store: f.store, Agents: agents, Deadlines: testDeadlines()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c2.events.flush)
		now := time.Now()
		c2.now = func() time.Time { return now }
		if err := c2.Recover(ctx); err != nil {
			t.Fatal(err)
		}
		if j, _ := c2.Job("job1"); j.State != StateMigrating {
			t.Fatalf("settled without the restored copy's host: %s (%s)", j.State, j.Reason)
		}
		if n := f.agents["h1"].snapshot()["job1/n1"]; !n.frozen || !n.locked {
			t.Fatalf("n1 on h1 thawed before the copy on h3 was destroyed: %+v", n)
		}
		if late {
			now = now.Add(settleTimeout + time.Second)
		} else {
			c2.AddAgent("h3", f.agents["h3"])
		}
		c2.settle(ctx)
		f.c = c2
		_, left := f.agents["h3"].snapshot()["job1/n1"]
		if left != late {
			t.Fatalf("late=%v: a copy of n1 left on h3: %v", late, left)
		}
		if late {
			// The job runs on; the copy on the host that never came back is
			// its shim's (logged).
			f.agents["h3"].Destroy(ctx, agentapi.NodeRef{Job: "job1", Node: "n1"})
		}
		f.assertRunning(t)
	}
}

// TestRecoverLeavingPagesLost: a coordinator that died past a post-copy
// migration's point of no return comes back to find the new copy's pages
// lost (its daemon failed, and its shim killed it): the old copy is
// destroyed all the same, never thawed, and the job is failed, restartable
// from its last checkpoint, with nothing of it left on any host.
func TestRecoverLeavingPagesLost(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	ctx := context.Background()
	f.c.faults.PastNoReturn = func(string, string) { runtime.Goexit() }
	died := make(chan struct{})
	go func() { defer close(died); _ = f.c.Migrate(ctx, "job1", "n1", "h3") }()
	<-died
	// What the new copy's shim does when its lazy-pages daemon fails.
	f.agents["h3"].fail[PhasePages] = errors.New("lazy-pages daemon: Remote side closed connection")
	f.agents["h3"].node["job1/n1"].exited, f.agents["h3"].node["job1/n1"].exitCode = true, 137

	var mu sync.Mutex
	var thawedFirst bool
	f.agents["h1"].onDestroy = func(agentapi.NodeRef) {
		mu.Lock()
		defer mu.Unlock()
		if n := f.agents["h1"].snapshot()["job1/n1"]; n.exists && (!n.locked || !n.frozen) {
			thawedFirst = true
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
	mu.Lock()
	defer mu.Unlock()
	if thawedFirst {
		t.Fatal("the old copy on h1 was thawed or unlocked before it was destroyed")
	}
	j, _ := c2.Job("job1")
	if j.State != StateFailed || !strings.Contains(j.Reason, "restart the job from its last checkpoint") {
		t.Fatalf("job after recovery: %s (%s), want failed and restartable", j.State, j.Reason)
	}
	for h, a := range f.agents {
		if left := a.snapshot(); len(left) != 0 {
			t.Errorf("job-nodes left on %s: %v", h, left)
		}
	}
	if j := savedJob(t, c2, "job1"); j.Leaving != nil || j.Arriving != nil {
		t.Fatalf("registry after recovery: leaving %+v, arriving %+v", j.Leaving, j.Arriving)
	}
}
