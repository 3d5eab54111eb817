package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// stressCount reads a run count from the environment (make mpich-stress
// sets 100 and 20); def otherwise.
func stressCount(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a count", name, v)
	}
	return n
}

// spread places np ranks on the first k hosts: "h1:2,h2:1,h3:1".
func spread(np, k int) string {
	var parts []string
	for i := 0; i < k; i++ {
		slots := np / k
		if i < np%k {
			slots++
		}
		parts = append(parts, fmt.Sprintf("h%d:%d", i+1, slots))
	}
	return strings.Join(parts, ",")
}

// mustEnd waits up to limit for `torpor run` of j to end, and fails the
// test unless it ends with status 0.
func (j *mpiJob) mustEnd(limit time.Duration) {
	j.c.t.Helper()
	switch ok, err := j.ended(limit); {
	case !ok:
		j.c.t.Fatalf("job %s did not end within %s (cancelled)\n%s", j.id, limit, lastLines(j.output(), 30))
	case err != nil:
		j.c.t.Fatalf("torpor run of %s: %v\n%s", j.id, err, lastLines(j.output(), 30))
	}
}

// ended waits up to limit for `torpor run` of j to end and returns its
// error; false means it did not (after printing its result: the ranks never
// left MPI_Finalize), and the job is cancelled.
func (j *mpiJob) ended(limit time.Duration) (bool, error) {
	done := make(chan error, 1)
	go func() { done <- j.run.Wait() }()
	select {
	case err := <-done:
		return true, err
	case <-time.After(limit):
		j.c.mustCLI("cancel", j.id)
		<-done
		return false, nil
	}
}

// TestMPICHStress runs jobs of torpor's private MPICH 4.2 one after the
// other, ring and stencil, with 4 and 6 ranks on 1, 2 and 3 hosts in turn:
// every run must finish, with the undisturbed checksum, within a minute of
// printing it (Debian 12's MPICH 4.0.2 hangs in MPI_Finalize in some of
// them: README, "MPICH"). Then jobs that go through a checkpoint, a suspend,
// a restart on other hosts and a migration must finish the same way.
// MPICH_STRESS_RUNS (default 2) runs of each program, MPICH_STRESS_CR
// (default 1) of each through the operations; make mpich-stress runs 100
// and 20.
func TestMPICHStress(t *testing.T) {
	runs := stressCount(t, "MPICH_STRESS_RUNS", 2)
	crs := stressCount(t, "MPICH_STRESS_CR", 1)
	c := newCluster(t, 4)
	progs := []struct {
		name string
		args []string // short runs
		long []string // runs that live through every operation
	}{
		{"ring", []string{"-i", "100", "-m", "4", "-p", "50"}, []string{"-i", "300", "-m", "16", "-s", "20000", "-p", "25"}},
		{"stencil", []string{"-n", "256", "-i", "100", "-p", "50"}, []string{"-n", "256", "-i", "300", "-s", "20000", "-p", "25"}},
	}
	nps := []int{4, 6}
	for _, p := range progs {
		bin := workload(t, p.name+".mpich42")
		want, wantLong := map[int]string{}, map[int]string{}
		for _, np := range nps {
			want[np] = reference(t, "mpirun.mpich", np, bin, p.args...)
			wantLong[np] = reference(t, "mpirun.mpich", np, bin, p.long...)
		}
		finished, right := 0, 0
		for i := 0; i < runs; i++ {
			np, k := nps[i%2], 1+(i/2)%3
			name := fmt.Sprintf("%s-n%d-h%d-%d", p.name, np, k, i)
			j := c.startMPI(nil, nil, name, np, spread(np, k), bin, p.args...)
			got := j.waitOutput(doneRE, 2*time.Minute)[2]
			ok, err := j.ended(time.Minute)
			switch {
			case !ok:
				t.Errorf("%s printed its result but did not end within a minute (cancelled)\n%s", name, lastLines(j.output(), 5))
			case err != nil:
				t.Errorf("%s: torpor run: %v\n%s", name, err, lastLines(j.output(), 10))
			default:
				finished++
			}
			if got == want[np] {
				right++
			} else {
				t.Errorf("%s ended with checksum %s, the undisturbed run with %s", name, got, want[np])
			}
		}
		t.Logf("%s: %d of %d runs finished, %d of %d with the undisturbed checksum", p.name, finished, runs, right, runs)
		passed := 0
		for i := 0; i < crs; i++ {
			np := nps[i%2]
			name := fmt.Sprintf("%s-cr-n%d-%d", p.name, np, i)
			// Two job-nodes on h1,h2; restarted on h3,h4; n0 then moves
			// back to h1.
			j := c.runMPI(name, np, spread(np, 2), bin, p.long...)
			j.progress("started")
			h := lastLines(c.mustCLI("checkpoint", j.id), 1)
			j.progress("checkpoint " + h)
			h = lastLines(c.mustCLI("suspend", j.id), 1)
			c.mustCLI("restart", h, "--host", "n0=h3", "--host", "n1=h4")
			j.progress("restart on h3,h4")
			c.mustCLI("migrate", j.id, "--node", "n0", "--to", "h1")
			j.progress("migrate n0 to h1")
			got := j.waitOutput(doneRE, 3*time.Minute)[2]
			ok, err := j.ended(time.Minute)
			switch {
			case !ok:
				t.Errorf("%s printed its result but did not end within a minute (cancelled)", name)
			case err != nil:
				t.Errorf("%s: torpor run: %v\n%s", name, err, lastLines(j.output(), 10))
			case got != wantLong[np]:
				t.Errorf("%s ended with checksum %s, the undisturbed run with %s", name, got, wantLong[np])
			default:
				passed++
			}
		}
		t.Logf("%s: %d of %d runs through checkpoint, suspend, restart elsewhere and migration finished with the undisturbed checksum", p.name, passed, crs)
	}
}
