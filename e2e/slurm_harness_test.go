package e2e

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/testuser"
)

// A real Slurm 22.05 (Debian 12's slurmctld, slurmd, slurmdbd, munge and
// MariaDB) on the simulated hosts of a cluster, for the TestSlurm* tests.
// Everything is private to the test: a MUNGE daemon with its own key and
// socket, a MariaDB with its own data directory, and slurm.conf,
// slurmdbd.conf, state, spool and log files in <c.dir>/slurm. Nothing of the
// system's /etc/slurm, /etc/munge, /var/lib/mysql or services is used.
//
// Where things run:
//   - munged: the root network namespace (its socket is a file, which every
//     namespace reaches), as user munge.
//   - mariadbd, slurmdbd, slurmctld: host 1's network namespace, so every
//     host reaches them at 198.18.0.1; slurmdbd and slurmctld each in a UTS
//     namespace named "head" (slurmctld refuses to run unless its host name
//     is SlurmctldHost, slurmdbd unless it is DbdHost). MariaDB listens on
//     127.0.0.1 of host 1 only.
//   - slurmd of host i: host i's network namespace (nsenter --net, not
//     `ip netns exec`: its private mount namespace hides /sys/fs/cgroup) and a
//     UTS namespace named h<i>; NodeName=h<i> NodeAddr=198.18.0.<i>. Batch
//     scripts run there, as their submitter.
//   - client commands: host 1's network namespace (nsenter), SLURM_CONF set.
//
// Ports are Slurm's and MariaDB's defaults: the namespaces are the test's
// own, so nothing else listens there.
//
// Findings (Slurm 22.05.8, measured with this harness and read in its source):
//
//   - Requeue delay. Every requeue (preemption with PreemptMode=REQUEUE,
//     `scontrol requeue`, a node failure) sets the job's begin time to
//     now + the credential lifetime + 1 s (job_mgr.c, _job_requeue_op: the
//     new launch credential must be newer than the revoked one). The
//     lifetime is AuthInfo's cred_expire, default 120 s, minimum 5: by
//     default a requeued job waits 121 s (Reason=BeginTime). This harness
//     sets cred_expire=slurmCredExpire (5 s): a requeued job starts again
//     about 6 s after its requeue (measured 5.9-6.4 s; the main scheduler
//     runs every second, sched_interval=1). `scontrol update jobid=N
//     starttime=now` would release it at once.
//   - Preemption to requeue. With GraceTime g the job is requeued (and its
//     batch script killed) about max(g, MessageTimeout+2 s) after the
//     preemption: measured 12 s with g=2 and g=5 and MessageTimeout=10,
//     6 s with g=5 and MessageTimeout=4. The harness sets MessageTimeout=5.
//     The requeue is done by the main scheduler's next attempt at the
//     preemptor, not exactly at the grace time's end.
//   - Preemption signals with GraceTime (preempt.c, measured with traps):
//     at preemption Slurm sends SIGCONT and SIGTERM to the job's steps only
//     (processes started by srun; srun itself reports "Job step aborted").
//     The batch shell and the processes it started directly get nothing.
//     When the job is requeued (grace over), SIGCONT and SIGTERM go to the
//     batch shell, its children and the steps, SIGKILL KillWait later.
//   - SlurmctldParameters=preempt_send_user_signal (22.05 has no
//     PreemptParameters=send_user_signal, that option came later): a job
//     submitted with --signal=B:USR1@60 gets SIGUSR1 (after a SIGCONT) in
//     its batch shell at preemption instead, and its steps get nothing; the
//     end of grace is as above. Without "B:" the signal goes to the steps.
//   - The output file of a requeued job is truncated when it starts again
//     unless the job was submitted with --open-mode=append.
//   - slurmctld registers its cluster itself: slurmdbd adds an unknown
//     cluster on DBD_REGISTER_CTLD (no `sacctmgr add cluster` needed), and
//     jobs of users with no association are accounted (no
//     AccountingStorageEnforce). sacct -D shows a preempted run as PREEMPTED
//     and a `scontrol requeue`d one as REQUEUED, then the new run.
//   - Clients and slurmctld authenticate to slurmdbd with the MUNGE socket
//     of AccountingStoragePass, not AuthInfo's.

const (
	// slurmCredExpire is AuthInfo's cred_expire: a requeued job's begin
	// time is now + slurmCredExpire + 1.
	slurmCredExpire  = 5
	slurmClusterName = "torpor"
	slurmHeadName    = "head"
	slurmDBUser      = "slurm"
)

type slurmCluster struct {
	t     *testing.T
	c     *cluster
	dir   string
	conf  string
	munge string // munged's socket
	netns string // host 1's namespace file: where clients run
	hosts int

	mu      sync.Mutex
	procs   []*slurmProc
	outputs map[string]string // job id -> its -o file
}

// slurmProc is one daemon the harness started.
type slurmProc struct {
	name    string
	cmd     *exec.Cmd
	out     *logBuffer // its stdout and stderr
	logFile string     // its own log file, if it has one
}

// slurmOptions are the knobs of the generated configuration.
type slurmOptions struct {
	graceTime time.Duration
	// killWait is KillWait: the time between SIGTERM and SIGKILL to a job
	// that is cancelled, requeued or past its limit (at least 2 s).
	killWait time.Duration
	// ctldParams is SlurmctldParameters (e.g. "preempt_send_user_signal").
	ctldParams string
	// ctldDebug is SlurmctldDebug ("" : info).
	ctldDebug string
	// extra are more slurm.conf lines, before the nodes and partitions.
	extra []string
}

// startSlurm starts munge, mariadb, slurmdbd, slurmctld and one slurmd per
// host of c, all torn down by t.Cleanup, and waits until every node is idle.
func startSlurm(t *testing.T, c *cluster, graceTime time.Duration) *slurmCluster {
	t.Helper()
	return startSlurmWith(t, c, slurmOptions{graceTime: graceTime})
}

func startSlurmWith(t *testing.T, c *cluster, o slurmOptions) *slurmCluster {
	t.Helper()
	for _, bin := range []string{"slurmctld", "slurmd", "slurmdbd", "sbatch", "munged", "mariadbd", "mariadb-install-db", "nsenter", "unshare", "setpriv"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: install Slurm, MUNGE and MariaDB with scripts/deps.sh", bin)
		}
	}
	start := time.Now()
	s := &slurmCluster{t: t, c: c, dir: filepath.Join(c.dir, "slurm"), hosts: len(c.sim.Hosts),
		netns: c.sim.Host(1).NetNSPath(), outputs: map[string]string{}}
	s.conf = filepath.Join(s.dir, "etc", "slurm.conf")
	t.Cleanup(s.close)
	for _, d := range []string{"etc", "log", "run", "ctld", "spool", "jobs"} {
		s.mkdir(filepath.Join(s.dir, d), 0o755, 0, 0)
	}
	s.startMunge()
	s.startMariaDB()
	s.writeConfig(o)
	for i := 1; i <= s.hosts; i++ {
		s.mkdir(filepath.Join(s.dir, "spool", fmt.Sprintf("h%d", i)), 0o755, 0, 0)
	}
	s.startDaemon("slurmdbd", s.netns, slurmHeadName, filepath.Join(s.dir, "log", "slurmdbd.log"), "slurmdbd", "-D")
	s.waitFor("slurmdbd", 60*time.Second, func() (bool, string) {
		out, code := s.run(nil, "sacctmgr", "-n", "-P", "list", "cluster")
		return code == 0, out
	})
	s.startDaemon("slurmctld", s.netns, slurmHeadName, filepath.Join(s.dir, "log", "slurmctld.log"), "slurmctld", "-D", "-i")
	s.waitFor("slurmctld", 60*time.Second, func() (bool, string) {
		out, code := s.run(nil, "scontrol", "ping")
		return code == 0 && strings.Contains(out, "is UP"), out
	})
	for i := 1; i <= s.hosts; i++ {
		node := fmt.Sprintf("h%d", i)
		s.startDaemon("slurmd-"+node, c.sim.Host(i).NetNSPath(), node, filepath.Join(s.dir, "log", "slurmd-"+node+".log"),
			"slurmd", "-D", "-N", node)
	}
	s.waitFor("idle nodes", 60*time.Second, func() (bool, string) {
		out, code := s.run(nil, "sinfo", "-h", "-N", "-p", "low", "-o", "%N %t")
		if code != 0 {
			return false, out
		}
		idle := 0
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[1] == "idle" {
				idle++
			}
		}
		return idle == s.hosts, out
	})
	t.Logf("slurm: %d nodes idle %v after start", s.hosts, time.Since(start).Round(time.Millisecond))
	return s
}

func (s *slurmCluster) mkdir(dir string, mode os.FileMode, uid, gid int) {
	s.t.Helper()
	if err := os.MkdirAll(dir, mode); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		s.t.Fatal(err)
	}
}

func (s *slurmCluster) writeFile(path, text string, mode os.FileMode, uid, gid int) {
	s.t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Chown(path, uid, gid); err != nil {
		s.t.Fatal(err)
	}
}

func lookupIDs(t *testing.T, name string) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("user %s: %v (install munge and mariadb-server)", name, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// startMunge runs a munged of the test's own: its own key, socket, pid,
// log and seed files in <dir>/munge, as user munge.
func (s *slurmCluster) startMunge() {
	s.t.Helper()
	uid, gid := lookupIDs(s.t, "munge")
	d := filepath.Join(s.dir, "munge")
	s.mkdir(d, 0o755, uid, gid) // munged wants its socket directory searchable by all
	key := make([]byte, 1024)
	if _, err := rand.Read(key); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "munge.key"), key, 0o400); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(d, "munge.key"), uid, gid); err != nil {
		s.t.Fatal(err)
	}
	s.munge = filepath.Join(d, "munge.socket")
	s.spawn("munged", "", "", filepath.Join(d, "munged.log"),
		&syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid)}},
		"munged", "--foreground", "--key-file", filepath.Join(d, "munge.key"), "--socket", s.munge,
		"--pid-file", filepath.Join(d, "munged.pid"), "--log-file", filepath.Join(d, "munged.log"),
		"--seed-file", filepath.Join(d, "munged.seed"), "--num-threads", "4")
	s.waitFor("munged", 20*time.Second, func() (bool, string) {
		cred, err := exec.Command("munge", "--socket", s.munge, "-n").Output()
		if err != nil {
			return false, err.Error()
		}
		un := exec.Command("unmunge", "--socket", s.munge)
		un.Stdin = bytes.NewReader(cred)
		out, err := un.CombinedOutput()
		return err == nil, string(out)
	})
}

// dbSocket is the private MariaDB's socket.
func (s *slurmCluster) dbSocket() string { return filepath.Join(s.dir, "db", "mysqld.sock") }

// startMariaDB initialises a data directory and runs mariadbd (as user
// mysql) in host 1's namespace on 127.0.0.1:3306, with a user for slurmdbd.
func (s *slurmCluster) startMariaDB() {
	s.t.Helper()
	uid, gid := lookupIDs(s.t, "mysql")
	d := filepath.Join(s.dir, "db")
	data := filepath.Join(d, "data")
	s.mkdir(d, 0o755, uid, gid)
	s.mkdir(data, 0o700, uid, gid)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// --no-defaults: not a word of the system's /etc/mysql.
	if out, err := exec.CommandContext(ctx, "mariadb-install-db", "--no-defaults", "--user=mysql", "--datadir="+data,
		"--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve").CombinedOutput(); err != nil {
		s.t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	s.spawn("mariadbd", s.netns, "", filepath.Join(d, "error.log"), nil,
		"mariadbd", "--no-defaults", "--user=mysql", "--datadir="+data, "--socket="+s.dbSocket(),
		"--port=3306", "--bind-address=127.0.0.1", "--pid-file="+filepath.Join(d, "mariadbd.pid"),
		"--log-error="+filepath.Join(d, "error.log"), "--skip-name-resolve", "--skip-log-bin",
		"--innodb-buffer-pool-size=64M", "--innodb-lock-wait-timeout=900", "--innodb-log-file-size=64M")
	s.waitFor("mariadbd", 60*time.Second, func() (bool, string) {
		out, err := exec.Command("mariadb-admin", "--no-defaults", "--socket="+s.dbSocket(), "-uroot", "ping").CombinedOutput()
		return err == nil, string(out)
	})
	sql := fmt.Sprintf("CREATE USER '%[1]s'@'127.0.0.1' IDENTIFIED BY '%[1]s-pw'; GRANT ALL ON slurm_acct_db.* TO '%[1]s'@'127.0.0.1';", slurmDBUser)
	if out, err := exec.Command("mariadb", "--no-defaults", "--socket="+s.dbSocket(), "-uroot", "-e", sql).CombinedOutput(); err != nil {
		s.t.Fatalf("create the database user: %v\n%s", err, out)
	}
}

// writeConfig writes slurm.conf and slurmdbd.conf.
func (s *slurmCluster) writeConfig(o slurmOptions) {
	s.t.Helper()
	d := s.dir
	nodes := fmt.Sprintf("h[1-%d]", s.hosts)
	if s.hosts == 1 {
		nodes = "h1"
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# slurm.conf of a torpor e2e test (e2e/slurm_harness_test.go)")
	w("ClusterName=%s", slurmClusterName)
	w("SlurmctldHost=%s(198.18.0.1)", slurmHeadName)
	w("SlurmUser=root")
	w("SlurmctldPort=6817")
	w("SlurmdPort=6818")
	w("AuthType=auth/munge")
	w("CredType=cred/munge")
	// socket: the private munged, for auth/munge and cred/munge alike.
	// cred_expire: also the requeue delay (see the findings above).
	w("AuthInfo=socket=%s,cred_expire=%d", s.munge, slurmCredExpire)
	w("StateSaveLocation=%s/ctld", d)
	w("SlurmdSpoolDir=%s/spool/%%n", d)
	w("SlurmctldPidFile=%s/run/slurmctld.pid", d)
	w("SlurmdPidFile=%s/run/slurmd-%%n.pid", d)
	w("SlurmctldLogFile=%s/log/slurmctld.log", d)
	w("SlurmdLogFile=%s/log/slurmd-%%n.log", d)
	w("SlurmctldDebug=%s", cmp.Or(o.ctldDebug, "info"))
	w("SlurmdDebug=info")
	w("PlugStackConfig=%s/etc/plugstack.conf", d)
	w("ProctrackType=proctrack/linuxproc")
	w("TaskPlugin=task/none")
	w("JobAcctGatherType=jobacct_gather/none")
	w("SelectType=select/cons_tres")
	w("SelectTypeParameters=CR_CPU")
	w("MailProg=/bin/true")
	w("SlurmdParameters=config_overrides")
	w("ReturnToService=2")
	w("JobRequeue=1")
	// Quick reactions: completed jobs leave slurmctld's memory after 10 s
	// (jobState then asks sacct), a job's processes get SIGKILL 2 s after
	// SIGTERM (KillWait, unless the test needs more), and the main
	// scheduler runs every second (it starts requeued jobs once their begin
	// time passed), the backfill one too (when something changed).
	w("MinJobAge=10")
	w("KillWait=%d", max(int(o.killWait/time.Second), 2))
	// A node is declared failed only after 60 s without an answer: with
	// SlurmdTimeout=9 a slurmd slowed by a restore on a loaded 2-core
	// machine was once taken for dead (NODE_FAIL) and its job requeued.
	w("SlurmdTimeout=60")
	w("MessageTimeout=5") // also bounds the preemption-to-requeue delay
	w("InactiveLimit=0")
	w("SchedulerType=sched/backfill")
	w("SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=100000")
	w("PreemptType=preempt/partition_prio")
	w("PreemptMode=REQUEUE")
	if o.ctldParams != "" {
		w("SlurmctldParameters=%s", o.ctldParams)
	}
	w("AccountingStorageType=accounting_storage/slurmdbd")
	w("AccountingStorageHost=198.18.0.1")
	w("AccountingStoragePort=6819")
	// What clients and slurmctld use to authenticate to slurmdbd: with
	// auth/munge, the socket of the munged (AuthInfo is not used there).
	w("AccountingStoragePass=%s", s.munge)
	w("JobCompType=jobcomp/none")
	for _, l := range o.extra {
		w("%s", l)
	}
	for i := 1; i <= s.hosts; i++ {
		w("NodeName=h%d NodeAddr=198.18.0.%d CPUs=2 RealMemory=1000 State=UNKNOWN", i, i)
	}
	// Whole nodes (OverSubscribe=EXCLUSIVE): one job per node.
	w("PartitionName=low Nodes=%s Default=YES PriorityTier=1 PreemptMode=REQUEUE GraceTime=%d OverSubscribe=EXCLUSIVE MaxTime=INFINITE State=UP",
		nodes, int(o.graceTime/time.Second))
	w("PartitionName=high Nodes=%s PriorityTier=2 PreemptMode=OFF OverSubscribe=EXCLUSIVE MaxTime=INFINITE State=UP", nodes)
	s.writeFile(s.conf, b.String(), 0o644, 0, 0)
	s.writeFile(filepath.Join(d, "etc", "plugstack.conf"), "", 0o644, 0, 0)
	s.writeFile(filepath.Join(d, "etc", "cgroup.conf"), "CgroupPlugin=autodetect\n", 0o644, 0, 0)

	b.Reset()
	w("# slurmdbd.conf of a torpor e2e test")
	w("AuthType=auth/munge")
	w("AuthInfo=socket=%s", s.munge)
	w("DbdHost=%s", slurmHeadName)
	w("DbdPort=6819")
	w("SlurmUser=root")
	w("PidFile=%s/run/slurmdbd.pid", d)
	w("LogFile=%s/log/slurmdbd.log", d)
	w("DebugLevel=info")
	w("StorageType=accounting_storage/mysql")
	w("StorageHost=127.0.0.1")
	w("StoragePort=3306")
	w("StorageUser=%s", slurmDBUser)
	w("StoragePass=%s-pw", slurmDBUser)
	w("StorageLoc=slurm_acct_db")
	// slurmdbd refuses a slurmdbd.conf others may read.
	s.writeFile(filepath.Join(d, "etc", "slurmdbd.conf"), b.String(), 0o600, 0, 0)
}

// spawn starts a daemon as cred (nil: root), in the network namespace file
// netns ("" : the root one) and, if hostname is set, in a new UTS namespace
// with that host name. nsenter, unshare and sh exec: the process's pid is
// the daemon's.
func (s *slurmCluster) spawn(name, netns, hostname, logFile string, cred *syscall.Credential, argv ...string) *slurmProc {
	s.t.Helper()
	var full []string
	if netns != "" {
		full = append(full, "nsenter", "--net="+netns, "--")
	}
	if hostname != "" {
		full = append(full, "unshare", "--uts", "--", "/bin/sh", "-c", `hostname "$0" && exec "$@"`, hostname)
	}
	full = append(full, argv...)
	cmd := exec.Command(full[0], full[1:]...)
	buf := &logBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.Env = s.env()
	cmd.Dir = s.dir
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", name, err)
	}
	p := &slurmProc{name: name, cmd: cmd, out: buf, logFile: logFile}
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p
}

func (s *slurmCluster) startDaemon(name, netns, hostname, logFile string, argv ...string) {
	s.t.Helper()
	s.spawn(name, netns, hostname, logFile, nil, argv...)
}

// waitFor polls ready (every 100 ms) until it holds; it fails the test
// with every daemon's log when timeout passes or a daemon died.
func (s *slurmCluster) waitFor(what string, timeout time.Duration, ready func() (bool, string)) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := ready()
		if ok {
			return
		}
		s.mu.Lock()
		procs := slices.Clone(s.procs)
		s.mu.Unlock()
		for _, p := range procs {
			if exited(p.cmd) {
				s.t.Fatalf("waiting for %s: %s exited (last check: %s)\n%s", what, p.name, last, s.logs())
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s not ready after %v (last check: %s)\n%s", what, timeout, last, s.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logs is the last 40 lines of every daemon's output and log file.
func (s *slurmCluster) logs() string {
	s.mu.Lock()
	procs := slices.Clone(s.procs)
	s.mu.Unlock()
	var b strings.Builder
	for _, p := range procs {
		if out := strings.TrimSpace(p.out.String()); out != "" {
			fmt.Fprintf(&b, "---- %s (output) ----\n%s\n", p.name, lastLines(out, 40))
		}
		if p.logFile != "" {
			data, _ := os.ReadFile(p.logFile)
			fmt.Fprintf(&b, "---- %s (%s) ----\n%s\n", p.name, filepath.Base(p.logFile), lastLines(string(data), 40))
		}
	}
	return b.String()
}

// ctldLog is the tail of slurmctld's log.
func (s *slurmCluster) ctldLog(n int) string {
	data, _ := os.ReadFile(filepath.Join(s.dir, "log", "slurmctld.log"))
	return lastLines(string(data), n)
}

// env is what every Slurm command needs (SLURM_CONF=...).
func (s *slurmCluster) env() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SLURM_") {
			env = append(env, e)
		}
	}
	return append(env, "SLURM_CONF="+s.conf)
}

// clientArgv is argv run in host 1's namespace, as u (nil: root).
func (s *slurmCluster) clientArgv(u *testuser.User, argv ...string) []string {
	full := []string{"nsenter", "--net=" + s.netns, "--"}
	if u != nil {
		full = append(full, "setpriv", "--reuid="+strconv.Itoa(u.UID), "--regid="+strconv.Itoa(u.GID),
			fmt.Sprintf("--groups=%d,%d", u.GID, u.Supplement), "--")
	}
	return append(full, argv...)
}

// run runs a client command as u (nil: root) and returns its stdout (its
// stderr too when it fails) and exit code; -1 if it could not run or took
// more than a minute.
func (s *slurmCluster) run(u *testuser.User, name string, args ...string) (string, int) {
	return s.runIn(u, s.dir, name, args...)
}

func (s *slurmCluster) runIn(u *testuser.User, dir, name string, args ...string) (string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := s.clientArgv(u, append([]string{name}, args...)...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = s.env()
	if u != nil {
		cmd.Env = append(cmd.Env, "HOME="+dir, "USER="+u.Name, "LOGNAME="+u.Name)
	}
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		code := -1
		if ee, ok := err.(*exec.ExitError); ok && ctx.Err() == nil {
			code = ee.ExitCode()
		}
		return stdout.String() + stderr.String(), code
	}
	return stdout.String(), 0
}

// cmd runs a Slurm client command as root in a namespace that reaches
// slurmctld; it fails the test on error and returns stdout.
func (s *slurmCluster) cmd(name string, args ...string) string {
	s.t.Helper()
	out, code := s.run(nil, name, args...)
	if code != 0 {
		s.t.Fatalf("%s %s: exit %d\n%s", name, strings.Join(args, " "), code, out)
	}
	return out
}

// cmdAs is cmd as user u, returning output and exit code instead of failing.
func (s *slurmCluster) cmdAs(u *testuser.User, name string, args ...string) (string, int) {
	s.t.Helper()
	return s.run(u, name, args...)
}

// jobDir is the directory of u's (nil: root's) scripts and outputs, which
// u owns.
func (s *slurmCluster) jobDir(u *testuser.User) string {
	s.t.Helper()
	name, uid, gid := "root", 0, 0
	if u != nil {
		name, uid, gid = u.Name, u.UID, u.GID
	}
	d := filepath.Join(s.dir, "jobs", name)
	if _, err := os.Stat(d); err != nil {
		s.mkdir(d, 0o755, uid, gid)
	}
	return d
}

// sbatch submits script as user u (nil: root) with extra sbatch args and
// returns the job id. The job's output (-o) is <jobDir>/<id>.out.
func (s *slurmCluster) sbatch(u *testuser.User, script string, args ...string) string {
	s.t.Helper()
	d := s.jobDir(u)
	f, err := os.CreateTemp(d, "job-*.sh")
	if err != nil {
		s.t.Fatal(err)
	}
	f.Close()
	uid, gid := 0, 0
	if u != nil {
		uid, gid = u.UID, u.GID
	}
	s.writeFile(f.Name(), script, 0o755, uid, gid)
	argv := append([]string{"--parsable", "-o", filepath.Join(d, "%j.out"), "-D", d}, args...)
	argv = append(argv, f.Name())
	out, code := s.runIn(u, d, "sbatch", argv...)
	if code != 0 {
		s.t.Fatalf("sbatch %s: exit %d\n%s", strings.Join(argv, " "), code, out)
	}
	// --parsable: "<id>" or "<id>;<cluster>".
	id := strings.TrimSpace(strings.SplitN(strings.TrimSpace(out), ";", 2)[0])
	if _, err := strconv.Atoi(id); err != nil {
		s.t.Fatalf("sbatch printed %q", out)
	}
	s.mu.Lock()
	s.outputs[id] = filepath.Join(d, id+".out")
	s.mu.Unlock()
	return id
}

// output is the contents of job id's output file so far.
func (s *slurmCluster) output(id string) string {
	s.mu.Lock()
	path := s.outputs[id]
	s.mu.Unlock()
	if path == "" {
		s.t.Fatalf("job %s was not submitted with sbatch", id)
	}
	data, _ := os.ReadFile(path)
	return string(data)
}

// showJob is `scontrol show job -o id` as key=value pairs (nil once
// slurmctld forgot the job, MinJobAge after its end).
func (s *slurmCluster) showJob(id string) map[string]string {
	s.t.Helper()
	out, code := s.run(nil, "scontrol", "show", "job", "-o", id)
	if code != 0 {
		if strings.Contains(out, "Invalid job id") {
			return nil
		}
		s.t.Fatalf("scontrol show job %s: exit %d\n%s", id, code, out)
	}
	kv := map[string]string{}
	for _, f := range strings.Fields(out) {
		if k, v, ok := strings.Cut(f, "="); ok {
			if _, seen := kv[k]; !seen {
				kv[k] = v
			}
		}
	}
	return kv
}

// jobState is the state of job id (PENDING, RUNNING, COMPLETED, ...):
// slurmctld's, or the accounting's last record once slurmctld forgot it.
func (s *slurmCluster) jobState(id string) string {
	s.t.Helper()
	if kv := s.showJob(id); kv != nil {
		return kv["JobState"]
	}
	out := s.cmd("sacct", "-j", id, "-X", "-n", "-P", "-o", "State")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	// "CANCELLED by 0" -> CANCELLED
	f := strings.Fields(lines[len(lines)-1])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// nodes is job id's node list, expanded (nil while it has none).
func (s *slurmCluster) nodes(id string) []string {
	s.t.Helper()
	kv := s.showJob(id)
	if kv == nil || kv["NodeList"] == "" || kv["NodeList"] == "(null)" {
		return nil
	}
	return strings.Fields(s.cmd("scontrol", "show", "hostnames", kv["NodeList"]))
}

// waitJob waits until job id's state is one of states.
func (s *slurmCluster) waitJob(id string, timeout time.Duration, states ...string) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := s.jobState(id)
		if slices.Contains(states, st) {
			return
		}
		if time.Now().After(deadline) {
			out, _ := s.run(nil, "scontrol", "show", "job", id)
			s.t.Fatalf("job %s is %s after %v, want %v\n%s\n---- slurmctld ----\n%s", id, st, timeout, states, out, s.ctldLog(40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sacct is the accounting of job id, one line per run (-D: a requeued run
// too, as REQUEUED or PREEMPTED), without steps (-X), with a header:
// JobID|JobName|User|State|ExitCode|Partition|NodeList|Submit|Start|End.
func (s *slurmCluster) sacct(id string) string {
	s.t.Helper()
	return s.cmd("sacct", "-j", id, "-D", "-X", "--parsable2",
		"-o", "JobID,JobName,User,State,ExitCode,Partition,NodeList,Submit,Start,End")
}

// close cancels every job, waits for their processes to end, stops the
// daemons in reverse order of their start and reports what was left.
func (s *slurmCluster) close() {
	s.mu.Lock()
	procs := slices.Clone(s.procs)
	s.mu.Unlock()
	running := func(name string) bool {
		for _, p := range procs {
			if p.name == name && !exited(p.cmd) {
				return true
			}
		}
		return false
	}
	if running("slurmctld") {
		s.cancelAll()
	}
	for i := len(procs) - 1; i >= 0; i-- {
		stop(procs[i].cmd, syscall.SIGTERM)
	}
	// What a slurmd started and outlived it (slurmstepd, job processes): by
	// pid, found by its network namespace.
	if left := s.leftovers(); len(left) > 0 {
		s.t.Errorf("slurm: processes left in the hosts' namespaces, killed: %s", describe(left))
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if s.t.Failed() {
		s.t.Logf("slurm logs:\n%s", s.logs())
	}
}

// cancelAll cancels every job and waits (30 s at most) until slurmctld
// has none left that is not finished and no job process is left.
func (s *slurmCluster) cancelAll() {
	out, code := s.run(nil, "squeue", "-h", "-o", "%i")
	if code != 0 {
		return
	}
	ids := strings.Fields(out)
	if len(ids) == 0 {
		return
	}
	if out, code := s.run(nil, "scancel", ids...); code != 0 {
		s.t.Logf("scancel: %s", out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, code := s.run(nil, "squeue", "-h", "-o", "%i %T")
		left := s.leftovers()
		if code == 0 && strings.TrimSpace(out) == "" && len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Errorf("slurm: 30 s after scancel: squeue %q, processes %s", out, describe(left))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// leftovers are the pids of processes in a host's network namespace that
// are not daemons of the harness.
func (s *slurmCluster) leftovers() []int {
	inodes := map[uint64]bool{}
	for _, h := range s.c.sim.Hosts {
		var st syscall.Stat_t
		if err := syscall.Stat(h.NetNSPath(), &st); err == nil {
			inodes[st.Ino] = true
		}
	}
	// This process too: netquiesce's setns on a locked thread can leave
	// the thread group leader's ns/net pointing into a host.
	mine := map[int]bool{os.Getpid(): true}
	s.mu.Lock()
	for _, p := range s.procs {
		if p.cmd.ProcessState == nil && !exited(p.cmd) {
			mine[p.cmd.Process.Pid] = true
		}
	}
	s.mu.Unlock()
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || mine[pid] {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st); err != nil || !inodes[st.Ino] {
			continue
		}
		// A daemon's own helper (slurmctld's slurmscriptd) ends with it.
		if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i > 0 {
				if f := strings.Fields(string(stat[i+1:])); len(f) > 1 {
					if ppid, _ := strconv.Atoi(f[1]); mine[ppid] {
						continue
					}
				}
			}
		}
		pids = append(pids, pid)
	}
	return pids
}

// TestSlurmHarness: a real Slurm on three simulated hosts runs a user's
// batch job as that user and accounts it, preempts and requeues a
// low-priority job for a high one, and requeues a job on `scontrol requeue`.
func TestSlurmHarness(t *testing.T) {
	u := testuser.New(t) // before the cluster: removed after its processes
	c := newCluster(t, 3)
	s := startSlurm(t, c, 2*time.Second)

	// 1. A user's job runs as the user, on a node of the cluster, and is
	// accounted under the user's name.
	id := s.sbatch(u, "#!/bin/bash\nhostname; id -u\n", "--nodes=2")
	s.waitJob(id, 30*time.Second, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
	if st := s.jobState(id); st != "COMPLETED" {
		t.Fatalf("job %s: %s\n%s\n%s", id, st, s.output(id), s.ctldLog(40))
	}
	f := strings.Fields(s.output(id))
	if len(f) != 2 || !slices.Contains([]string{"h1", "h2", "h3"}, f[0]) || f[1] != strconv.Itoa(u.UID) {
		t.Fatalf("job %s printed %q, want a host name h1..h3 and uid %d", id, s.output(id), u.UID)
	}
	s.waitSacct(id, 20*time.Second, func(recs [][]string) bool {
		return len(recs) == 1 && recs[0][2] == u.Name && recs[0][3] == "COMPLETED"
	})

	// 2. A low job on every node is preempted by a high one, requeued, and
	// runs again once the high one ended.
	low := s.sbatch(u, "#!/bin/bash\necho run $SLURM_RESTART_COUNT on $(hostname)\nexec sleep 300\n", "--nodes=3")
	s.waitJob(low, 30*time.Second, "RUNNING")
	high := s.sbatch(nil, "#!/bin/bash\nsleep 2\n", "--partition=high", "--nodes=1")
	s.waitJob(low, 30*time.Second, "PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED")
	preempted := time.Now()
	s.waitJob(high, 30*time.Second, "COMPLETED")
	s.waitJob(low, 30*time.Second, "RUNNING")
	t.Logf("low job %s running again %v after its preemption", low, time.Since(preempted).Round(100*time.Millisecond))
	s.waitSacct(low, 20*time.Second, func(recs [][]string) bool {
		return len(recs) == 2 && (recs[0][3] == "PREEMPTED" || recs[0][3] == "REQUEUED") && recs[1][3] == "RUNNING"
	})
	s.cmd("scancel", low)
	s.waitJob(low, 30*time.Second, "CANCELLED")

	// 3. scontrol requeue of a running job.
	rq := s.sbatch(nil, "#!/bin/bash\nexec sleep 300\n", "--nodes=1")
	s.waitJob(rq, 30*time.Second, "RUNNING")
	s.cmd("scontrol", "requeue", rq)
	requeued := time.Now()
	s.waitSacct(rq, 20*time.Second, func(recs [][]string) bool {
		return len(recs) == 2 && recs[0][3] == "REQUEUED"
	})
	s.waitJob(rq, 30*time.Second, "RUNNING")
	t.Logf("requeued job %s running again %v after scontrol requeue", rq, time.Since(requeued).Round(100*time.Millisecond))
	s.cmd("scancel", rq)
	s.waitJob(rq, 30*time.Second, "CANCELLED")
}

// waitSacct waits until the accounting records of job id (sacct's fields,
// without the header) satisfy ok, logs them and returns sacct's output.
func (s *slurmCluster) waitSacct(id string, timeout time.Duration, ok func(recs [][]string) bool) string {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out := s.sacct(id)
		var recs [][]string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			if f := strings.Split(l, "|"); len(f) >= 10 {
				recs = append(recs, f)
			}
		}
		if ok(recs) {
			s.t.Logf("sacct of job %s:\n%s", id, strings.TrimSpace(out))
			return out
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("sacct of job %s after %v:\n%s", id, timeout, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// describe is pids with their command lines.
func describe(pids []int) string {
	var b strings.Builder
	for _, pid := range pids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		fmt.Fprintf(&b, "[%d %s] ", pid, strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")))
	}
	return b.String()
}
