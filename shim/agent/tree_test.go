package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/internal/testutil"
)

// TestJobDirsConcurrent: job-nodes of one job on one host make and remove
// their directories and records below their job's directories at the same
// time (a checkpoint's copies, restores' scratch directories, migration
// images, records). None fails because another just removed the job's
// directory, empty for an instant (CI once failed a restart so: "mkdir
// .../fetching/cyc0/000007: no such file or directory"), and nothing is
// left once all are gone.
func TestJobDirsConcurrent(t *testing.T) {
	testutil.RequireRoot(t, "image directories must be root's")
	a := imageAgent(t, "h1", nil)
	const rounds = 200
	nodes := []string{"n0", "n1", "n2", "n3"}
	errs := make(chan error, len(nodes))
	var wg sync.WaitGroup
	for _, name := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- churn(a, name, rounds)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	top, _ := a.scratchTop()
	for _, d := range []string{a.fetchingDir(a.storeRoot()), top, a.recordDir(), a.migrationsDir()} {
		ents, err := os.ReadDir(d)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if len(ents) != 0 {
			t.Errorf("%s still holds %d entries, the first %s", d, len(ents), ents[0].Name())
		}
	}
}

// churn makes and removes job-node name's directories of job j, rounds
// times, and returns the first failure.
func churn(a *Agent, name string, rounds int) error {
	n := &node{job: "j", spec: agentapi.NodeSpec{Name: name}}
	for i := range rounds {
		dir, err := a.storeDir("j/000001", name)
		if err != nil {
			return err
		}
		work := a.fetchingDir(dir)
		if err := a.makeInStore(work, freshDir(work)); err != nil {
			return fmt.Errorf("%s, round %d: checkpoint copy: %w", name, i, err)
		}
		a.dropWork(work)
		scratch, err := a.scratchDir("j", name)
		if err != nil {
			return fmt.Errorf("%s, round %d: %w", name, i, err)
		}
		a.removeScratch(scratch)
		if _, err := a.freshMigrationDir("j", name, "in"); err != nil {
			return fmt.Errorf("%s, round %d: %w", name, i, err)
		}
		a.dropMigrationImages("j", name)
		if err := a.saveRecord(n); err != nil {
			return fmt.Errorf("%s, round %d: %w", name, i, err)
		}
		a.removeRecord("j", name)
	}
	return nil
}

// watchExits watches a's exits until the test ends; it returns once a
// listens.
func watchExits(t *testing.T, a *Agent) <-chan agentapi.NodeRef {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan agentapi.NodeRef, 4)
	listening := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		a.WatchExits(ctx, func() { close(listening) }, func(r agentapi.NodeRef) { got <- r })
	}()
	<-listening
	return got
}

// awaitExit waits for the exit of ref told by exits, and checks its status.
func awaitExit(t *testing.T, a *Agent, exits <-chan agentapi.NodeRef, ref agentapi.NodeRef, code int) {
	t.Helper()
	select {
	case r := <-exits:
		if r != ref {
			t.Fatalf("told of the exit of %v, want %v", r, ref)
		}
	case <-time.After(time.Minute):
		t.Fatalf("not told of the exit of %v within a minute", ref)
	}
	st, err := a.Status(context.Background(), ref)
	if err != nil || !st.Exited || st.ExitCode != code {
		t.Fatalf("status once told of the exit: %+v, %v; want exited %d", st, err, code)
	}
}

// TestWatchExits: a shim tells of a job-node's exit as it happens (Exits),
// when it started the job-node and when it adopted it from an earlier shim;
// a destroy is no exit to tell of.
func TestWatchExits(t *testing.T) {
	h := newOneHost(t)
	ctx := context.Background()
	dir := t.TempDir()
	stop := filepath.Join(dir, "stop")
	a, ref := h.startTicker(ctx, stop)
	exits := watchExits(t, a)
	waitTicks(t, a, "job", "n0", 2)
	mustOK(t, "write stop", os.WriteFile(stop, nil, 0o644))
	awaitExit(t, a, exits, ref, 7)
	mustOK(t, "destroy", a.Destroy(ctx, ref))

	stop2 := filepath.Join(dir, "stop2")
	mustOK(t, "start", a.Start(ctx, "job", tickerSpec("n1", 2, stop2)))
	ref2 := agentapi.NodeRef{Job: "job", Node: "n1"}
	waitTicks(t, a, "job", "n1", 2)
	a.Release()
	b := h.agent(nil)
	if n, err := b.Adopt(ctx); err != nil || n != 1 {
		t.Fatalf("adopt: %d job-nodes, %v", n, err)
	}
	exits = watchExits(t, b)
	mustOK(t, "write stop", os.WriteFile(stop2, nil, 0o644))
	awaitExit(t, b, exits, ref2, 7)

	stop3 := filepath.Join(dir, "stop3")
	ref3 := agentapi.NodeRef{Job: "job", Node: "n2"}
	mustOK(t, "start", b.Start(ctx, "job", tickerSpec("n2", 3, stop3)))
	mustOK(t, "destroy", b.Destroy(ctx, ref3))
	mustOK(t, "destroy", b.Destroy(ctx, ref2))
	select {
	case r := <-exits:
		t.Fatalf("told of an exit after destroys: %v", r)
	default:
	}
}
