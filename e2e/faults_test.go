package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The fault-injection harness: each scenario injects one failure into a
// running Open MPI job (ring, 3 ranks, one per simulated host) and asserts the
// outcome documented for it — in fault.Catalog for the named points, in each
// test's comment otherwise. Every job must end with the undisturbed checksum.
// Elsewhere: the coordinator's death between dump and commit and a tampered
// image are in TestDaemonsEndToEnd; a drain that never completes (a peer
// that never ACKs) is shim/agent's TestDrainOutsideJobAborts.

var faultRingArgs = []string{"-i", "600", "-m", "8", "-s", "20000", "-p", "10"}

// faultJob starts a ring job of 3 ranks on h1, h2, h3 and waits for it to compute.
func (c *cluster) faultJob(name string) *mpiJob {
	c.t.Helper()
	j := c.runMPI(name, 3, "h1:1,h2:1,h3:1", workload(c.t, "ring.openmpi"), faultRingArgs...)
	j.progress("started")
	return j
}

func faultReference(t *testing.T) string {
	t.Helper()
	return reference(t, "mpirun.openmpi", 3, workload(t, "ring.openmpi"), faultRingArgs...)
}

// nodeCgroup is the cgroup directory of a job-node on a host.
func (c *cluster) nodeCgroup(host, job, node string) string {
	return filepath.Join(cgroupMount(c.t), c.cgParent, host, job, node)
}

// frozen says whether a job-node's cgroup is frozen (cgroup.events).
func frozen(t *testing.T, cg string) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cg, "cgroup.events"))
	if err != nil {
		t.Fatalf("job-node cgroup: %v", err)
	}
	return strings.Contains(string(data), "frozen 1")
}

// rankPID finds the MPI rank (a process running prog) of a job-node.
func (c *cluster) rankPID(host, job, node, prog string) int {
	c.t.Helper()
	data, err := os.ReadFile(filepath.Join(c.nodeCgroup(host, job, node), "cgroup.procs"))
	if err != nil {
		c.t.Fatal(err)
	}
	for _, f := range strings.Fields(string(data)) {
		pid, _ := strconv.Atoi(f)
		exe, err := os.Readlink("/proc/" + f + "/exe")
		if err == nil && filepath.Base(exe) == prog {
			return pid
		}
	}
	c.t.Fatalf("no %s among the processes of %s/%s on %s: %s", prog, job, node, host, data)
	return 0
}

// checkpoints lists a job's committed checkpoints, oldest first.
func (c *cluster) checkpoints(job string) []string {
	c.t.Helper()
	out := c.mustCLI("ls", job, "--no-verify")
	var hs []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], job+"/") {
			hs = append(hs, f[0])
		}
	}
	return hs
}

// noPartial checks that no uncommitted checkpoint of job is left on disk.
func (c *cluster) noPartial(job, dir string) {
	c.t.Helper()
	entries, _ := os.ReadDir(filepath.Join(dir, job))
	for _, e := range entries {
		if !e.IsDir() {
			continue // the catalog's own files (sequence counter)
		}
		if _, err := os.Stat(filepath.Join(dir, job, e.Name(), "manifest.json")); err != nil {
			c.t.Fatalf("an uncommitted checkpoint %s of %s is still on disk", e.Name(), job)
		}
	}
}

func TestFaults(t *testing.T) {
	c := newCluster(t, 4)
	want := faultReference(t)
	parent := t

	// kill -9 of a rank: the job fails; `torpor run --restart-on-failure 1`
	// restarts it from its last committed checkpoint and it ends with the
	// undisturbed result.
	t.Run("kill-rank", func(t *testing.T) {
		c.t = t
		defer func() { c.t = parent }()
		j := c.faultJob("f-kill")
		h := lastLines(c.mustCLI("checkpoint", j.id), 1)
		j.progress("after checkpoint " + h)
		pid := c.rankPID("h2", j.id, "n1", "ring.openmpi")
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		t.Logf("killed rank pid %d of %s/n1 on h2", pid, j.id)
		j.waitOutput(regexp.MustCompile(`restart 1 of 1 from `+regexp.QuoteMeta(h)), 60*time.Second)
		c.waitState(j.id, "running", 60*time.Second)
		j.progress("restarted from " + h)
		if got := j.finish(3*time.Minute, ""); got != want {
			t.Fatalf("checksum %s after the rank was killed, undisturbed %s", got, want)
		}
	})

	// A corrupted image: verification finds it; a restart of the job refuses
	// it, and with --fallback restarts from the newest checkpoint that
	// verifies, saying which one it skipped.
	t.Run("corrupted-image", func(t *testing.T) {
		c.t = t
		defer func() { c.t = parent }()
		j := c.faultJob("f-corrupt")
		good := lastLines(c.mustCLI("checkpoint", j.id), 1)
		j.progress("after checkpoint " + good)
		bad := lastLines(c.mustCLI("suspend", j.id), 1)
		seq := strings.TrimPrefix(bad, j.id+"/")
		pages, _ := filepath.Glob(filepath.Join(c.ckpt, j.id, seq, "nodes", "n2", "pages-*.img"))
		if len(pages) == 0 {
			t.Fatalf("no pages image of n2 in %s", filepath.Join(c.ckpt, j.id, seq, "nodes", "n2"))
		}
		corruptByte(t, pages[0])
		out, code := c.cli("resume", j.id)
		if code == 0 || !strings.Contains(out, "fails verification") || !strings.Contains(out, filepath.Base(pages[0])) {
			t.Fatalf("resume from a corrupted checkpoint: exit %d\n%s", code, out)
		}
		t.Logf("refused: %s", lastLines(out, 1))
		if st := c.jobState(j.id); st != "suspended" {
			t.Fatalf("job is %s after the refused restart", st)
		}
		out = c.mustCLI("restart", j.id, "--fallback")
		if !strings.Contains(out, "skipped "+bad+": it fails verification") || !strings.Contains(out, good) {
			t.Fatalf("restart --fallback does not say it skipped %s for %s:\n%s", bad, good, out)
		}
		t.Logf("fallback: %s", strings.ReplaceAll(strings.TrimSpace(out), "\n", " | "))
		c.waitState(j.id, "running", 30*time.Second)
		if got := j.finish(3*time.Minute, ""); got != want {
			t.Fatalf("checksum %s after the fallback restart, undisturbed %s", got, want)
		}
	})
}

// corruptByte flips one byte in the middle of a file.
func corruptByte(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	off := st.Size() / 2
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// Disk full during a dump (the checkpoint directory is an 8 MiB tmpfs, the
// images are larger): the checkpoint is aborted with the disk's error, the
// partial images are deleted, the job runs on and ends with the undisturbed
// result.
func TestFaultDiskFull(t *testing.T) {
	requireRoot(t)
	small, err := os.MkdirTemp("", "torpor-e2e-tmpfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(small) })
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "torpor-e2e-full", small).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", small).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", small, err, out)
		}
	})
	c := newCluster(t, 3, "--checkpoint-dir", small)
	want := faultReference(t)
	j := c.faultJob("f-full")
	out, code := c.cli("checkpoint", j.id)
	if code == 0 || !strings.Contains(strings.ToLower(out), "no space left on device") || !strings.Contains(out, "keeps running") {
		t.Fatalf("checkpoint onto a full disk: exit %d\n%s", code, out)
	}
	t.Logf("aborted: %s", strings.TrimSpace(out))
	if st := c.jobState(j.id); st != "running" {
		t.Fatalf("job is %s after the aborted checkpoint", st)
	}
	if hs := c.checkpoints(j.id); len(hs) != 0 {
		t.Fatalf("checkpoints listed after a failed dump: %v", hs)
	}
	c.noPartial(j.id, small)
	j.progress("after the aborted checkpoint")
	if got := j.finish(3*time.Minute, ""); got != want {
		t.Fatalf("checksum %s after the aborted checkpoint, undisturbed %s", got, want)
	}
}
