package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/netquiesce"
)

// Post-copy migration of a running Open MPI ring job-node (docs/protocol.md,
// "Post-copy migration"): the job runs on the destination before the
// job-node's memory has arrived, and ends with the undisturbed checksum.
func TestPostCopyMigration(t *testing.T) {
	c := newCluster(t, 4)
	c.criuLogsOnFailure("pc", "n1")
	want := faultReference(t)
	j := c.faultJob("pc")
	out := c.mustCLI("migrate", j.id, "--node", "n1", "--to", "h4", "--postcopy", "always", "--json")
	var m jsonMigrate
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &m); err != nil {
		t.Fatalf("migrate --json: %v\n%s", err, out)
	}
	if m.Mode != "post-copy" || m.DowntimeNS <= 0 || m.LastPageNS < m.DowntimeNS {
		t.Fatalf("migrate: %+v\n%s", m, out)
	}
	t.Logf("post-copy: downtime %v, last page after %v, %d bytes of images, %d bytes of private memory",
		time.Duration(m.DowntimeNS).Round(time.Millisecond), time.Duration(m.LastPageNS).Round(time.Millisecond), m.Bytes, m.MemoryBytes)
	if !strings.Contains(c.logs["shim-h4"].String(), "every page arrived") {
		t.Fatal("the shim of h4 never said every page arrived")
	}
	if _, err := os.Stat(c.nodeCgroup("h2", j.id, "n1")); !os.IsNotExist(err) {
		t.Fatalf("the source's copy of n1 is still on h2 (%v)", err)
	}
	j.progress("after the post-copy migration")
	j.finishWith(want, "after a post-copy migration")
}

// waitChecksum waits with `torpor wait` until job, whose `torpor run` is
// gone, finishes, and returns the checksum its rank 0 printed in n0's output
// file.
func (c *cluster) waitChecksum(job string) string {
	c.t.Helper()
	if out, code := c.cli("wait", job); code != 0 || !strings.Contains(out, "finished") {
		c.t.Fatalf("torpor wait of %s: exit %d\n%s", job, code, out)
	}
	// n0's output file, in the run directory, or on an isolated cluster in
	// the run directory of the host n0 ended on: the one with the result.
	runDirs := []string{c.runDir}
	if c.mountNS != nil {
		runDirs = nil
		for i := range c.sim.Hosts {
			runDirs = append(runDirs, c.hostDir(fmt.Sprintf("h%d", i+1), "run"))
		}
	}
	var seen []string
	for _, d := range runDirs {
		rank0 := filepath.Join(d, "jobs", job, "n0.out")
		data, err := os.ReadFile(rank0)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			c.t.Fatal(err)
		}
		if m := doneRE.FindStringSubmatch(string(data)); m != nil {
			return m[2]
		}
		seen = append(seen, rank0+":\n"+lastLines(string(data), 10))
	}
	c.t.Fatalf("no result of %s in n0's output (%s):\n%s", job, strings.Join(runDirs, ", "), strings.Join(seen, "\n"))
	return ""
}

// criuLogsOnFailure shows the end of CRIU's logs of a migrated job-node
// (dump and page server on the source, lazy-pages daemon and restore on the
// destination) when the test fails.
func (c *cluster) criuLogsOnFailure(job, node string) {
	t := c.t
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		dirs := map[string]string{"": c.runDir}
		for h := range c.mountNS { // an isolated cluster's hosts' own
			dirs[h] = c.hostDir(h, "run")
		}
		for h, d := range dirs {
			for _, f := range []string{"dump/" + job + "/" + node + "/dump.log", "restore/" + job + "/" + node + "/lazy-pages.log", "restore/" + job + "/" + node + "/restore.log"} {
				data, err := os.ReadFile(filepath.Join(d, f))
				if err == nil {
					t.Logf("---- %s %s ----\n%s", h, f, lastLines(string(data), 30))
				}
			}
		}
	})
}

// jsonMigrate is what `torpor migrate --json` prints.
type jsonMigrate struct {
	Mode        string `json:"mode"`
	DowntimeNS  int64  `json:"downtime_ns"`
	LastPageNS  int64  `json:"last_page_ns"`
	Bytes       int64  `json:"bytes"`
	MemoryBytes int64  `json:"memory_bytes"`
	Streamed    bool   `json:"streamed"`
}

// The source's page server dies while a post-copy migration's pages are in
// flight (docs/protocol.md, "Post-copy migration"; docs/faults.md): the
// destination shim runs with fault.StallPagesInFlight, which relays its
// lazy-pages daemon's connection to the source and holds it from CRIU's
// post-restore notification on (the daemon has then fetched only the pages
// the restore touched) until the source closes it; once the shim says the
// job-node is thawed with its pages held, the test kills the source's
// CRIU, which serves the pages. The job must fail with the documented
// reason, leave nothing behind, and `torpor restart JOB` must bring it back
// from its last checkpoint with the undisturbed result.
func TestPostCopySourceDiesInFlight(t *testing.T) {
	c := newCluster(t, 4)
	c.startShim(4, "--fault", string(fault.StallPagesInFlight))
	c.criuLogsOnFailure("pcd", "n1")
	want := faultReference(t)
	// No --restart-on-failure: the restart below is the test's own.
	j := c.startMPI(nil, nil, "pcd", 3, "h1:1,h2:1,h3:1", workload(t, "ring.openmpi"), faultRingArgs...)
	j.progress("started")
	h := lastLines(c.mustCLI("checkpoint", j.id), 1)
	source := filepath.Join(netquiesce.NetnsDir, c.sim.Host(2).NetNS+"-"+j.id+"-n1")

	type result struct {
		out  string
		code int
		err  error
	}
	migrated := make(chan result, 1)
	go func() {
		cmd := exec.Command(c.torpor, "migrate", j.id, "--node", "n1", "--to", "h4", "--postcopy", "always")
		cmd.Env = append(os.Environ(), "TORPOR_SOCKET="+c.socket)
		out, err := cmd.CombinedOutput()
		r := result{out: string(out), err: err}
		if ee, ok := err.(*exec.ExitError); ok {
			r.code, r.err = ee.ExitCode(), nil
		}
		migrated <- r
	}()
	if !c.waitLog("shim-h4", "FAULT INJECTION: "+string(fault.StallPagesInFlight)+": job-node thawed with its pages held", 2*time.Minute) {
		select {
		case r := <-migrated:
			t.Fatalf("the migration ended (exit %d, %v) before its destination was thawed with pages missing: the fault point did not strike\n%s", r.code, r.err, r.out)
		default:
			t.Fatal("the destination never said it was thawed with its pages held")
		}
	}
	// The job runs, n1 on h4 without all of its memory: the source's page
	// server dies now.
	pids := criuIn(t, source)
	if len(pids) == 0 {
		t.Fatalf("no CRIU serving pages in %s", source)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill the source's CRIU %d: %v", pid, err)
		}
	}
	t.Logf("killed the source's page server (CRIU %v) after the thaw", pids)
	var r result
	select {
	case r = <-migrated:
	case <-time.After(3 * time.Minute):
		t.Fatal("the migration did not end after its source died")
	}
	if r.err != nil {
		t.Fatalf("torpor migrate: %v", r.err)
	}
	if r.code == 0 && strings.Contains(c.logs["shim-h4"].String(), "every page arrived") {
		t.Fatalf("every page had reached the destination before the source died: the test did not strike in flight\n%s", r.out)
	}
	if r.code == 0 || !strings.Contains(r.out, "lost its pages in flight") || !strings.Contains(r.out, "stopped coming from the source") || !strings.Contains(r.out, "torpor restart "+j.id) {
		t.Fatalf("migration whose source died with pages in flight: exit %d\n%s", r.code, r.out)
	}
	t.Logf("failed as documented: %s", lastLines(strings.TrimSpace(r.out), 1))
	for _, s := range []string{"the source closed the page server connection; dropping the pages in flight",
		"post-copy migration lost its source with pages in flight; killed the job-node"} {
		if !strings.Contains(c.logs["shim-h4"].String(), s) {
			t.Fatalf("the shim of h4 never said %q", s)
		}
	}
	if st := c.jobState(j.id); st != "failed" {
		t.Fatalf("job is %s after losing its pages in flight, want failed", st)
	}
	// Nothing of the job is left: no job-node (cgroup), network namespace
	// or CRIU (the source's page server, the destination's daemon) on any
	// host.
	for _, host := range []string{"h1", "h2", "h3", "h4"} {
		for _, node := range []string{"n0", "n1", "n2"} {
			if _, err := os.Stat(c.nodeCgroup(host, j.id, node)); !os.IsNotExist(err) {
				t.Fatalf("%s of the failed job is still on %s (%v)", node, host, err)
			}
		}
	}
	ents, err := os.ReadDir(netquiesce.NetnsDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), "-"+j.id+"-") {
			t.Fatalf("network namespace %s of the failed job is left", e.Name())
		}
	}
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !os.IsNotExist(err) {
			t.Fatalf("the source's CRIU %d is still there", pid)
		}
	}
	if daemons := criuWith(t, "/"+j.id+"/"); len(daemons) > 0 {
		t.Fatalf("CRIU of the failed job still runs: %v", daemons)
	}

	// Its `torpor run` ends with the job's failure.
	if err := j.run.Wait(); err == nil || !strings.Contains(j.output(), "lost its pages in flight") {
		t.Fatalf("torpor run of the failed job: %v\n%s", err, lastLines(j.output(), 10))
	}

	out := c.mustCLI("restart", j.id)
	if !strings.Contains(out, h) {
		t.Fatalf("restarted not from its last checkpoint %s:\n%s", h, out)
	}
	t.Logf("restarted: %s", lastLines(strings.TrimSpace(out), 1))
	if got := c.waitChecksum(j.id); got != want {
		t.Fatalf("checksum %s after a restart from the post-copy failure, undisturbed %s", got, want)
	}
	t.Logf("job %s: checksum %s after its post-copy source died with pages in flight and a restart = undisturbed", j.id, want)
}

// criuIn lists the CRIU processes in the network namespace at nsPath.
func criuIn(t *testing.T, nsPath string) []int {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(nsPath, &want); err != nil {
		t.Fatalf("network namespace: %v", err)
	}
	var out []int
	for _, pid := range criuPIDs(t) {
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			out = append(out, pid)
		}
	}
	return out
}

// criuWith lists the CRIU processes whose command line contains s.
func criuWith(t *testing.T, s string) []int {
	t.Helper()
	var out []int
	for _, pid := range criuPIDs(t) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), s) {
			out = append(out, pid)
		}
	}
	return out
}

// criuPIDs lists the processes running a CRIU binary.
func criuPIDs(t *testing.T) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && filepath.Base(exe) == "criu" {
			out = append(out, pid)
		}
	}
	return out
}
