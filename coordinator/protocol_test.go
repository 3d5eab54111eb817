package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
)

type fixture struct {
	c      *Coordinator
	agents map[string]*fakeAgent
	store  *memStore
	spec   JobSpec
}

func newFixture(t *testing.T, hosts ...string) *fixture {
	t.Helper()
	f := &fixture{agents: map[string]*fakeAgent{}, store: newMemStore()}
	agents := map[string]agentapi.Agent{}
	for _, h := range hosts {
		f.agents[h] = newFakeAgent(h)
		agents[h] = f.agents[h]
	}
	c, err := New(Options{StateDir: t.TempDir(), Store: f.store, Agents: agents, Deadlines: testDeadlines()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.events.flush) // its history is written in the background
	f.c = c
	f.spec = JobSpec{ID: "job1", Owner: 1000}
	for i, h := range hosts[:3] {
		f.spec.Nodes = append(f.spec.Nodes, agentapi.NodeSpec{
			Name: fmt.Sprintf("n%d", i), Host: h, IP: fmt.Sprintf("198.19.0.%d/15", 10+i),
			Hostname: fmt.Sprintf("job1-n%d", i), Argv: []string{"/bin/true"},
		})
	}
	if err := c.Start(context.Background(), f.spec); err != nil {
		t.Fatal(err)
	}
	return f
}

// shims returns the fixture's fake shims as a coordinator takes them: for
// a second coordinator on the same state, as one restarted after a crash.
func (f *fixture) shims() map[string]agentapi.Agent {
	agents := map[string]agentapi.Agent{}
	for h, a := range f.agents {
		agents[h] = a
	}
	return agents
}

// testDeadline bounds every phase of a test's coordinator. The fakes answer
// at once, so it only ends a test that went wrong; a loaded machine cannot
// reach it.
const testDeadline = 30 * time.Second

// hangDeadline is the deadline of a phase a fake hangs in: the coordinator's
// timeout is what the test is about, and the other job-nodes' fakes, done in
// microseconds, answer long before it.
const hangDeadline = 500 * time.Millisecond

func testDeadlines() Deadlines {
	d := Deadlines{}
	for p := range DefaultDeadlines {
		d[p] = testDeadline
	}
	return d
}

// hang makes host's fake block in phase until the phase's deadline, which
// it shortens to hangDeadline.
func (f *fixture) hang(host string, phase Phase) {
	f.agents[host].hang[phase] = true
	f.c.deadlines[phase] = hangDeadline
}

// heal clears the faults injected in phase on host and gives the phase its
// test deadline back.
func (f *fixture) heal(host string, phase Phase) {
	delete(f.agents[host].fail, phase)
	delete(f.agents[host].hang, phase)
	f.c.deadlines[phase] = testDeadline
}

// exit makes the fake job-node key ("job/node") on host report that its
// tree exited with code.
func (f *fixture) exit(host, key string, code int) {
	a := f.agents[host]
	a.mu.Lock()
	a.node[key].exited, a.node[key].exitCode = true, code
	a.mu.Unlock()
}

// assertRunning checks that the job is running and that every job-node
// exists, unfrozen and unlocked, on the host the spec names.
func (f *fixture) assertRunning(t *testing.T) {
	t.Helper()
	j, err := f.c.Job(f.spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != StateRunning {
		t.Fatalf("job is %s (%s), want running", j.State, j.Reason)
	}
	for _, n := range j.Spec.Nodes {
		st, ok := f.agents[n.Host].snapshot()[f.spec.ID+"/"+n.Name]
		switch {
		case !ok:
			t.Errorf("job-node %s missing on %s", n.Name, n.Host)
		case st.frozen:
			t.Errorf("job-node %s left frozen", n.Name)
		case st.locked:
			t.Errorf("job-node %s left locked", n.Name)
		}
	}
	total := 0
	for _, a := range f.agents {
		total += len(a.snapshot())
	}
	if total != len(j.Spec.Nodes) {
		t.Errorf("%d job-nodes exist across shims, want %d", total, len(j.Spec.Nodes))
	}
}

func (f *fixture) assertNoPartial(t *testing.T) {
	t.Helper()
	f.store.mu.Lock()
	defer f.store.mu.Unlock()
	if len(f.store.pending) != 0 {
		t.Errorf("partial checkpoints left: %v", f.store.pending)
	}
}

func TestCheckpointSucceeds(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	h, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h != "job1/000001" {
		t.Fatalf("handle = %q", h)
	}
	f.assertRunning(t)
	f.assertNoPartial(t)
	m, err := f.store.Load(h)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Nodes) != 3 || !m.LeaveRunning {
		t.Fatalf("manifest = %+v", m)
	}
	for _, p := range []Phase{PhasePrepare, PhaseFreeze, PhaseDrain, PhaseLock, PhaseDump, PhaseCommit} {
		if _, ok := m.Phases[p]; !ok {
			t.Errorf("manifest lacks timing of %s", p)
		}
	}
	if j, _ := f.c.Job("job1"); j.LastCheckpoint != h {
		t.Errorf("LastCheckpoint = %q", j.LastCheckpoint)
	}
}

// Every phase of a checkpoint, failing or hanging on one job-node, must roll
// the whole job back: running, unlocked, thawed, no partial checkpoint.
func TestCheckpointRollback(t *testing.T) {
	for _, phase := range []Phase{PhasePrepare, PhaseFreeze, PhaseDrain, PhaseLock, PhaseDump} {
		for _, mode := range []string{"error", "timeout"} {
			t.Run(fmt.Sprintf("%s/%s", phase, mode), func(t *testing.T) {
				f := newFixture(t, "h0", "h1", "h2")
				if mode == "error" {
					f.agents["h1"].fail[phase] = errors.New("injected " + string(phase) + " failure")
				} else {
					f.hang("h1", phase)
				}
				_, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{})
				if err == nil {
					t.Fatal("checkpoint succeeded despite the fault")
				}
				var pe *PhaseError
				if !errors.As(err, &pe) || pe.Phase != phase || len(pe.Nodes) != 1 || pe.Nodes[0].Node != "n1" {
					t.Fatalf("error %v does not name phase %s on n1", err, phase)
				}
				if mode == "timeout" && !isTimeout(err) {
					t.Errorf("error %v is not a deadline", err)
				}
				// The failing node is unlocked and thawed once the fault clears.
				f.heal("h1", phase)
				f.assertRunning(t)
				f.assertNoPartial(t)
				if hs, _ := f.store.List("job1"); len(hs) != 0 {
					t.Errorf("checkpoints listed after abort: %v", hs)
				}
				j, _ := f.c.Job("job1")
				if !strings.Contains(j.Reason, "aborted") {
					t.Errorf("job reason %q does not say the checkpoint aborted", j.Reason)
				}
			})
		}
	}
}

// A checkpoint whose directories cannot be made (begin: the checkpoint's,
// nodedir: a job-node's) fails before any job-node is frozen; one that
// cannot be committed fails after the dump. Each leaves the job running and
// no partial checkpoint.
func TestCheckpointCommitFailure(t *testing.T) {
	for _, mode := range []string{"error", "begin", "nodedir"} {
		t.Run(mode, func(t *testing.T) {
			f := newFixture(t, "h0", "h1", "h2")
			enospc := errors.New("no space left on device")
			switch mode {
			case "error":
				f.store.failCommit = enospc
			case "begin":
				f.store.failBegin = enospc
			case "nodedir":
				f.store.failNodeDir = enospc
			}
			_, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{})
			if err == nil || !strings.Contains(err.Error(), "no space left") {
				t.Fatalf("err = %v", err)
			}
			f.assertRunning(t)
			f.assertNoPartial(t)
			if mode != "error" {
				f.assertNeverFrozen(t, "a checkpoint without directories")
			}
		})
	}
}

// A migration whose image directories cannot be made fails before any
// job-node is frozen, and the job runs on where it was.
func TestMigrateNodeDirFailure(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	f.store.failNodeDir = errors.New("no space left on device")
	err := f.c.Migrate(context.Background(), "job1", "n1", "h3")
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("err = %v", err)
	}
	f.assertRunning(t)
	f.assertNoPartial(t)
	f.assertNeverFrozen(t, "a migration without directories")
}

// assertNeverFrozen checks that no shim was asked to prepare or freeze a
// job-node, for what.
func (f *fixture) assertNeverFrozen(t *testing.T, what string) {
	t.Helper()
	for h, a := range f.agents {
		a.mu.Lock()
		n := a.calls[PhasePrepare] + a.calls[PhaseFreeze]
		a.mu.Unlock()
		if n != 0 {
			t.Errorf("%s was asked to prepare or freeze %d times for %s", h, n, what)
		}
	}
}

// A rollback that itself cannot reach a shim leaves the job failed, with a
// reason, never "running" while frozen.
func TestCheckpointRollbackFailure(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	f.agents["h2"].fail[PhaseDump] = errors.New("criu died")
	f.agents["h2"].fail[PhaseThaw] = errors.New("shim gone")
	_, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{})
	if err == nil || !strings.Contains(err.Error(), "rollback failed") {
		t.Fatalf("err = %v", err)
	}
	j, _ := f.c.Job("job1")
	if j.State != StateFailed || j.Reason == "" {
		t.Fatalf("job = %s %q, want failed with a reason", j.State, j.Reason)
	}
	// The other job-nodes were still thawed and unlocked.
	for _, h := range []string{"h0", "h1"} {
		for k, n := range f.agents[h].snapshot() {
			if n.frozen || n.locked {
				t.Errorf("%s on %s left frozen=%v locked=%v", k, h, n.frozen, n.locked)
			}
		}
	}
}

func TestSuspendRestart(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3", "h4", "h5")
	h, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{Stop: true})
	if err != nil {
		t.Fatal(err)
	}
	j, _ := f.c.Job("job1")
	if j.State != StateSuspended {
		t.Fatalf("after suspend job is %s", j.State)
	}
	for _, a := range f.agents {
		if n := len(a.snapshot()); n != 0 {
			t.Fatalf("%s still holds %d job-nodes after suspend", a.host, n)
		}
	}
	if _, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{}); !errors.Is(err, agentapi.ErrState) {
		t.Fatalf("checkpoint of a suspended job: %v, want ErrState", err)
	}
	// Restart on three other hosts.
	res, err := f.c.Restart(context.Background(), "job1", RestartOptions{Hosts: map[string]string{"n0": "h3", "n1": "h4", "n2": "h5"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Checkpoint != h {
		t.Fatalf("restarted from %s, want %s", res.Checkpoint, h)
	}
	for _, host := range []string{"h3", "h4", "h5"} {
		if got := f.agents[host].restores(); len(got) != 1 || got[0] != h {
			t.Fatalf("%s was asked to restore from %q, want [%s]", host, got, h)
		}
	}
	f.assertRunning(t)
	j, _ = f.c.Job("job1")
	if j.Spec.Nodes[0].Host != "h3" || j.Spec.Nodes[2].Host != "h5" {
		t.Fatalf("hosts after restart: %+v", j.Spec.Nodes)
	}
	if _, err := f.c.Restart(context.Background(), "job1", RestartOptions{}); !errors.Is(err, agentapi.ErrState) {
		t.Fatalf("restart of a running job: %v, want ErrState", err)
	}
}

func TestRestartRollback(t *testing.T) {
	for _, phase := range []Phase{PhaseRestore, PhaseUnlock, PhaseThaw} {
		for _, mode := range []string{"error", "timeout"} {
			t.Run(fmt.Sprintf("%s/%s", phase, mode), func(t *testing.T) {
				f := newFixture(t, "h0", "h1", "h2")
				h, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{Stop: true})
				if err != nil {
					t.Fatal(err)
				}
				if mode == "error" {
					f.agents["h1"].fail[phase] = errors.New("injected")
				} else {
					f.hang("h1", phase)
				}
				if _, err := f.c.Restart(context.Background(), h, RestartOptions{}); err == nil {
					t.Fatal("restart succeeded despite the fault")
				}
				j, _ := f.c.Job("job1")
				if j.State != StateSuspended {
					t.Fatalf("job is %s after a failed restart, want suspended", j.State)
				}
				for _, a := range f.agents {
					if n := len(a.snapshot()); n != 0 {
						t.Errorf("%s holds %d half-restored job-nodes", a.host, n)
					}
				}
				f.heal("h1", phase)
				if _, err := f.c.Restart(context.Background(), h, RestartOptions{}); err != nil {
					t.Fatalf("the checkpoint is not restartable after a failed restart: %v", err)
				}
				f.assertRunning(t)
			})
		}
	}
}

func TestRestartVerification(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	good, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bad, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{Stop: true})
	if err != nil {
		t.Fatal(err)
	}
	f.store.corrupt[bad] = true
	_, err = f.c.Restart(context.Background(), bad, RestartOptions{})
	if err == nil || !strings.Contains(err.Error(), "fails verification") || !strings.Contains(err.Error(), "sha256 mismatch") {
		t.Fatalf("restart of a corrupt checkpoint: %v", err)
	}
	if _, err := f.c.Restart(context.Background(), "job1", RestartOptions{}); err == nil {
		t.Fatal("restart by job id without --fallback took a corrupt checkpoint or another one silently")
	}
	res, err := f.c.Restart(context.Background(), "job1", RestartOptions{Fallback: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Checkpoint != good || len(res.Skipped) != 1 || res.Skipped[0] != bad {
		t.Fatalf("fallback = %+v, want %s skipping %s", res, good, bad)
	}
	f.assertRunning(t)
}

func TestMigrate(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	if err := f.c.Migrate(context.Background(), "job1", "n1", "h3"); err != nil {
		t.Fatal(err)
	}
	f.assertRunning(t)
	f.assertNoPartial(t)
	j, _ := f.c.Job("job1")
	if n, _ := j.Spec.Node("n1"); n.Host != "h3" {
		t.Fatalf("n1 on %s after migration", n.Host)
	}
	if len(f.agents["h1"].snapshot()) != 0 {
		t.Fatal("old copy of n1 still on h1")
	}
	if got := f.agents["h3"].restores(); len(got) != 1 || !strings.HasPrefix(got[0], "job1/") {
		t.Fatalf("h3 was asked to restore n1 from %q, want the migration's checkpoint job1/<seq>", got)
	}
	if err := f.c.Migrate(context.Background(), "job1", "n9", "h1"); !errors.Is(err, agentapi.ErrNotFound) {
		t.Fatalf("migrating an unknown node: %v", err)
	}
	if err := f.c.Migrate(context.Background(), "job1", "n1", "nowhere"); !errors.Is(err, agentapi.ErrNotFound) {
		t.Fatalf("migrating to an unknown host: %v", err)
	}
	f.assertRunning(t)
}

func TestMigrateRollback(t *testing.T) {
	type fault struct {
		host  string
		phase Phase
	}
	for _, flt := range []fault{{"h0", PhaseFreeze}, {"h2", PhaseDrain}, {"h1", PhaseLock}, {"h1", PhaseDump}, {"h3", PhaseRestore}} {
		for _, mode := range []string{"error", "timeout"} {
			t.Run(fmt.Sprintf("%s-%s/%s", flt.host, flt.phase, mode), func(t *testing.T) {
				f := newFixture(t, "h0", "h1", "h2", "h3")
				if mode == "error" {
					f.agents[flt.host].fail[flt.phase] = errors.New("injected")
				} else {
					f.hang(flt.host, flt.phase)
				}
				if err := f.c.Migrate(context.Background(), "job1", "n1", "h3"); err == nil {
					t.Fatal("migration succeeded despite the fault")
				}
				f.heal(flt.host, flt.phase)
				f.assertRunning(t)
				f.assertNoPartial(t)
				j, _ := f.c.Job("job1")
				if n, _ := j.Spec.Node("n1"); n.Host != "h1" {
					t.Fatalf("n1 recorded on %s after a failed migration", n.Host)
				}
			})
		}
	}
}

func TestJobEnds(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	f.exit("h1", "job1/n1", 7)
	f.c.pollOnce(context.Background())
	j, _ := f.c.Job("job1")
	if j.State != StateFailed || j.ExitCode != 7 || !strings.Contains(j.Reason, "n1") {
		t.Fatalf("job = %s exit %d %q, want failed 7 naming n1", j.State, j.ExitCode, j.Reason)
	}
	for _, ag := range f.agents {
		if len(ag.snapshot()) != 0 {
			t.Fatal("job-nodes left after the job failed")
		}
	}
}

// TestHostLost: a shim that stops answering fails its job only once it
// has not registered for HostLostAfter, and then no restart is placed on
// its host.
func TestHostLost(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	ctx := context.Background()
	if _, err := f.c.Checkpoint(ctx, "job1", CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	f.c.now = func() time.Time { return now }
	for _, h := range []string{"h0", "h1", "h2", "h3"} {
		f.c.Seen(h)
	}
	a := f.agents["h1"]
	a.mu.Lock()
	a.down = true
	a.mu.Unlock()
	now = now.Add(DefaultHostLostAfter - time.Second)
	f.c.pollOnce(ctx)
	if j, _ := f.c.Job("job1"); j.State != StateRunning {
		t.Fatalf("job %s after its shim was silent for less than %v", j.State, DefaultHostLostAfter)
	}
	now = now.Add(2 * time.Second)
	for _, h := range []string{"h0", "h2", "h3"} {
		f.c.Seen(h)
	}
	f.c.pollOnce(ctx)
	j, _ := f.c.Job("job1")
	if j.State != StateFailed || !strings.Contains(j.Reason, "n1@h1") || !strings.Contains(j.Reason, "h1 has not registered for 1m") {
		t.Fatalf("job %s %q after h1 was silent for %v", j.State, j.Reason, DefaultHostLostAfter+time.Second)
	}
	if _, err := f.c.Restart(ctx, "job1", RestartOptions{}); err == nil || !strings.Contains(err.Error(), "h1 has not registered") {
		t.Fatalf("restart onto the lost host: %v", err)
	}
	if _, err := f.c.Restart(ctx, "job1", RestartOptions{Hosts: map[string]string{"n1": "h3"}}); err != nil {
		t.Fatalf("restart elsewhere: %v", err)
	}
}

func TestAuthorize(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	for uid, want := range map[int]bool{0: true, 1000: true, 1001: false} {
		err := f.c.Authorize("job1", uid)
		if (err == nil) != want {
			t.Errorf("Authorize(uid %d) = %v", uid, err)
		}
		if err != nil && !errors.Is(err, agentapi.ErrPermission) {
			t.Errorf("Authorize error %v is not ErrPermission", err)
		}
	}
}

// A coordinator killed mid-checkpoint comes back, drops the half checkpoint
// and settles the job.
func TestRecoverAfterCrash(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	dir := f.c.stateDir
	// Simulate a crash between dump and commit: freeze+lock happened, a
	// pending checkpoint exists, the registry says checkpointing.
	if _, _, err := f.c.begin("job1", []State{StateRunning}, StateCheckpointing); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Begin("job1"); err != nil {
		t.Fatal(err)
	}
	for _, n := range f.spec.Nodes {
		ref := agentapi.NodeRef{Job: "job1", Node: n.Name}
		_ = f.agents[n.Host].Freeze(context.Background(), ref)
		_ = f.agents[n.Host].Lock(context.Background(), ref)
	}
	c2, err := New(Options{StateDir: dir, Store: f.store, Agents: f.shims()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c2.events.flush) // its history is written in the background
	if j, _ := c2.Job("job1"); j.State != StateCheckpointing {
		t.Fatalf("restarted coordinator lost the job state: %s", j.State)
	}
	if err := c2.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.c = c2
	f.assertRunning(t)
	f.assertNoPartial(t)
}

// TestRecoverFailsVanishedJob: a job recorded running whose job-nodes no
// shim has any more (they died with the process that held them) is failed
// when the coordinator starts, restartable, and the restart brings it back.
func TestRecoverFailsVanishedJob(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	if _, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	// Only the job-node on h1 is gone: one is enough.
	gone := f.spec.Nodes[1]
	f.agents[gone.Host].mu.Lock()
	delete(f.agents[gone.Host].node, "job1/"+gone.Name)
	f.agents[gone.Host].mu.Unlock()
	c2, err := New(Options{StateDir: f.c.stateDir, Store: f.store, Agents: f.shims()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c2.events.flush) // its history is written in the background
	if j, _ := c2.Job("job1"); j.State != StateRunning {
		t.Fatalf("the registry says %s, want running before recovery", j.State)
	}
	if err := c2.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	j, _ := c2.Job("job1")
	if j.State != StateFailed || !strings.Contains(j.Reason, gone.Name+"@"+gone.Host+" no longer exists") || !strings.Contains(j.Reason, "torpor restart job1") {
		t.Fatalf("job is %s (%q), want failed naming %s@%s and the restart", j.State, j.Reason, gone.Name, gone.Host)
	}
	for h, a := range f.agents {
		if n := len(a.snapshot()); n != 0 {
			t.Errorf("%d job-nodes left on %s after the job failed", n, h)
		}
	}
	if _, err := c2.Restart(context.Background(), "job1", RestartOptions{}); err != nil {
		t.Fatal(err)
	}
	f.c = c2
	f.assertRunning(t)
}

func TestValidate(t *testing.T) {
	n := func(name, host, ip string) agentapi.NodeSpec {
		return agentapi.NodeSpec{Name: name, Host: host, IP: ip, Argv: []string{"x"}}
	}
	tests := []struct {
		spec JobSpec
		want string
	}{
		{JobSpec{}, "no id"},
		{JobSpec{ID: "j"}, "no job-nodes"},
		{JobSpec{ID: "j", Nodes: []agentapi.NodeSpec{n("a", "h", "1"), n("a", "h", "2")}}, "two job-nodes called a"},
		{JobSpec{ID: "j", Nodes: []agentapi.NodeSpec{n("a", "h", "1"), n("b", "h", "1")}}, "address 1 to two"},
		{JobSpec{ID: "j", Nodes: []agentapi.NodeSpec{n("a", "", "1")}}, "no host"},
		{JobSpec{ID: "j", Nodes: []agentapi.NodeSpec{{Name: "a", Host: "h"}}}, "no command"},
		{JobSpec{ID: "j", Nodes: []agentapi.NodeSpec{{Name: "a", Host: "h", Argv: []string{"x"}, Keep: []string{"out"}}}}, "--keep \"out\""},
		{JobSpec{ID: "j", Nodes: []agentapi.NodeSpec{{Name: "a", Host: "h", Argv: []string{"x"}, Keep: []string{"/w/../etc"}}}}, "absolute, clean"},
		{JobSpec{ID: "j", Nodes: []agentapi.NodeSpec{{Name: "a", Host: "h", Argv: []string{"x"}, Keep: []string{"/"}}}}, "below /"},
		{JobSpec{ID: "j", Nodes: []agentapi.NodeSpec{{Name: "a", Host: "h", Argv: []string{"x"}, KeepMax: -1}}}, "negative"},
		{JobSpec{ID: "j", Nodes: []agentapi.NodeSpec{{Name: "a", Host: "h", Argv: []string{"x"}, Keep: make([]string, 65)}}}, "at most 64"},
	}
	for _, tt := range tests {
		err := tt.spec.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, agentapi.ErrInvalid) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.spec, err, tt.want)
		}
	}
}

func TestStateMachine(t *testing.T) {
	if CanMove(StateFinished, StateRunning) || CanMove(StateSuspended, StateCheckpointing) || CanMove(StateRunning, StateRestoring) {
		t.Fatal("illegal transition allowed")
	}
	if !CanMove(StateRunning, StateCheckpointing) || !CanMove(StateSuspended, StateRestoring) {
		t.Fatal("legal transition refused")
	}
}

func TestAssignAddresses(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	spec := JobSpec{ID: "job2", Nodes: []agentapi.NodeSpec{
		{Name: "a", Host: "h0", Argv: []string{"x"}},
		{Name: "b", Host: "h1", Argv: []string{"x"}, IP: "198.19.0.2/15"},
		{Name: "c", Host: "h2", Argv: []string{"x"}},
	}}
	if err := f.c.Start(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	j, _ := f.c.Job("job2")
	got := []string{j.Spec.Nodes[0].IP, j.Spec.Nodes[1].IP, j.Spec.Nodes[2].IP}
	// job1 holds 198.19.0.10-12; b asked for .2; a and c get the lowest free ones.
	want := []string{"198.19.0.1/15", "198.19.0.2/15", "198.19.0.3/15"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("addresses = %v, want %v", got, want)
		}
	}
	if j.Spec.Nodes[0].Hostname != "job2-a" {
		t.Errorf("hostname = %q", j.Spec.Nodes[0].Hostname)
	}
	bad := JobSpec{ID: "../etc", Nodes: []agentapi.NodeSpec{{Name: "a", Host: "h0", Argv: []string{"x"}}}}
	if err := f.c.Start(context.Background(), bad); !errors.Is(err, agentapi.ErrInvalid) {
		t.Fatalf("job id ../etc: %v", err)
	}
}

// A restarted coordinator settles an interrupted job only once the shims of
// all its hosts have registered again.
func TestSettleWaitsForShims(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	if _, _, err := f.c.begin("job1", []State{StateRunning}, StateCheckpointing); err != nil {
		t.Fatal(err)
	}
	for _, n := range f.spec.Nodes {
		_ = f.agents[n.Host].Freeze(context.Background(), agentapi.NodeRef{Job: "job1", Node: n.Name})
	}
	c2, err := New(Options{StateDir: f.c.stateDir, Store: f.store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c2.events.flush) // its history is written in the background
	if err := c2.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if j, _ := c2.Job("job1"); j.State != StateCheckpointing {
		t.Fatalf("settled without shims: %s", j.State)
	}
	c2.AddAgent("h0", f.agents["h0"])
	c2.AddAgent("h1", f.agents["h1"])
	c2.settle(context.Background())
	if j, _ := c2.Job("job1"); j.State != StateCheckpointing {
		t.Fatalf("settled with a shim missing: %s", j.State)
	}
	c2.AddAgent("h2", f.agents["h2"])
	c2.settle(context.Background())
	f.c = c2
	f.assertRunning(t)
}

// An operation on a job whose shim is not registered is refused before
// anything is touched: the job stays running.
func TestMissingShimRefusedUpFront(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	c2, err := New(Options{StateDir: f.c.stateDir, Store: f.store, Agents: map[string]agentapi.Agent{"h0": f.agents["h0"], "h1": f.agents["h1"], "h3": f.agents["h3"]}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c2.events.flush) // its history is written in the background
	if _, err := c2.Checkpoint(context.Background(), "job1", CheckpointOptions{}); !errors.Is(err, agentapi.ErrNotFound) || !strings.Contains(err.Error(), "nothing was done") {
		t.Fatalf("checkpoint with h2's shim missing: %v", err)
	}
	if err := c2.Migrate(context.Background(), "job1", "n0", "h3"); !errors.Is(err, agentapi.ErrNotFound) {
		t.Fatalf("migrate with h2's shim missing: %v", err)
	}
	if j, _ := c2.Job("job1"); j.State != StateRunning {
		t.Fatalf("job is %s", j.State)
	}
	for _, a := range f.agents {
		if a.calls[PhaseFreeze] != 0 || a.calls[PhasePrepare] != 0 {
			t.Fatalf("%s was touched", a.host)
		}
	}
}

func TestCancel(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	if err := f.c.Cancel(context.Background(), "job1"); err != nil {
		t.Fatal(err)
	}
	j, _ := f.c.Job("job1")
	if j.State != StateFailed || j.ExitCode != 130 {
		t.Fatalf("after cancel: %s %d", j.State, j.ExitCode)
	}
	for _, a := range f.agents {
		if len(a.snapshot()) != 0 {
			t.Fatal("job-nodes left after cancel")
		}
	}
	if err := f.c.Cancel(context.Background(), "job1"); !errors.Is(err, agentapi.ErrState) {
		t.Fatalf("second cancel: %v", err)
	}
}

// A shim that dies during the dump: the checkpoint is aborted, the job-nodes
// of the other shims run again at once, and the job waits (in checkpointing)
// for the dead shim to answer again; then settle thaws its job-node too and
// the job is running. No checkpoint is left behind.
func TestShimLostDuringDumpIsWaitedFor(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	dead := f.agents["h1"]
	gone := fmt.Errorf("connection refused: %w", agentapi.ErrUnreachable)
	for _, p := range []Phase{PhaseDump, PhaseUnlock, PhaseThaw} {
		dead.fail[p] = gone
	}
	_, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{})
	if err == nil || !strings.Contains(err.Error(), "waiting up to") {
		t.Fatalf("checkpoint with a dead shim: %v", err)
	}
	if j, _ := f.c.Job("job1"); j.State != StateCheckpointing {
		t.Fatalf("job is %s, want checkpointing until the shim answers", j.State)
	}
	for _, h := range []string{"h0", "h2"} {
		for k, n := range f.agents[h].node {
			if n.frozen || n.locked {
				t.Errorf("%s on %s still frozen=%v locked=%v", k, h, n.frozen, n.locked)
			}
		}
	}
	f.assertNoPartial(t)
	f.c.settle(context.Background()) // still dead: nothing changes
	if j, _ := f.c.Job("job1"); j.State != StateCheckpointing {
		t.Fatalf("settled while the shim is dead: %s", j.State)
	}
	dead.mu.Lock()
	dead.fail = map[Phase]error{}
	dead.mu.Unlock()
	f.c.settle(context.Background())
	f.assertRunning(t)
}

// A shim that stays dead past settleTimeout: the job fails (restartable).
func TestShimLostForGoodFailsTheJob(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	now := time.Now()
	f.c.now = func() time.Time { return now }
	gone := fmt.Errorf("connection refused: %w", agentapi.ErrUnreachable)
	for _, p := range []Phase{PhaseDump, PhaseUnlock, PhaseThaw, PhaseDestroy} {
		f.agents["h1"].fail[p] = gone
	}
	if _, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{}); err == nil {
		t.Fatal("checkpoint with a dead shim succeeded")
	}
	now = now.Add(settleTimeout + time.Second)
	f.c.settle(context.Background())
	j, _ := f.c.Job("job1")
	if j.State != StateFailed || !strings.Contains(j.Reason, "restart the job from its last checkpoint") {
		t.Fatalf("job is %s (%s), want failed", j.State, j.Reason)
	}
}

// TestRestartPutsFilesBackFirst: the application's files go back on every
// job-node before any is restored; what a shim moved aside is reported; a
// failure there restores nothing and leaves the job restartable.
func TestRestartPutsFilesBackFirst(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	h, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{Stop: true})
	if err != nil {
		t.Fatal(err)
	}
	f.agents["h1"].fail[PhaseFiles] = errors.New("/w/log is gone since the checkpoint")
	f.agents["h0"].moved = []string{"/w/out/a.torpor-after-000001"}
	_, err = f.c.Restart(context.Background(), "job1", RestartOptions{})
	if err == nil || !strings.Contains(err.Error(), "/w/log is gone") || !strings.Contains(err.Error(), "moved aside, not deleted: /w/out/a.torpor-after-000001") {
		t.Fatalf("restart with a file that cannot be put back: %v", err)
	}
	f.agents["h0"].moved = nil
	for _, a := range f.agents {
		if a.calls[PhaseFiles] != 1 || a.calls[PhaseRestore] != 0 {
			t.Fatalf("%s: %d file and %d restore calls, want 1 and 0", a.host, a.calls[PhaseFiles], a.calls[PhaseRestore])
		}
	}
	if j, _ := f.c.Job("job1"); j.State != StateSuspended {
		t.Fatalf("after the failed restart the job is %s", j.State)
	}
	delete(f.agents["h1"].fail, PhaseFiles)
	f.agents["h2"].moved = []string{"/w/out/step-9.torpor-after-000001"}
	res, err := f.c.Restart(context.Background(), "job1", RestartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Checkpoint != h || len(res.Moved) != 1 || res.Moved[0] != "/w/out/step-9.torpor-after-000001" {
		t.Fatalf("restart result %+v", res)
	}
	f.assertRunning(t)
}

// TestResumeFailureStopsJob: a job that cannot resume after a committed
// checkpoint is suspended (restartable from it); one that cannot resume
// after a migration is failed, with its new placement recorded. Neither is
// left half frozen.
func TestResumeFailureStopsJob(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	f.agents["h1"].fail[PhaseThaw] = errors.New("thaw broke")
	h, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{})
	if err == nil || !strings.Contains(err.Error(), "could not resume and was suspended") {
		t.Fatalf("checkpoint with a broken thaw: %v", err)
	}
	j, _ := f.c.Job("job1")
	if j.State != StateSuspended || j.LastCheckpoint != h || !strings.Contains(j.Reason, "thaw broke") {
		t.Fatalf("after it: %s, last %q (want %s), reason %q", j.State, j.LastCheckpoint, h, j.Reason)
	}
	for _, a := range f.agents {
		if n := len(a.snapshot()); n != 0 {
			t.Fatalf("%s still holds %d job-nodes", a.host, n)
		}
	}

	delete(f.agents["h1"].fail, PhaseThaw)
	if _, err := f.c.Restart(context.Background(), "job1", RestartOptions{}); err != nil {
		t.Fatal(err)
	}
	f.agents["h2"].fail[PhaseThaw] = errors.New("thaw broke again")
	err = f.c.Migrate(context.Background(), "job1", "n1", "h3")
	if err == nil || !strings.Contains(err.Error(), "could not resume and was stopped") {
		t.Fatalf("migration with a broken thaw: %v", err)
	}
	j, _ = f.c.Job("job1")
	if n, _ := j.Spec.Node("n1"); j.State != StateFailed || n.Host != "h3" || !strings.Contains(j.Reason, "thaw broke again") {
		t.Fatalf("after it: %s, n1 on %s, reason %q", j.State, n.Host, j.Reason)
	}
	for _, a := range f.agents {
		if n := len(a.snapshot()); n != 0 {
			t.Fatalf("%s still holds %d job-nodes", a.host, n)
		}
	}
}

// TestPlacementEnv: every job-node is sent (start, files, restore) the
// variables that say where it is in the job, each once, while the spec the
// coordinator keeps (registry, checkpoint) holds only what the job was
// given; a checkpoint whose spec holds them (written by an older torpor)
// restarts with them replaced, not doubled.
func TestPlacementEnv(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2", "h3")
	want := func(user []string, i int) []string {
		return append(slices.Clone(user), "TORPOR_JOB=job1", fmt.Sprintf("TORPOR_NODE=n%d", i), fmt.Sprintf("TORPOR_NODE_INDEX=%d", i),
			"TORPOR_NODES=3", "TORPOR_NODE_IPS=198.19.0.10 198.19.0.11 198.19.0.12")
	}
	check := func(p Phase, host string, i int, user []string) {
		t.Helper()
		got, ok := f.agents[host].sentEnv(p, "job1", fmt.Sprintf("n%d", i))
		if !ok {
			t.Fatalf("%s: n%d was not sent to %s", p, i, host)
		}
		if w := want(user, i); !slices.Equal(got, w) {
			t.Fatalf("%s: n%d was sent the environment %q, want %q", p, i, got, w)
		}
	}
	for i := range 3 {
		check(PhaseStart, fmt.Sprintf("h%d", i), i, nil)
	}
	kept := func(what string, spec JobSpec) {
		t.Helper()
		for _, n := range spec.Nodes {
			if len(n.Env) != 0 {
				t.Fatalf("%s: job-node %s holds the environment %q, want none", what, n.Name, n.Env)
			}
		}
	}
	j, _ := f.c.Job("job1")
	kept("registry", j.Spec)
	data, err := os.ReadFile(filepath.Join(f.c.stateDir, jobsFile))
	if err != nil || bytes.Contains(data, []byte("TORPOR_NODE_IPS")) {
		t.Fatalf("%s holds TORPOR_NODE_IPS (or cannot be read: %v)", jobsFile, err)
	}

	h, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{Stop: true})
	if err != nil {
		t.Fatal(err)
	}
	m, err := f.store.Load(h)
	if err != nil {
		t.Fatal(err)
	}
	kept("checkpoint", m.Spec)
	// As an older torpor kept it: the variables in the spec, one stale.
	old := []string{"A=1", "TORPOR_NODE_INDEX=7", "TORPOR_NODE_IPS=10.0.0.1", "TORPOR_JOB=job1"}
	f.store.mu.Lock()
	for i := range m.Spec.Nodes {
		f.store.committed[h].Spec.Nodes[i].Env = slices.Clone(old)
	}
	f.store.mu.Unlock()
	if _, err := f.c.Restart(context.Background(), h, RestartOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		check(PhaseFiles, fmt.Sprintf("h%d", i), i, []string{"A=1"})
		check(PhaseRestore, fmt.Sprintf("h%d", i), i, []string{"A=1"})
	}
	if err := f.c.Migrate(context.Background(), "job1", "n1", "h3"); err != nil {
		t.Fatal(err)
	}
	check(PhaseRestore, "h3", 1, []string{"A=1"})
}

// TestPruneAfterThaw: old checkpoints are deleted once the job runs again,
// not while it is frozen, and the committed checkpoint is never one of them.
// TestPruneOnceSynced: and only once its images are on disk.
func TestPruneAfterThaw(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	f.c.keep = 1
	pruned := 0
	f.store.onPrune = func(job string) {
		pruned++
		for _, a := range f.agents {
			for name, n := range a.snapshot() {
				if n.frozen || n.locked {
					t.Errorf("prune of %s while %s is frozen=%v locked=%v", job, name, n.frozen, n.locked)
				}
			}
		}
	}
	var last string
	for range 3 {
		h, err := f.c.Checkpoint(context.Background(), "job1", CheckpointOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f.c.WaitBackground() // the prune waits for the images' sync, in the background
		last = h
	}
	if pruned != 3 {
		t.Fatalf("prune ran %d times, want 3", pruned)
	}
	if got, _ := f.store.List("job1"); !slices.Equal(got, []string{last}) {
		t.Fatalf("checkpoints left %v, want [%s]", got, last)
	}
	f.assertRunning(t)
}

// TestPruneOnceSynced: older checkpoints are pruned only after every
// job-node's shim synced the new one's images; a failed sync keeps them; and
// a late sync prunes only up to its own checkpoint, never past a newer one
// not yet synced.
func TestPruneOnceSynced(t *testing.T) {
	f := newFixture(t, "h0", "h1", "h2")
	f.c.keep = 1
	ctx := context.Background()
	ckpt := func() string {
		t.Helper()
		h, err := f.c.Checkpoint(ctx, "job1", CheckpointOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	list := func() []string { got, _ := f.store.List("job1"); return got }

	a := ckpt()
	f.c.WaitBackground()
	for i, h := range []string{"h0", "h1", "h2"} {
		if got, want := f.agents[h].syncs(), []string{fmt.Sprintf("%s n%d", a, i)}; !slices.Equal(got, want) {
			t.Fatalf("%s synced %v, want %v", h, got, want)
		}
	}

	// The older checkpoint is there while the new one's images are synced.
	var seen [][]string
	var mu sync.Mutex
	f.agents["h1"].onSync = func(string) { mu.Lock(); seen = append(seen, list()); mu.Unlock() }
	b := ckpt()
	f.c.WaitBackground()
	f.agents["h1"].onSync = nil
	if len(seen) != 1 || !slices.Equal(seen[0], []string{a, b}) {
		t.Fatalf("checkpoints while %s was synced: %v, want [[%s %s]]", b, seen, a, b)
	}
	if got := list(); !slices.Equal(got, []string{b}) {
		t.Fatalf("after the sync of %s: %v, want [%s]", b, got, b)
	}

	// A shim that cannot sync: nothing is pruned, until a later checkpoint syncs.
	f.agents["h2"].fail[PhaseSync] = errors.New("fsync: input/output error")
	c := ckpt()
	f.c.WaitBackground()
	if got := list(); !slices.Equal(got, []string{b, c}) {
		t.Fatalf("after a failed sync of %s: %v, want [%s %s]", c, got, b, c)
	}
	delete(f.agents["h2"].fail, PhaseSync)
	d := ckpt()
	f.c.WaitBackground()
	if got := list(); !slices.Equal(got, []string{d}) {
		t.Fatalf("after the sync of %s: %v, want [%s]", d, got, d)
	}

	// Two syncs held: e's, released first, must not prune past e while
	// f, newer, is not on disk yet.
	var gmu sync.Mutex
	gates := map[string]chan struct{}{}
	arrived := make(chan string, 2)
	hold := func(ckpt string) {
		gmu.Lock()
		g, ok := gates[ckpt]
		if !ok {
			g = make(chan struct{})
			gates[ckpt] = g
			arrived <- ckpt
		}
		gmu.Unlock()
		<-g
	}
	pruned := make(chan struct{}, 4)
	f.store.onPrune = func(string) { pruned <- struct{}{} }
	for _, ag := range f.agents {
		ag.onSync = hold
	}
	e := ckpt()
	if got := <-arrived; got != e {
		t.Fatalf("first held sync of %s, want %s", got, e)
	}
	g := ckpt()
	if got := <-arrived; got != g {
		t.Fatalf("second held sync of %s, want %s", got, g)
	}
	gmu.Lock()
	close(gates[e])
	gmu.Unlock()
	<-pruned
	if got := list(); !slices.Equal(got, []string{e, g}) {
		t.Fatalf("after the sync of %s with %s not synced: %v, want [%s %s]", e, g, got, e, g)
	}
	gmu.Lock()
	close(gates[g])
	gmu.Unlock()
	f.c.WaitBackground()
	if got := list(); !slices.Equal(got, []string{g}) {
		t.Fatalf("after the sync of %s: %v, want [%s]", g, got, g)
	}
	f.assertRunning(t)
}
