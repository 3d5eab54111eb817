package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/internal/testutil"
)

// The fault-injection harness: each scenario injects one failure into a
// running Open MPI job (ring, 3 ranks, one per simulated host) and asserts the
// outcome documented for it — in fault.Catalog for the named points, in each
// test's comment otherwise. Every job must end with the undisturbed checksum.
// Elsewhere: the coordinator's death between dump and commit and in a
// migration on either side of its point of no return, and a tampered image
// are in TestDaemonsEndToEnd; a drain that never completes (a peer
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

// run runs a subtest whose cluster helpers report to it.
func (c *cluster) run(t *testing.T, name string, fn func(t *testing.T)) {
	t.Run(name, func(st *testing.T) {
		c.t = st
		defer func() { c.t = t }()
		fn(st)
	})
}

// finishWith waits for the job's end and checks its checksum.
func (j *mpiJob) finishWith(want, after string) {
	j.c.t.Helper()
	if got := j.finish(3*time.Minute, ""); got != want {
		j.c.t.Fatalf("job %s: checksum %s %s, undisturbed %s", j.id, got, after, want)
	}
	j.c.t.Logf("job %s: checksum %s %s = undisturbed", j.id, want, after)
}

// catalogDir is the coordinator's checkpoint directory as the machine
// sees it.
func (c *cluster) catalogDir() string {
	if c.mountNS != nil {
		return c.hostDir("coord", "ckpt")
	}
	return c.ckpt
}

// fixedShimAddr is an address host i's shim can listen on, known before it
// starts: a free port on the loopback, or on an isolated cluster a port of
// the host's own address, where nothing else listens.
func (c *cluster) fixedShimAddr(t *testing.T, i int) string {
	if c.mountNS != nil {
		return net.JoinHostPort(c.sim.Host(i).Underlay, "7801")
	}
	return freePort(t)
}

// noCheckpoint checks that an aborted checkpoint of job left nothing: none
// listed, none on disk in the checkpoint directory dir, and on an isolated
// cluster no images in any host's store.
func (c *cluster) noCheckpoint(job, dir string) {
	c.t.Helper()
	if hs := c.checkpoints(job); len(hs) != 0 {
		c.t.Fatalf("checkpoints listed after an aborted one: %v", hs)
	}
	for h := range c.mountNS {
		if h == "coord" {
			continue
		}
		store := filepath.Join(c.hostDir(h, "images"), "checkpoints", job)
		if ents, err := os.ReadDir(store); err == nil && len(ents) != 0 {
			c.t.Fatalf("the aborted checkpoint left images of %s in %s's store: %v", job, h, ents)
		}
	}
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

// TestFaultsIsolated runs the faults that do not depend on a shared
// directory or on a proxy in the machine's network namespace on an
// isolated cluster (host-local checkpoints, every daemon in its host's
// namespaces).
func TestFaultsIsolated(t *testing.T) {
	c := newIsolatedCluster(t, 4)
	want := faultReference(t)
	c.run(t, "kill-rank", func(t *testing.T) { c.faultKillRank(t, want) })
	c.run(t, "shim-exit-in-dump", func(t *testing.T) { c.faultShimExitInDump(t, want) })
	c.run(t, "criu-kill-in-dump", func(t *testing.T) { c.faultCRIUKillInDump(t, want) })
	c.run(t, "corrupted-copy", func(t *testing.T) { c.faultCorruptedCopy(t, want) })
}

// faultCorruptedCopy: a suspended job's host-local checkpoint, replicated,
// has one byte of a memory image flipped in two copies: n2's on its own
// host h3, the copy a restart in place restores from, and n1's on its own
// host h2, the first a restart that moves n1 to h4 fetches from. `torpor
// restart --host n1=h4` goes on from the replicas: h2's shim finds its copy
// corrupt as it sends it, h3's at the restore; each sets its copy aside
// (kept, out of the store). The CLI names both copies, the history has a
// copy-set-aside event for each, and the job ends with the undisturbed
// checksum.
func (c *cluster) faultCorruptedCopy(t *testing.T, want string) {
	j := c.faultJob("f-copy") // n0@h1, n1@h2, n2@h3
	h := lastLines(c.mustCLI("suspend", j.id), 1)
	for deadline := time.Now().Add(2 * time.Minute); !c.logged("coordinator", "checkpoint replicated", "ckpt="+h+" "); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("checkpoint %s was never replicated", h)
		}
	}
	seq := strings.TrimPrefix(h, j.id+"/")
	copyOf := func(host, node string) string {
		return filepath.Join(c.hostDir(host, "images"), "checkpoints", j.id, seq, node)
	}
	var flipped []string
	for _, hn := range [][2]string{{"h3", "n2"}, {"h2", "n1"}} {
		pages, _ := filepath.Glob(filepath.Join(copyOf(hn[0], hn[1]), "pages-*.img"))
		if len(pages) == 0 {
			t.Fatalf("no memory image of %s in %s's store", hn[1], hn[0])
		}
		corruptByte(t, pages[0])
		flipped = append(flipped, filepath.Base(pages[0]))
	}
	out := c.mustCLI("restart", j.id, "--host", "n1=h4")
	for _, hn := range []string{"n2 on h3", "n1 on h2"} {
		if !strings.Contains(out, h+": the copy of "+hn+" failed verification and was set aside") {
			t.Fatalf("restart does not say it set the copy of %s aside:\n%s", hn, out)
		}
	}
	t.Logf("restart: %s", strings.ReplaceAll(strings.TrimSpace(out), "\n", " | "))
	for i, hn := range [][2]string{{"h3", "n2"}, {"h2", "n1"}} {
		aside := filepath.Join(c.hostDir(hn[0], "images"), "corrupt", j.id, seq, hn[1], flipped[i])
		if _, err := os.Stat(aside); err != nil {
			t.Fatalf("%s's corrupt copy of %s was not kept aside: %v", hn[0], hn[1], err)
		}
		if _, err := os.Stat(copyOf(hn[0], hn[1])); err == nil && hn[0] == "h2" {
			t.Fatalf("h2 still holds its corrupt copy of n1")
		}
	}
	// h3 fetched n2's replica (from h4), h4 n1's (from h3, h2's failed).
	for _, hn := range [][2]string{{"h3", "n2"}, {"h4", "n1"}} {
		if _, err := os.Stat(filepath.Join(copyOf(hn[0], hn[1]), "node-manifest.json")); err != nil {
			t.Fatalf("%s holds no copy of %s after the restart: %v", hn[0], hn[1], err)
		}
	}
	ev := c.mustCLI("events", j.id, "--json")
	for _, want := range []string{`"node":"n2","from_host":"h3"`, `"node":"n1","from_host":"h2"`} {
		if !strings.Contains(ev, want) {
			t.Fatalf("no copy-set-aside event with %s:\n%s", want, ev)
		}
	}
	if strings.Count(ev, `"type":"copy-set-aside"`) != 2 {
		t.Fatalf("want 2 copy-set-aside events:\n%s", ev)
	}
	c.waitState(j.id, "running", 30*time.Second)

	// `torpor ls` verifies the copies where they are: n0's on h1 rots
	// (h2 holds its replica), the listing sets it aside and says so, and
	// the checkpoint stays good with one copy of n0.
	if st := c.lsStored(j.id); st.Handle != h || st.Copies != 2 || st.Verified != "ok" {
		t.Fatalf("ls before n0's copy on h1 rots: %+v; want 2 copies, verified ok", st)
	}
	pages, _ := filepath.Glob(filepath.Join(copyOf("h1", "n0"), "pages-*.img"))
	if len(pages) == 0 {
		t.Fatalf("no memory image of n0 in h1's store")
	}
	corruptByte(t, pages[0])
	if out := c.mustCLI("ls", j.id); !strings.Contains(out, h+": the copy of n0 on h1 failed verification and was set aside") {
		t.Fatalf("ls does not say it set n0's copy on h1 aside:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(c.hostDir("h1", "images"), "corrupt", j.id, seq, "n0", filepath.Base(pages[0]))); err != nil {
		t.Fatalf("h1's corrupt copy of n0 was not kept aside: %v", err)
	}
	if st := c.lsStored(j.id); st.Handle != h || st.Copies != 1 || st.Replicated || st.Verified != "ok" {
		t.Fatalf("ls after n0's copy on h1 was set aside: %+v; want 1 copy, not replicated, verified ok", st)
	}
	if ev := c.mustCLI("events", j.id, "--json"); !strings.Contains(ev, `"node":"n0","from_host":"h1"`) {
		t.Fatalf("no copy-set-aside event for n0's copy on h1:\n%s", ev)
	}
	j.finishWith(want, "after a restart that set a corrupt copy aside")
}

// logged says whether one line of a daemon's log holds every one of subs.
func (c *cluster) logged(name string, subs ...string) bool {
	for _, line := range strings.Split(c.logs[name].String(), "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			return true
		}
	}
	return false
}

func TestFaults(t *testing.T) {
	c := newCluster(t, 4)
	want := faultReference(t)

	c.run(t, "kill-rank", func(t *testing.T) { c.faultKillRank(t, want) })

	// A corrupted image: verification finds it; a restart of the job refuses
	// it, and with --fallback restarts from the newest checkpoint that
	// verifies, saying which one it skipped.
	c.run(t, "corrupted-image", func(t *testing.T) {
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
		j.finishWith(want, "after the fallback restart")
	})

	c.run(t, "shim-exit-in-dump", func(t *testing.T) { c.faultShimExitInDump(t, want) })

	c.run(t, "criu-kill-in-dump", func(t *testing.T) { c.faultCRIUKillInDump(t, want) })

	// A partition between the coordinator and the shim of h2 while h2
	// restores its job-node: the restart fails, nothing of the job is left
	// running anywhere (the shim destroys its half-restored job-node when its
	// request is cut off), the job stays suspended with its checkpoint intact,
	// and once the partition heals a restart succeeds.
	c.run(t, "partition-in-restore", func(t *testing.T) {
		port := freePort(t)
		toShim, err := fault.NewProxy("127.0.0.1:0", port)
		if err != nil {
			t.Fatal(err)
		}
		defer toShim.Close()
		toCoord, err := fault.NewProxy("127.0.0.1:0", c.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer toCoord.Close()
		c.startShim(2, "--listen", port, "--advertise", toShim.Addr(), "--join", toCoord.Addr(),
			"--fault", string(fault.HoldInRestore))
		defer c.startShim(2)
		j := c.faultJob("f-part")
		h := lastLines(c.mustCLI("suspend", j.id), 1)
		// The shim of h2 holds CRIU at post-restore until its request is
		// cancelled: the cut always lands while h2 restores.
		cut := make(chan struct{})
		held := false
		go func() {
			defer close(cut)
			held = c.waitLog("shim-h2", "FAULT INJECTION: "+string(fault.HoldInRestore), 2*time.Minute)
			if held {
				toShim.Cut()
				toCoord.Cut()
			}
		}()
		out, code := c.cli("resume", j.id)
		<-cut
		if !held {
			t.Fatalf("the shim of h2 never held its restore:\n%s", c.logs["shim-h2"])
		}
		if code == 0 || !strings.Contains(out, "nothing is left running") {
			t.Fatalf("resume across a partition: exit %d\n%s", code, out)
		}
		t.Logf("restart failed cleanly: %s", lastLines(out, 1))
		if st := c.jobState(j.id); st != "suspended" {
			t.Fatalf("job is %s after the failed restart, want suspended", st)
		}
		// No job-node of the job may be left anywhere, also on the far side.
		deadline := time.Now().Add(20 * time.Second)
		for _, hn := range [][2]string{{"h1", "n0"}, {"h2", "n1"}, {"h3", "n2"}} {
			for {
				_, err := os.Stat(c.nodeCgroup(hn[0], j.id, hn[1]))
				if os.IsNotExist(err) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s of %s is still on %s after the failed restart", hn[1], j.id, hn[0])
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		toShim.Heal()
		toCoord.Heal()
		// The checkpoint is intact: once the partition heals it restarts.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
			out, code = c.cli("resume", j.id)
			if code == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("resume after the partition healed: exit %d\n%s", code, out)
			}
		}
		if !strings.Contains(out, h) {
			t.Fatalf("resumed not from %s:\n%s", h, out)
		}
		j.progress("restarted after the partition healed")
		j.finishWith(want, "after the partition")
	})
}

// faultKillRank: kill -9 of a rank: the job fails; `torpor run
// --restart-on-failure 1` restarts it from its last committed checkpoint
// and it ends with the undisturbed result.
func (c *cluster) faultKillRank(t *testing.T, want string) {
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
	j.finishWith(want, "after the rank was killed")
}

// faultShimExitInDump: fault.ShimExitInDump, see its outcome in
// fault.Catalog.
func (c *cluster) faultShimExitInDump(t *testing.T, want string) {
	// On a fixed port, as on a real host: the shim comes back on the
	// address the coordinator has been failing to reach.
	port := c.fixedShimAddr(t, 2)
	c.startShim(2, "--fault", string(fault.ShimExitInDump), "--listen", port)
	j := c.faultJob("f-shim")
	dead := c.shims[1]
	out, code := c.cli("checkpoint", j.id)
	if code == 0 || !strings.Contains(out, "waiting up to") {
		t.Fatalf("checkpoint while the shim of h2 dies: exit %d\n%s", code, out)
	}
	t.Logf("aborted: %s", lastLines(out, 1))
	waited := make(chan error, 1)
	go func() { waited <- dead.Wait() }()
	select {
	case <-waited:
		if ws, ok := dead.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("shim of h2 ended with %v, want SIGKILL from the fault point", dead.ProcessState)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the shim of h2 did not die at the fault point")
	}
	if st := c.jobState(j.id); st != "checkpointing" {
		t.Fatalf("job is %s while its shim is dead, want checkpointing (waiting for it)", st)
	}
	for _, hn := range [][2]string{{"h1", "n0"}, {"h3", "n2"}} {
		if frozen(t, c.nodeCgroup(hn[0], j.id, hn[1])) {
			t.Fatalf("%s on %s is still frozen after the abort", hn[1], hn[0])
		}
	}
	if !frozen(t, c.nodeCgroup("h2", j.id, "n1")) {
		t.Fatal("n1 on h2 is not frozen: the test did not strike during the dump")
	}
	c.noCheckpoint(j.id, c.catalogDir())
	// Stay down long enough for the coordinator's reconnect back-off to
	// grow past several seconds, then come back as systemd would.
	time.Sleep(20 * time.Second)
	if st := c.jobState(j.id); st != "checkpointing" {
		t.Fatalf("job is %s after 20 s without its shim, want checkpointing", st)
	}
	back := time.Now()
	c.startShim(2, "--listen", port)
	// Registering reset the back-off: the coordinator reached the shim
	// at its first registration, not when the back-off ran out.
	if log := c.logs["shim-h2"].String(); strings.Contains(log, `msg="register with coordinator"`) {
		t.Fatalf("the shim that came back on %s was not registered at once:\n%s", port, log)
	}
	c.waitState(j.id, "running", 60*time.Second)
	t.Logf("job running %v after its shim started again on %s", time.Since(back).Round(time.Millisecond), port)
	if frozen(t, c.nodeCgroup("h2", j.id, "n1")) {
		t.Fatal("n1 on h2 is still frozen after its shim came back")
	}
	j.progress("after the shim of h2 came back and adopted n1")
	j.finishWith(want, "after the shim died")
}

// faultCRIUKillInDump: fault.CRIUKillInDump, see its outcome in
// fault.Catalog.
func (c *cluster) faultCRIUKillInDump(t *testing.T, want string) {
	c.startShim(2, "--fault", string(fault.CRIUKillInDump))
	defer c.startShim(2)
	j := c.faultJob("f-criu")
	out, code := c.cli("checkpoint", j.id)
	if code == 0 || !strings.Contains(out, "criu was killed") || !strings.Contains(out, "keeps running") {
		t.Fatalf("checkpoint whose CRIU is killed: exit %d\n%s", code, out)
	}
	t.Logf("aborted: %s", lastLines(out, 1))
	if st := c.jobState(j.id); st != "running" {
		t.Fatalf("job is %s after the aborted checkpoint", st)
	}
	c.noCheckpoint(j.id, c.catalogDir())
	j.progress("after CRIU was killed")
	j.finishWith(want, "after CRIU was killed")
}

// waitLog waits until the log of daemon name holds s; false if it did not
// within timeout.
func (c *cluster) waitLog(name, s string, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(c.logs[name].String(), s) {
			return true
		}
	}
	return false
}

// freePort returns a 127.0.0.1 address whose port is free right now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
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
	testutil.RequireRoot(t, "simulated hosts, sandboxes, CRIU and eBPF")
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
	// CRIU's logs outlive the deleted images, where the message says.
	logs := regexp.MustCompile(`\(log: (\S+)\)`).FindAllStringSubmatch(out, -1)
	if len(logs) == 0 {
		t.Fatalf("no CRIU log named:\n%s", out)
	}
	for _, m := range logs {
		if !strings.HasPrefix(m[1], c.runDir) {
			t.Errorf("CRIU log %s is not kept in the run directory %s", m[1], c.runDir)
		} else if _, err := os.Stat(m[1]); err != nil {
			t.Errorf("CRIU log named in the error: %v", err)
		}
	}
	c.noCheckpoint(j.id, small)
	j.progress("after the aborted checkpoint")
	j.finishWith(want, "after the aborted checkpoint")
}
