package e2e

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// streamJob starts a ring of TCP streams over job-nodes n0..n(k-1) on hosts
// h1..hk with `torpor run --plain`: job-node i receives from i-1 and sends to
// i+1; every receiver verifies every byte. It returns the job id.
func (c *cluster) streamJob(name string, hosts []string) string {
	c.t.Helper()
	stream := build(c.t, c.dir, "github.com/torpor-hpc/torpor/bench/workloads/tcpstream", "tcpstream")
	status := filepath.Join(c.dir, "status")
	if err := os.MkdirAll(status, 0o755); err != nil {
		c.t.Fatal(err)
	}
	script := filepath.Join(c.dir, "ring.sh")
	body := fmt.Sprintf(`#!/bin/sh
set -e
next=$(echo $TORPOR_NODE_IPS | cut -d' ' -f$(( (TORPOR_NODE_INDEX + 1) %% TORPOR_NODES + 1 )))
%[1]s -listen :7000 -status %[2]s/$TORPOR_NODE.recv -read-rate 4M &
exec %[1]s -connect $next:7000 -status %[2]s/$TORPOR_NODE.send -rate 4M
`, stream, status)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		c.t.Fatal(err)
	}
	// Wait for the job to run, however long its start takes; should the
	// run be refused and exit, start it again.
	args := []string{"run", "--plain", "--name", name, "--host", strings.Join(hosts, ","), "--run-dir", c.runDir, script}
	deadline := time.Now().Add(60 * time.Second)
	cmd := c.daemon("run-"+name, args...)
	for {
		if job := c.findJob(name); job != "" {
			c.runCmd = cmd
			c.t.Cleanup(func() { stop(cmd, syscall.SIGTERM) })
			return job
		}
		if time.Now().After(deadline) {
			stop(cmd, syscall.SIGTERM)
			c.t.Fatalf("job %s never started:\n%s", name, c.logs["run-"+name])
		}
		if exited(cmd) {
			stop(cmd, syscall.SIGTERM) // reaps it
			cmd = c.daemon("run-"+name, args...)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *cluster) findJob(prefix string) string {
	out, _ := c.cli("ps")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == prefix || strings.HasPrefix(f[0], prefix+"-")) && f[1] == "running" {
			return f[0]
		}
	}
	return ""
}

// progress waits until every receiver verified more bytes than before.
func (c *cluster) progress(nodes int, what string) {
	c.t.Helper()
	var before []uint64
	path := func(i int) string { return filepath.Join(c.dir, "status", fmt.Sprintf("n%d.recv", i)) }
	for i := 0; i < nodes; i++ {
		before = append(before, readCounter(c.t, path(i)))
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < nodes; i++ {
		for readCounter(c.t, path(i)) <= before[i]+32<<10 {
			if time.Now().After(deadline) {
				out, _ := c.cli("ps")
				c.t.Fatalf("%s: n%d stuck at %d bytes\n%s", what, i, readCounter(c.t, path(i)), out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	var now []string
	for i := 0; i < nodes; i++ {
		now = append(now, fmt.Sprintf("n%d=%d", i, readCounter(c.t, path(i))))
	}
	c.t.Logf("%s: verified %s", what, strings.Join(now, " "))
}

// Issue acceptance: a coordinator and shim daemons (separate processes,
// mutual TLS) on simulated hosts, a TCP stream job over 3 job-nodes:
// checkpoints ×10, suspend + resume, restart after killing every job
// process, migration to a 4th host; tampering; an interrupted commit and two
// interrupted migrations; a non-root user refused. Every byte is verified by the receivers.
func TestDaemonsEndToEnd(t *testing.T) {
	c := newCluster(t, 4)
	job := c.streamJob("ring", []string{"h1", "h2", "h3"})
	c.progress(3, "started")

	for i := 1; i <= 10; i++ {
		h := lastLines(c.mustCLI("checkpoint", job), 1)
		if !strings.HasPrefix(h, job+"/") {
			t.Fatalf("checkpoint printed %q, want a handle", h)
		}
		c.progress(3, "checkpoint "+h)
	}

	// SIGUSR1 to `torpor run` checkpoints now, as with Hydra.
	before := strings.Count(c.mustCLI("ls", "--no-verify", job), job+"/")
	if err := c.runCmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); strings.Count(c.mustCLI("ls", "--no-verify", job), job+"/") <= before; {
		if time.Now().After(deadline) {
			t.Fatalf("SIGUSR1 to torpor run made no checkpoint:\n%s", c.logs["run-ring"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.progress(3, "checkpoint on SIGUSR1")

	c.mustCLI("suspend", job)
	if s := c.jobState(job); s != "suspended" {
		t.Fatalf("after suspend: %s", s)
	}
	c.mustCLI("resume", job)
	c.progress(3, "suspend + resume")

	// Kill every process of the job: the job fails; restart brings it back.
	// Every job-node's processes are found first, then killed: once one
	// job-node dies, the coordinator fails the job and destroys the others,
	// which races a kill that reads the next job-node's processes only then.
	procs := map[string][]int{} // job-node cgroup -> its processes
	filepath.WalkDir(filepath.Join(cgroupMount(t), c.cgParent), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.Name() != "cgroup.procs" {
			return nil
		}
		data, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(data)) {
			var pid int
			if fmt.Sscan(f, &pid); pid > 0 {
				procs[filepath.Dir(p)] = append(procs[filepath.Dir(p)], pid)
			}
		}
		return nil
	})
	if len(procs) != 3 {
		t.Fatalf("found the processes of %d job-nodes, want 3: %v", len(procs), procs)
	}
	for _, pids := range procs {
		for _, pid := range pids {
			// Gone already if its job-node's init, PID 1 of the namespace, went first.
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	c.waitState(job, "failed", 15*time.Second)
	// The shims told the coordinator of the exits (Exits over their TLS
	// port), each once it listened.
	for _, h := range []string{"h1", "h2", "h3"} {
		if !strings.Contains(c.logs["coordinator"].String(), "tells of its job-nodes' exits as they happen\" host="+h) {
			t.Errorf("the coordinator never listened to the exits of %s's shim", h)
		}
	}
	if !c.waitLog("coordinator", "a shim told of a job-node's exit", 5*time.Second) {
		t.Errorf("no shim told of a killed job-node's exit:\n%s", lastLines(c.logs["coordinator"].String(), 20))
	}
	c.mustCLI("restart", job)
	c.progress(3, "restart after kill -9")

	c.mustCLI("migrate", job, "--node", "n1", "--to", "h4")
	out := c.mustCLI("ps")
	if !strings.Contains(out, "n1@h4") {
		t.Fatalf("after migrate:\n%s", out)
	}
	c.progress(3, "migrate n1 to h4")

	// A non-root user may not act on root's job.
	out, code := c.cliAs(&syscall.Credential{Uid: 65534, Gid: 65534}, "checkpoint", job)
	if code == 0 || !strings.Contains(out, "permission denied") {
		t.Fatalf("uid 65534 checkpoint: exit %d\n%s", code, out)
	}

	// Tampering: flip one byte in an image of a committed checkpoint.
	good := lastLines(c.mustCLI("checkpoint", job), 1)
	bad := lastLines(c.mustCLI("suspend", job), 1)
	img := filepath.Join(c.ckpt, bad, "nodes", "n2", "pages-1.img")
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ls := c.mustCLI("ls", job)
	for _, line := range strings.Split(ls, "\n") {
		if strings.HasPrefix(line, bad+" ") && !strings.Contains(line, "pages-1.img") {
			t.Fatalf("ls does not show %s failing verification:\n%s", bad, ls)
		}
		if strings.HasPrefix(line, good+" ") && !strings.HasSuffix(strings.TrimSpace(line), "ok") {
			t.Fatalf("ls shows %s not ok:\n%s", good, ls)
		}
	}
	out, code = c.cli("restart", bad)
	if code == 0 || !strings.Contains(out, "fails verification") {
		t.Fatalf("restart of a tampered checkpoint: exit %d\n%s", code, out)
	}
	t.Logf("tampered checkpoint refused: %s", strings.TrimSpace(out))
	c.mustCLI("restart", good)
	c.progress(3, "restart from "+good)

	// Interrupted commit: the coordinator dies between dump and commit.
	out = c.crashCoordinator(job, "crash-before-commit", "checkpoint", job)
	t.Logf("coordinator crashed between dump and commit: %s", lastLines(out, 1))
	c.startCoordinator()
	c.waitState(job, "running", 30*time.Second)
	entries, _ := os.ReadDir(filepath.Join(c.ckpt, job))
	for _, e := range entries {
		if e.IsDir() {
			if _, err := os.Stat(filepath.Join(c.ckpt, job, e.Name(), "manifest.json")); err != nil {
				t.Fatalf("an uncommitted checkpoint %s is still on disk", e.Name())
			}
		}
	}
	c.progress(3, "after coordinator crash and recovery")

	// Interrupted migrations. The coordinator dies once h2 restored n0,
	// short of the point of no return: the new coordinator destroys that
	// copy and thaws n0 on h1, and the same migration succeeds after (h2's
	// shim would refuse a second copy).
	migrateN0 := func(point, to, where string) {
		t.Helper()
		out := c.crashCoordinator(job, point, "migrate", job, "--node", "n0", "--to", to)
		t.Logf("coordinator crashed %s: %s", where, lastLines(out, 1))
		c.startCoordinator()
		c.waitState(job, "running", 30*time.Second)
		c.wantPlaced(job, "n0@h1", "n1@h4", "n2@h3")
		if _, err := os.Stat(c.nodeCgroup("h2", job, "n0")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("a copy of n0 is still on h2 after the coordinator crashed %s (its cgroup: %v)", where, err)
		}
		c.progress(3, "after a coordinator crash "+where)
	}
	migrateN0("crash-after-restore", "h2", "in a migration, before its point of no return")
	c.mustCLIRegistered("migrate", job, "--node", "n0", "--to", "h2")
	c.wantPlaced(job, "n0@h2", "n1@h4", "n2@h3")
	c.progress(3, "migrate n0 to h2 after the interrupted one")
	// The coordinator dies once n0's move back to h1 is saved, before the
	// job runs again: the new coordinator destroys the old copy on h2,
	// never thawed, and thaws the job with n0 on h1.
	migrateN0("crash-past-no-return", "h1", "in a migration, past its point of no return")

	// A stray: the job is cancelled while the shim of h3 is dead (killed,
	// so n2 runs on there), so the destroy of n2 does not reach it. The
	// shim comes back, adopts n2 and says so as it registers: the
	// coordinator destroys that copy of a job that ended.
	dead := c.shims[2]
	stop(dead, syscall.SIGKILL)
	c.mustCLI("cancel", job)
	if s := c.jobState(job); s != "failed" {
		t.Fatalf("after cancel: %s", s)
	}
	for _, hn := range [][2]string{{"h1", "n0"}, {"h4", "n1"}} {
		if _, err := os.Stat(c.nodeCgroup(hn[0], job, hn[1])); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s is still on %s after cancel (its cgroup: %v)", hn[1], hn[0], err)
		}
	}
	n2 := c.nodeCgroup("h3", job, "n2")
	if _, err := os.Stat(n2); err != nil {
		t.Fatalf("n2 is gone from h3 though its shim was dead at the cancel: the test does not make the stray it is about (%v)", err)
	}
	c.startShim(3)
	if !c.waitLog("coordinator", "destroyed a stray copy of a job-node", 30*time.Second) {
		t.Fatalf("the coordinator destroyed no stray after the shim of h3 came back with n2:\n%s", lastLines(c.logs["coordinator"].String(), 20))
	}
	if _, err := os.Stat(n2); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("n2 is still on h3 after the coordinator destroyed it as a stray (its cgroup: %v)", err)
	}
	if ev := c.mustCLI("events", job); !strings.Contains(ev, "stray-destroyed") || !strings.Contains(ev, "n2 on h3") {
		t.Fatalf("no stray-destroyed event of n2 on h3:\n%s", ev)
	}
}

// crashCoordinator restarts the coordinator with the fault point switched
// on, runs the torpor command that makes it strike, and returns the
// command's output once the coordinator exited with the fault's status 86.
// The caller starts a coordinator again before its next command: a CLI
// that finds nobody on the socket embeds a coordinator of its own.
func (c *cluster) crashCoordinator(job, point string, args ...string) string {
	c.t.Helper()
	stop(c.coord, syscall.SIGTERM)
	c.startCoordinator("--fault", point)
	c.waitState(job, "running", 30*time.Second)
	exited := make(chan int, 1)
	go func() { _ = c.coord.Wait(); exited <- c.coord.ProcessState.ExitCode() }()
	out, code := c.cliRegistered(args...)
	if code == 0 {
		c.t.Fatalf("torpor %s survived the coordinator's crash at %s:\n%s", strings.Join(args, " "), point, out)
	}
	select {
	case ec := <-exited:
		if ec != 86 {
			c.t.Fatalf("coordinator exit %d, want the fault's 86; torpor %s said:\n%s", ec, strings.Join(args, " "), out)
		}
	case <-time.After(30 * time.Second):
		c.t.Fatalf("coordinator did not crash at %s; torpor %s said:\n%s", point, strings.Join(args, " "), out)
	}
	return out
}

// cliRegistered is cli for a coordinator that just started: it tries again,
// for up to 30 s, while a shim the command needs has not registered yet,
// and returns the last try's output and exit status.
func (c *cluster) cliRegistered(args ...string) (string, int) {
	c.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		out, code := c.cli(args...)
		if code == 0 || !strings.Contains(out, "no shim registered") || time.Now().After(deadline) {
			return out, code
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// mustCLIRegistered is mustCLI by way of cliRegistered.
func (c *cluster) mustCLIRegistered(args ...string) string {
	c.t.Helper()
	out, code := c.cliRegistered(args...)
	if code != 0 {
		c.t.Fatalf("torpor %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// wantPlaced checks that `torpor ps` places job's job-nodes as given
// (NODE@HOST each).
func (c *cluster) wantPlaced(job string, placed ...string) {
	c.t.Helper()
	out := c.mustCLI("ps")
	for _, p := range placed {
		if !strings.Contains(out, p) {
			c.t.Fatalf("job %s: want %s:\n%s", job, strings.Join(placed, " "), out)
		}
	}
}
