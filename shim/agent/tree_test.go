package agent

import (
	"fmt"
	"os"
	"sync"
	"testing"

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
