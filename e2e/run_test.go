package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// torpor run prints exactly the checksum plain mpirun prints, on one host
// and spread over simulated hosts.
func TestRunMatchesMpirun(t *testing.T) {
	c := newCluster(t, 3)
	progs := map[string][]string{
		"ring.openmpi":    {"-i", "200", "-m", "8", "-p", "100"},
		"stencil.openmpi": {"-n", "256", "-i", "200", "-p", "100"},
	}
	for bin, args := range progs {
		prog := workload(t, bin)
		want := reference(t, "mpirun.openmpi", 4, prog, args...)
		for _, hosts := range []string{"h1:4", "h1:2,h2:2", "h1:2,h2:1,h3:1"} {
			t.Run(bin+"@"+hosts, func(t *testing.T) {
				c.t = t
				name := strings.Split(bin, ".")[0] + fmt.Sprint(len(strings.Split(hosts, ",")))
				j := c.runMPI(name, 4, hosts, prog, args...)
				if got := j.finish(2*time.Minute, ""); got != want {
					t.Fatalf("torpor run on %s: checksum %s, mpirun %s", hosts, got, want)
				}
			})
		}
	}
}

// A rank that calls MPI_Abort(…, 7) ends the job with status 7 and a
// message naming the rank; nothing is left behind (the cluster's leak check).
func TestRunAbort(t *testing.T) {
	c := newCluster(t, 2)
	src, err := filepath.Abs(filepath.Join("..", "pmix", "testdata", "mpitest.c"))
	if err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(c.dir, "mpitest")
	if out, err := exec.Command("mpicc.openmpi", "-O2", "-o", prog, src).CombinedOutput(); err != nil {
		t.Fatalf("build mpitest: %v\n%s", err, out)
	}
	out := filepath.Join(c.dir, "abort.out")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(c.torpor, "run", "--run-dir", c.runDir, "--name", "abort", "-n", "4", "--host", "h1:2,h2:2", prog, "abort", "2", "7")
	cmd.Env = append(os.Environ(), "TORPOR_SOCKET="+c.socket)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		stop(cmd, syscall.SIGTERM)
		t.Fatal("aborted job did not end")
	}
	data, _ := os.ReadFile(out)
	if code := cmd.ProcessState.ExitCode(); code != 7 {
		t.Fatalf("torpor run exit %d, want 7\n%s", code, data)
	}
	if !strings.Contains(string(data), "rank 2") {
		t.Fatalf("output does not name rank 2:\n%s", data)
	}
	t.Logf("exit 7; %s", lastLines(string(data), 2))
}
