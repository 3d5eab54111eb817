package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/testuser"
	"github.com/torpor-hpc/torpor/netquiesce"
	"github.com/torpor-hpc/torpor/shim/simhost"
)

// The TestSlurm* tests run torpor as a site runs it under Slurm (README
// "Under Slurm", configs/slurm/): the coordinator and one shim per node are
// root daemons started outside any job; the coordinator places a user's
// job-nodes only on the nodes of that user's running Slurm job (--slurm,
// asked of the real slurmctld), and each shim relays its node's users' calls
// from its user socket (--user-socket). Jobs come from sbatch, submitted by
// users the tests create, and their batch scripts run `torpor batch` on the
// nodes slurmd gives them.

// slurmSite is a simulated cluster with Slurm and torpor deployed on it.
type slurmSite struct {
	*cluster
	s *slurmCluster
	// users holds each host's user socket: <users>/<host>/user.sock.
	users string
	// ring is the ring workload, where every user can run it.
	ring string
}

func newSlurmSite(t *testing.T, hosts int, o slurmOptions) *slurmSite {
	t.Helper()
	c := newCluster(t, hosts)
	s := startSlurmWith(t, c, o)
	// The coordinator asks slurmctld with Slurm's own commands, as root,
	// from the host it runs on: this machine's network namespace, which
	// reaches slurmctld (198.18.0.1, in host 1) over a veth into the fabric.
	reachSlurmctld(t, c)
	t.Setenv("SLURM_CONF", s.conf)
	stop(c.coord, syscall.SIGTERM)
	c.coordArgs = append(c.coordArgs, "--slurm")
	c.startCoordinator()
	site := &slurmSite{cluster: c, s: s, users: filepath.Join(c.dir, "users")}
	for i := 1; i <= hosts; i++ {
		c.startShim(i, "--user-socket", filepath.Join(site.users, fmt.Sprintf("h%d", i), "user.sock"))
	}
	testuser.OpenDirs(t, site.users)
	site.ring = filepath.Join(c.dir, "ring.openmpi")
	data, err := os.ReadFile(workload(t, "ring.openmpi"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(site.ring, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return site
}

// reachSlurmctld links this machine's network namespace to the simulated
// cluster's fabric with a veth (removed when the test ends) and routes host
// 1's address, where slurmctld listens, over it: 198.18.0.250/32 here.
//
// Every simulated cluster has its host 1 at 198.18.0.1: two tests of
// another process (a second `go test`) would route it twice. A lock on the
// directory of named network namespaces (machine-wide, and there already)
// makes the second wait for the first.
func reachSlurmctld(t *testing.T, c *cluster) {
	t.Helper()
	lock, err := os.Open(netquiesce.NetnsDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() }) // after the route is gone (cleanups run in reverse)
	veth := fmt.Sprintf("tps%d", os.Getpid()%100000)
	fabric := simhost.NetNSName(c.sim.Name, "fabric")
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("link", "add", veth, "type", "veth", "peer", "name", "ctl0", "netns", fabric)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "link", "del", veth).CombinedOutput(); err != nil {
			t.Errorf("remove %s: %v\n%s", veth, err, out)
		}
	})
	ip("-n", fabric, "link", "set", "ctl0", "master", "fab0", "up")
	ip("addr", "add", "198.18.0.250/32", "dev", veth)
	ip("link", "set", veth, "up")
	ip("route", "replace", "198.18.0.1/32", "dev", veth)
}

// script is a batch script like configs/slurm/torpor-job.sbatch that runs
// `torpor batch ARGS`. Here every simulated host's shim has a socket of its
// own (a real node has one, at /run/torpor/user.sock, which torpor finds
// by itself), and the run directory is the test's.
func (site *slurmSite) script(args ...string) string {
	return fmt.Sprintf(`#!/bin/bash
export TORPOR_SOCKET=%s/$(hostname)/user.sock
exec %s batch --run-dir %s %s
`, site.users, site.torpor, site.runDir, strings.Join(args, " "))
}

// slurmRing makes a ring job of about iters×20 ms; the checksum does not
// depend on -s (the sleep per iteration), so the undisturbed reference
// runs with none.
func slurmRing(iters int, sleep bool) []string {
	s := "0"
	if sleep {
		s = "20000"
	}
	return []string{"-i", fmt.Sprint(iters), "-m", "16", "-s", s, "-p", "100"}
}

// sacctRecords parses sacct's --parsable2 output (header first) into one
// map per record.
func sacctRecords(t *testing.T, out string) []map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	head := strings.Split(lines[0], "|")
	var recs []map[string]string
	for _, l := range lines[1:] {
		f := strings.Split(l, "|")
		if len(f) != len(head) {
			t.Fatalf("sacct line %q does not match its header %q", l, lines[0])
		}
		r := map[string]string{}
		for i, h := range head {
			r[h] = f[i]
		}
		recs = append(recs, r)
	}
	return recs
}

// watch logs every change of Slurm job id's state, reason and nodes, with
// the time, until the test ends: the story of its runs, for the log.
func (site *slurmSite) watch(id string) {
	t := site.t
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(done); <-stopped })
	go func() {
		defer close(stopped)
		last := ""
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			out, code := site.s.run(nil, "squeue", "--noheader", "--jobs="+id, "--format=%T %r %N")
			now := strings.TrimSpace(out)
			if code == 0 && now != last && now != "" {
				t.Logf("%s Slurm job %s: %s", time.Now().Format("15:04:05.0"), id, now)
				last = now
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
}

// acct is sacct's record of job id's runs once the last one is recorded as
// ended (slurmdbd learns a job's end after slurmctld does); it is logged.
func (site *slurmSite) acct(id string) string {
	site.t.Helper()
	return site.s.waitSacct(id, 30*time.Second, func(recs [][]string) bool {
		n := len(recs)
		return n > 0 && !slices.Contains([]string{"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "SUSPENDED"}, recs[n-1][3])
	})
}

// expand is `scontrol show hostnames LIST`.
func (site *slurmSite) expand(list string) []string {
	return strings.Fields(site.s.cmd("scontrol", "show", "hostnames", list))
}

// finished waits until Slurm job id completed and returns its output, after
// checking that torpor's job printed the undisturbed checksum.
func (site *slurmSite) finished(id, want string, timeout time.Duration) string {
	site.t.Helper()
	site.s.waitJob(id, timeout, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY")
	out := site.s.output(id)
	if st := site.s.jobState(id); st != "COMPLETED" {
		site.t.Fatalf("Slurm job %s ended %s:\n%s\n%s", id, st, lastLines(out, 40), site.acct(id))
	}
	m := doneRE.FindAllStringSubmatch(out, -1)
	if m == nil {
		site.t.Fatalf("Slurm job %s: no checksum in its output:\n%s", id, lastLines(out, 40))
	}
	if got := m[len(m)-1][2]; got != want {
		site.t.Fatalf("Slurm job %s: checksum %s, the undisturbed run's %s:\n%s", id, got, want, lastLines(out, 40))
	}
	return out
}

var committedRE = regexp.MustCompile(`checkpoint (\S+) committed in (\S+); job \S+ is stopped`)

// TestSlurmTimeLimit: a job longer than its time limit, submitted with
// --signal=B:USR1@90 --requeue, is checkpointed before the limit, requeued by
// torpor batch, restarted on two other nodes (its first ones are drained)
// and finishes with the undisturbed checksum.
func TestSlurmTimeLimit(t *testing.T) {
	u := testuser.New(t)
	site := newSlurmSite(t, 4, slurmOptions{graceTime: 30 * time.Second})
	want := reference(t, "mpirun.openmpi", 4, site.ring, slurmRing(3000, false)...)
	// 3000 iterations of 20 ms: about 65 s of work; the limit is 2 minutes
	// and Slurm sends USR1 about 60 s before it, at one of its periodic
	// checks (up to 60 s earlier, says sbatch(1)). A run it signals again
	// is requeued again: every run makes progress.
	id := site.s.sbatch(u, site.script(append([]string{"-n", "4", site.ring}, slurmRing(3000, true)...)...),
		"-J", "ring", "--nodes=2", "--time=2", "--signal=B:USR1@60", "--requeue", "--open-mode=append")
	site.watch(id)
	site.s.waitJob(id, time.Minute, "RUNNING")
	first := site.s.nodes(id)
	// Its nodes take no new job (the running one stays): the next run goes
	// elsewhere.
	site.s.cmd("scontrol", "update", "nodename="+strings.Join(first, ","), "state=drain", "reason=torpor-test")
	t.Cleanup(func() {
		site.s.run(nil, "scontrol", "update", "nodename="+strings.Join(first, ","), "state=resume")
	})
	out := site.finished(id, want, 6*time.Minute)
	t.Logf("output of Slurm job %s:\n%s", id, lastLines(out, 12))
	if !committedRE.MatchString(out) || !strings.Contains(out, "requeued; its next run restarts job slurm-"+id) {
		t.Fatalf("no checkpoint and requeue by torpor batch in the output:\n%s", out)
	}
	acct := site.acct(id)
	recs := sacctRecords(t, acct)
	if len(recs) < 2 || recs[0]["State"] != "REQUEUED" || recs[len(recs)-1]["State"] != "COMPLETED" {
		t.Fatalf("sacct shows no requeued run followed by a completed one:\n%s", acct)
	}
	for _, r := range recs[1:] {
		for _, h := range site.expand(r["NodeList"]) {
			if slices.Contains(first, h) {
				t.Fatalf("a restarted run is on %s, the first was on %v: want other nodes\n%s", r["NodeList"], first, acct)
			}
		}
	}
	if !strings.Contains(out, "restarted from slurm-"+id+"/") {
		t.Fatalf("the second run did not restart the job from its checkpoint:\n%s", out)
	}
}

// TestSlurmPreemption: a high-priority job preempts a running torpor job
// (PreemptMode=REQUEUE, GraceTime 60 s, preempt_send_user_signal: the batch
// script gets its --signal signal). torpor batch checkpoints and stops the
// job within the grace time, the high-priority job runs on the nodes it
// freed, and the torpor job comes back when they are free again and finishes
// with the undisturbed checksum. Nothing waits for a fixed time and nothing
// is done in a chosen order: Slurm decides when each step happens.
func TestSlurmPreemption(t *testing.T) {
	const grace = 60 * time.Second
	u := testuser.New(t)
	site := newSlurmSite(t, 3, slurmOptions{graceTime: grace, ctldParams: "preempt_send_user_signal"})
	want := reference(t, "mpirun.openmpi", 4, site.ring, slurmRing(2000, false)...)
	low := site.s.sbatch(u, site.script(append([]string{"-n", "4", site.ring}, slurmRing(2000, true)...)...),
		"-J", "ring", "-p", "low", "--nodes=2", "--signal=B:USR1@60", "--requeue", "--open-mode=append")
	site.watch(low)
	site.s.waitJob(low, time.Minute, "RUNNING")
	first := site.s.nodes(low)
	// The torpor job has made progress before it is preempted.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(site.s.output(low), " iter=") {
		if time.Now().After(deadline) {
			t.Fatalf("Slurm job %s shows no progress:\n%s", low, site.s.output(low))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Every node, for 5 s: it needs the torpor job's nodes.
	high := site.s.sbatch(nil, "#!/bin/bash\nhostname\nsleep 5\n", "-J", "urgent", "-p", "high", "--nodes=3")
	site.s.waitJob(high, 3*time.Minute, "COMPLETED")
	out := site.finished(low, want, 6*time.Minute)
	t.Logf("output of Slurm job %s:\n%s", low, lastLines(out, 12))
	m := committedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("torpor batch did not checkpoint and stop the preempted job:\n%s", out)
	}
	took, err := time.ParseDuration(m[2])
	if err != nil || took >= grace {
		t.Fatalf("checkpoint %s took %s (%v), GraceTime is %v", m[1], m[2], err, grace)
	}
	lowAcct, highAcct := site.acct(low), site.acct(high)
	lr, hr := sacctRecords(t, lowAcct), sacctRecords(t, highAcct)
	if len(lr) < 2 || !slices.Contains([]string{"PREEMPTED", "REQUEUED"}, lr[0]["State"]) || lr[len(lr)-1]["State"] != "COMPLETED" {
		t.Fatalf("sacct shows no preempted run of %s followed by a completed one:\n%s", low, lowAcct)
	}
	// The high job ran on the freed nodes, after the first run ended and
	// before the last one started.
	hn := site.expand(hr[len(hr)-1]["NodeList"])
	for _, h := range first {
		if !slices.Contains(hn, h) {
			t.Fatalf("the high-priority job ran on %v, not on the torpor job's nodes %v", hn, first)
		}
	}
	if hr[len(hr)-1]["Start"] < lr[0]["End"] || lr[len(lr)-1]["Start"] < hr[len(hr)-1]["End"] {
		t.Fatalf("the runs overlap: %s %s–%s, %s %s–%s, %s %s–%s", low, lr[0]["Start"], lr[0]["End"],
			high, hr[len(hr)-1]["Start"], hr[len(hr)-1]["End"], low, lr[len(lr)-1]["Start"], lr[len(lr)-1]["End"])
	}
}

// TestSlurmAdminRequeue: `scontrol requeue` by an administrator mid-run.
// Slurm sends the batch script SIGTERM and SIGKILL KillWait later; torpor
// batch checkpoints and stops the job in between, and the next run
// restarts it. The job also takes a checkpoint every 10 s.
func TestSlurmAdminRequeue(t *testing.T) {
	u := testuser.New(t)
	site := newSlurmSite(t, 3, slurmOptions{graceTime: 30 * time.Second, killWait: 30 * time.Second})
	want := reference(t, "mpirun.openmpi", 4, site.ring, slurmRing(1500, false)...)
	id := site.s.sbatch(u, site.script(append([]string{"--checkpoint-interval", "10s", "-n", "4", site.ring}, slurmRing(1500, true)...)...),
		"-J", "ring", "--nodes=2", "--requeue", "--open-mode=append")
	site.watch(id)
	site.s.waitJob(id, time.Minute, "RUNNING")
	deadline := time.Now().Add(time.Minute)
	for strings.Count(site.s.output(id), " iter=") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("Slurm job %s shows no progress:\n%s", id, site.s.output(id))
		}
		time.Sleep(200 * time.Millisecond)
	}
	site.s.cmd("scontrol", "requeue", id)
	out := site.finished(id, want, 5*time.Minute)
	t.Logf("output of Slurm job %s:\n%s", id, lastLines(out, 12))
	if !strings.Contains(out, "terminated: checkpointing job slurm-"+id) || !committedRE.MatchString(out) {
		t.Fatalf("torpor batch did not checkpoint the job on SIGTERM:\n%s", out)
	}
	if !strings.Contains(out, "restarted from slurm-"+id+"/") {
		t.Fatalf("the second run did not restart the job from its checkpoint:\n%s", out)
	}
	// --checkpoint-interval 10s: the second run (about 30 s) took some.
	if !regexp.MustCompile(`checkpoint \S+ \(interval\) committed`).MatchString(out) {
		t.Fatalf("no periodic checkpoint in the output:\n%s", out)
	}
	acct := site.acct(id)
	recs := sacctRecords(t, acct)
	if len(recs) != 2 || recs[0]["State"] != "REQUEUED" || recs[1]["State"] != "COMPLETED" {
		t.Fatalf("sacct shows other runs than one requeued and one completed:\n%s\n%s", acct, site.s.logs())
	}
}

// TestSlurmUsers: one user's batch script cannot act on another user's
// torpor job through any verb, cannot place job-nodes outside its own
// allocation, and cannot borrow another user's allocation; nor can a user
// outside Slurm. The other user's job finishes undisturbed.
func TestSlurmUsers(t *testing.T) {
	alice, bob := testuser.New(t), testuser.New(t)
	site := newSlurmSite(t, 3, slurmOptions{graceTime: 30 * time.Second})
	want := reference(t, "mpirun.openmpi", 4, site.ring, slurmRing(1000, false)...)
	a := site.s.sbatch(alice, site.script(append([]string{"-n", "4", site.ring}, slurmRing(1000, true)...)...),
		"-J", "ring", "--nodes=2")
	site.s.waitJob(a, time.Minute, "RUNNING")
	aliceNodes := site.s.nodes(a)
	job := "slurm-" + a
	site.waitState(job, "running", time.Minute)

	// Bob's batch script, on the one node left, tries everything; each
	// attempt prints "== NAME rc=N" and its output.
	var free string
	for _, h := range []string{"h1", "h2", "h3"} {
		if !slices.Contains(aliceNodes, h) {
			free = h
		}
	}
	attempts := []struct{ name, cmd, want string }{
		{"ps", "torpor ps", ""},
		{"checkpoint", "torpor checkpoint " + job, "belongs to uid"},
		{"suspend", "torpor suspend " + job, "belongs to uid"},
		{"migrate", "torpor migrate " + job + " --node n0 --to " + free, "belongs to uid"},
		{"cancel", "torpor cancel " + job, "belongs to uid"},
		{"wait", "torpor wait " + job, "belongs to uid"},
		{"restart", "torpor restart " + job, "belongs to uid"},
		{"resume", "torpor resume " + job, "belongs to uid"},
		{"ls", "torpor ls " + job, "belongs to uid"},
		{"run-elsewhere", "torpor run --name bobs -n 1 --host " + aliceNodes[0] + " /bin/true", "is not a node of Slurm job"},
		{"borrow-allocation", "SLURM_JOB_ID=" + a + " torpor run --name bobs -n 1 --host " + aliceNodes[0] + " /bin/true", "is not yours"},
		{"outside-slurm", "env -u SLURM_JOB_ID torpor run --name bobs -n 1 --host " + free + " /bin/true", "SLURM_JOB_ID is not set"},
		{"run-own-node", "torpor run --name bobs --plain --host " + free + " /bin/true", ""},
	}
	var b strings.Builder
	fmt.Fprintf(&b, "#!/bin/bash\nexport TORPOR_SOCKET=%s/$(hostname)/user.sock PATH=%s:$PATH\ncd %s\n", site.users, filepath.Dir(site.torpor), site.dir)
	for _, at := range attempts {
		fmt.Fprintf(&b, "out=$(%s 2>&1); echo \"== %s rc=$?\"; echo \"$out\"\n", at.cmd, at.name)
	}
	bj := site.s.sbatch(bob, b.String(), "-J", "probe", "--nodes=1", "-w", free)
	site.s.waitJob(bj, 3*time.Minute, "COMPLETED", "FAILED")
	out := site.s.output(bj)
	t.Logf("bob's batch script on %s:\n%s", free, out)
	for _, at := range attempts {
		re := regexp.MustCompile(`(?m)^== ` + regexp.QuoteMeta(at.name) + ` rc=(\d+)\n((?:[^=].*\n|\n)*)`)
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no result of %s in bob's output", at.name)
		}
		switch {
		case at.name == "ps":
			if m[1] != "0" || strings.Contains(m[2], job) {
				t.Errorf("bob's torpor ps: rc=%s, lists alice's job:\n%s", m[1], m[2])
			}
		case at.want == "":
			if m[1] != "0" {
				t.Errorf("%s: rc=%s, want 0:\n%s", at.name, m[1], m[2])
			}
		case m[1] == "0" || !strings.Contains(m[2], at.want):
			t.Errorf("%s: rc=%s, want a refusal with %q:\n%s", at.name, m[1], at.want, m[2])
		}
	}
	// Outside Slurm, on the coordinator's own socket, the same: no Slurm
	// job, no job-node.
	if out, code := site.cliAs(as(bob), "run", "--name", "bobs2", "--plain", "--host", free, "/bin/true"); code == 0 || !strings.Contains(out, "SLURM_JOB_ID is not set") {
		t.Errorf("bob outside Slurm: exit %d\n%s", code, out)
	}
	site.finished(a, want, 3*time.Minute)
	site.acct(a)
	site.acct(bj)
}

// TestSlurmBatchKilled: a batch script killed outright (SIGKILL: torpor
// batch gets no chance) ends its Slurm job, but not the torpor job's
// claim on nothing: the coordinator sees the allocation gone, checkpoints
// the job and stops it, so the nodes are free. Submitted again with the
// job's name, the script restarts it, and it finishes with the undisturbed
// checksum.
func TestSlurmBatchKilled(t *testing.T) {
	u := testuser.New(t)
	site := newSlurmSite(t, 3, slurmOptions{graceTime: 30 * time.Second})
	want := reference(t, "mpirun.openmpi", 4, site.ring, slurmRing(1500, false)...)
	args := append([]string{"-n", "4", site.ring}, slurmRing(1500, true)...)
	first := site.s.sbatch(u, site.script(args...), "-J", "ring", "--nodes=2")
	site.watch(first)
	site.s.waitJob(first, time.Minute, "RUNNING")
	job := "slurm-" + first
	site.waitState(job, "running", time.Minute)
	deadline := time.Now().Add(time.Minute)
	for strings.Count(site.s.output(first), " iter=") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("Slurm job %s shows no progress:\n%s", first, site.s.output(first))
		}
		time.Sleep(200 * time.Millisecond)
	}
	site.s.cmd("scancel", "--batch", "--signal=KILL", first)
	site.s.waitJob(first, time.Minute, "FAILED", "CANCELLED", "COMPLETED")
	killed := time.Now()
	site.waitState(job, "suspended", time.Minute)
	t.Logf("job %s suspended by the coordinator %v after its batch script was killed", job, time.Since(killed).Round(100*time.Millisecond))
	if !strings.Contains(site.logs["coordinator"].String(), "the job's Slurm allocation is gone") {
		t.Fatalf("the coordinator did not say why it stopped %s:\n%s", job, lastLines(site.logs["coordinator"].String(), 20))
	}
	second := site.s.sbatch(u, site.script(append([]string{"--name", job}, args...)...), "-J", "ring", "--nodes=2")
	site.watch(second)
	out := site.finished(second, want, 3*time.Minute)
	t.Logf("output of Slurm job %s:\n%s", second, lastLines(out, 6))
	if !strings.Contains(out, "torpor: job "+job+" restarted from "+job+"/") {
		t.Fatalf("the second script did not restart %s:\n%s", job, out)
	}
	site.acct(first)
	site.acct(second)
}
