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
	f.crashMigrating(t, true)
	order := f.watchDestroys("h1")
	f.agents["h3"].onPages = func() { order.add("pages h3") }
	c2 := f.recoverCoordinator(t, nil, nil)
	if got := order.list(); !slices.Equal(got, []string{"pages h3", "destroy h1"}) {
		t.Fatalf("recovery did %q, want the new copy's pages waited for, then the old copy destroyed while still frozen and locked", got)
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

// crashMigrating runs a migration of n1 (on h1) to h3 on f's coordinator,
// which dies in it (runtime.Goexit: nothing after runs, as in a crash):
// past the point of no return, or else once h3 restored n1.
func (f *fixture) crashMigrating(t *testing.T, pastNoReturn bool) {
	t.Helper()
	if pastNoReturn {
		f.c.faults.PastNoReturn = func(string, string) { runtime.Goexit() }
	} else {
		f.c.faults.AfterRestore = func(string, string) error { runtime.Goexit(); return nil }
	}
	died := make(chan struct{})
	go func() {
		defer close(died)
		_ = f.c.Migrate(context.Background(), "job1", "n1", "h3")
		t.Error("Migrate returned; the coordinator should have died in it")
	}()
	<-died
}

// recoverCoordinator starts a second coordinator on f's state, as one
// restarted after a crash, with agents (f's every shim when nil) and clock
// now (the real one when nil), and runs Recover. It becomes f.c.
func (f *fixture) recoverCoordinator(t *testing.T, agents map[string]agentapi.Agent, now func() time.Time) *Coordinator {
	t.Helper()
	if agents == nil {
		agents = f.shims()
	}
	c2, err := New(Options{StateDir: f.c.stateDir, Store: f.store, Agents: agents, Deadlines: testDeadlines()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c2.events.flush)
	if now != nil {
		c2.now = now
	}
	if err := c2.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.c = c2
	return c2
}

// steps is a list of what fakes were asked to do, in order.
type steps struct {
	mu sync.Mutex
	l  []string
}

func (s *steps) add(step string) { s.mu.Lock(); s.l = append(s.l, step); s.mu.Unlock() }

func (s *steps) list() []string { s.mu.Lock(); defer s.mu.Unlock(); return slices.Clone(s.l) }

// watchDestroys records "destroy HOST" for each Destroy on host, followed
// by "n1 on h1 thawed or unlocked" if the old copy of a migration of n1
// from h1 was no longer frozen and locked at that moment.
func (f *fixture) watchDestroys(host string) *steps {
	s := &steps{}
	f.agents[host].onDestroy = func(agentapi.NodeRef) {
		s.add("destroy " + host)
		if n, ok := f.agents["h1"].snapshot()["job1/n1"]; ok && (!n.locked || !n.frozen) {
			s.add("n1 on h1 thawed or unlocked")
		}
	}
	return s
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
	f.crashMigrating(t, false)
	if n := f.agents["h3"].snapshot()["job1/n1"]; !n.exists || !n.locked {
		t.Fatalf("before recovery h3 does not hold a locked restored copy of n1: %+v", n)
	}
	order := f.watchDestroys("h3")
	c2 := f.recoverCoordinator(t, nil, nil)
	if got := order.list(); !slices.Equal(got, []string{"destroy h3"}) {
		t.Fatalf("recovery did %q, want the restored copy on h3 destroyed while the old copy was still frozen and locked", got)
	}
	f.assertRunning(t) // n1 on h1, and no other copy anywhere
	j := savedJob(t, c2, "job1")
	if n, _ := j.Spec.Node("n1"); n.Host != "h1" || j.Arriving != nil || j.State != StateRunning {
		t.Fatalf("registry after recovery: n1 on %s, %s, arriving %+v", n.Host, j.State, j.Arriving)
	}
	if err := c2.Migrate(context.Background(), "job1", "n1", "h3"); err != nil {
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
		f.crashMigrating(t, false)
		agents := f.shims()
		delete(agents, "h3")
		now := time.Now()
		c2 := f.recoverCoordinator(t, agents, func() time.Time { return now })
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
		c2.settle(context.Background())
		if _, left := f.agents["h3"].snapshot()["job1/n1"]; left != late {
			t.Fatalf("late=%v: a copy of n1 left on h3: %v", late, left)
		}
		if late {
			// The job runs on; the copy on the host that never came back is
			// its shim's (logged).
			f.agents["h3"].Destroy(context.Background(), agentapi.NodeRef{Job: "job1", Node: "n1"})
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
	f.crashMigrating(t, true)
	// What the new copy's shim does when its lazy-pages daemon fails.
	f.agents["h3"].fail[PhasePages] = errors.New("lazy-pages daemon: Remote side closed connection")
	f.exit("h3", "job1/n1", 137)
	order := f.watchDestroys("h1")
	c2 := f.recoverCoordinator(t, nil, nil)
	if got := order.list(); len(got) == 0 || got[0] != "destroy h1" || slices.Contains(got, "n1 on h1 thawed or unlocked") {
		t.Fatalf("recovery did %q, want the old copy on h1 destroyed while still frozen and locked", got)
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
