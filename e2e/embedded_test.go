package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torpor-hpc/torpor/internal/embedded"
	"github.com/torpor-hpc/torpor/internal/testuser"
	"github.com/torpor-hpc/torpor/internal/testutil"
	"github.com/torpor-hpc/torpor/netquiesce"
)

// solo is one machine with no daemons, as a new user meets torpor: every
// command embeds the coordinator when none answers. It has its own state,
// checkpoint and run directories, socket and cgroup root.
type solo struct {
	t       *testing.T
	dir     string
	torpor  string
	env     []string
	state   string
	runDir  string
	cgRoot  string // below the cgroup2 mount
	run     *exec.Cmd
	runOut  string
	ringBin string
	want    string // the undisturbed run's checksum
}

// ringArgs make a job of about 15 s on two ranks.
var ringArgs = []string{"-i", "400", "-m", "16", "-s", "20000", "-p", "25"}

// newSoloEnv makes the machine's directories, configuration and
// environment, with no job.
func newSoloEnv(t *testing.T) *solo {
	t.Helper()
	testutil.RequireRoot(t, "an embedded coordinator: namespaces, sandboxes, CRIU and eBPF")
	dir, torpor := buildTorpor(t, "torpor-solo-")
	s := &solo{t: t, dir: dir, torpor: torpor,
		state: filepath.Join(dir, "state"), runDir: filepath.Join(dir, "run"),
		// Not below /torpor: what a job leaves in its parents must go
		// whatever the configured root.
		cgRoot: fmt.Sprintf("torpor-solo%d", os.Getpid()%100000)}
	cfg := fmt.Sprintf("state_dir: %s\ncheckpoint_dir: %s\ncgroup_root: %s\n", s.state, filepath.Join(dir, "ckpt"), s.cgRoot)
	if err := os.WriteFile(filepath.Join(dir, "torpor.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s.env = append(os.Environ(), "TORPOR_CONFIG="+filepath.Join(dir, "torpor.yaml"), "TORPOR_SOCKET="+filepath.Join(dir, "coordinator.sock"))
	t.Cleanup(s.close)
	return s
}

// newSolo is newSoloEnv with the job's program and its undisturbed checksum.
func newSolo(t *testing.T) *solo {
	t.Helper()
	s := newSoloEnv(t)
	s.ringBin = workload(t, "ring.openmpi")
	s.want = reference(t, "mpirun.openmpi", 2, s.ringBin, ringArgs...)
	return s
}

// start runs `torpor run --name solo -n 2 ring` in the background: it hosts
// the embedded coordinator.
func (s *solo) start() {
	s.t.Helper()
	s.runOut = filepath.Join(s.dir, "run.out")
	f, err := os.Create(s.runOut)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	args := append([]string{"run", "--allow-run-as-root", "--run-dir", s.runDir, "--name", "solo", "-n", "2", s.ringBin}, ringArgs...)
	s.run = exec.Command(s.torpor, args...)
	s.run.Env, s.run.Dir, s.run.Stdout, s.run.Stderr = s.env, s.dir, f, f
	if err := s.run.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.waitFor(s.runOut, regexp.MustCompile(`torpor: job solo started`), 60*time.Second)
}

// output is what the job's job-node wrote so far.
func (s *solo) output() string {
	data, _ := os.ReadFile(filepath.Join(s.runDir, "jobs", "solo", "n0.out"))
	return string(data)
}

// progress waits until the job prints one more iteration line.
func (s *solo) progress(what string) {
	s.t.Helper()
	before := strings.Count(s.output(), " iter=")
	deadline := time.Now().Add(60 * time.Second)
	for strings.Count(s.output(), " iter=") <= before {
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: job solo made no progress:\n%s", what, lastLines(s.output(), 10))
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Logf("%s: %s", what, lastLines(s.output(), 1))
}

func (s *solo) waitFor(path string, re *regexp.Regexp, timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(path)
		if re.Match(data) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %q in %s:\n%s", re, path, lastLines(string(data), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cli runs a torpor command to its end and returns stdout, stderr and the
// exit status.
func (s *solo) cli(args ...string) (stdout, stderr string, code int) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.torpor, args...)
	cmd.Env, cmd.Dir = s.env, s.dir
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		s.t.Fatalf("torpor %v: %v", args, err)
	}
	s.t.Logf("torpor %s: exit %d\n%s%s", strings.Join(args, " "), code, lastLines(o.String(), 3), e.String())
	return o.String(), e.String(), code
}

// kill ends the `torpor run` that hosts the coordinator with SIGKILL, as a
// closed terminal, an OOM kill or a session limit would.
func (s *solo) kill() {
	s.t.Helper()
	if err := s.run.Process.Kill(); err != nil {
		s.t.Fatal(err)
	}
	_ = s.run.Wait()
}

// checksum is the "done" line's checksum in out.
func (s *solo) checksum(out string) string {
	s.t.Helper()
	m := doneRE.FindStringSubmatch(out)
	if m == nil {
		s.t.Fatalf("no checksum in:\n%s", lastLines(out, 10))
	}
	return m[2]
}

// jobState is the STATE and REASON of the job in `torpor ps`.
func (s *solo) jobState() (state, reason string) {
	s.t.Helper()
	out, _, code := s.cli("ps", "--json")
	if code != 0 {
		s.t.Fatalf("torpor ps: exit %d", code)
	}
	var jobs []struct {
		Job    string
		State  string
		Reason string
	}
	if err := json.Unmarshal([]byte(out), &jobs); err != nil {
		s.t.Fatalf("torpor ps --json: %v\n%s", err, out)
	}
	for _, j := range jobs {
		if j.Job == "solo" {
			return j.State, j.Reason
		}
	}
	s.t.Fatalf("no job solo in:\n%s", out)
	return "", ""
}

func (s *solo) netns() []string {
	ents, _ := os.ReadDir(netquiesce.NetnsDir)
	var out []string
	prefix := "torpor-" + embedded.ClusterName(s.state) + "-"
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// leftovers names the namespaces, cgroups and processes of this machine's
// embedded stack that still exist.
func (s *solo) leftovers() []string {
	var left []string
	for _, n := range s.netns() {
		left = append(left, "network namespace "+n)
	}
	root := filepath.Join(cgroupMount(s.t), s.cgRoot)
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != root {
			procs, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			left = append(left, fmt.Sprintf("cgroup %s (processes: %s)", p, strings.Fields(string(procs))))
		}
		return nil
	})
	if s.run != nil && s.run.ProcessState == nil && !exited(s.run) {
		left = append(left, fmt.Sprintf("torpor run (pid %d)", s.run.Process.Pid))
	}
	return left
}

// assertClean fails the test if anything of the stack is left.
func (s *solo) assertClean() {
	s.t.Helper()
	if left := s.leftovers(); len(left) > 0 {
		s.t.Errorf("left behind: %s", strings.Join(left, "; "))
	}
}

// close removes whatever a failed test left: the job (by cancelling it),
// the host process, namespaces, cgroups.
func (s *solo) close() {
	if s.run != nil && s.run.ProcessState == nil {
		stop(s.run, syscall.SIGTERM)
	}
	root := filepath.Join(cgroupMount(s.t), s.cgRoot)
	defer os.Remove(root) // the configured root itself is the test's
	if len(s.leftovers()) == 0 {
		return
	}
	s.t.Logf("cleaning up after the test: %v", s.leftovers())
	cmd := exec.Command(s.torpor, "cancel", "solo")
	cmd.Env = s.env
	_ = cmd.Run()
	killCgroups(root)
	for _, n := range s.netns() {
		_ = netquiesce.DeleteNamedNetns(n)
	}
}

// killCgroups kills every process below root and removes the groups.
func killCgroups(root string) {
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	_ = os.WriteFile(filepath.Join(root, "cgroup.kill"), []byte("1"), 0)
	for i := len(dirs) - 1; i >= 0; i-- {
		for try := 0; try < 100; try++ {
			if err := os.Remove(dirs[i]); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestEmbeddedRunKilled: `torpor run` (hosting the embedded coordinator) is
// killed with SIGKILL after a checkpoint; the job runs on. `torpor restart
// solo` alone takes it over and follows it to its end: the undisturbed
// checksum, and nothing left behind.
func TestEmbeddedRunKilled(t *testing.T) {
	s := newSolo(t)
	s.start()
	s.progress("started")
	if out, _, code := s.cli("checkpoint", "solo"); code != 0 || strings.TrimSpace(out) != "solo/000001" {
		t.Fatalf("checkpoint: exit %d, %q", code, out)
	}
	s.progress("after the checkpoint")
	s.kill()
	s.restart("took over 1 job-node", "job solo still runs")
}

// restart runs `torpor restart solo`, which hosts the coordinator and
// follows the job to its end: its messages must say each of says, and the
// job must end with the undisturbed checksum, leaving nothing behind.
func (s *solo) restart(says ...string) {
	s.t.Helper()
	out, errOut, code := s.cli("restart", "solo")
	if code != 0 {
		s.t.Fatalf("torpor restart solo: exit %d", code)
	}
	for _, w := range says {
		if !strings.Contains(errOut, w) {
			s.t.Errorf("torpor restart solo does not say %q:\n%s", w, errOut)
		}
	}
	if got := s.checksum(out); got != s.want {
		s.t.Errorf("checksum %s, want the undisturbed %s", got, s.want)
	}
	s.assertClean()
}

// TestEmbeddedRestartAfterReboot: the host process is killed and the job's
// processes, namespaces, cgroups and run directory go too, as in a reboot.
// The registry still says running: the next coordinator fails the job with
// a reason, and `torpor restart solo` brings it back from its checkpoint.
func TestEmbeddedRestartAfterReboot(t *testing.T) {
	s := newSolo(t)
	s.start()
	s.progress("started")
	if _, _, code := s.cli("checkpoint", "solo"); code != 0 {
		t.Fatalf("checkpoint: exit %d", code)
	}
	s.progress("after the checkpoint")
	s.kill()
	killCgroups(filepath.Join(cgroupMount(t), s.cgRoot))
	for _, n := range s.netns() {
		if err := netquiesce.DeleteNamedNetns(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(filepath.Join(s.runDir, "shims")); err != nil {
		t.Fatal(err)
	}
	state, reason := s.jobState()
	if state != "failed" || !strings.Contains(reason, "no longer exists") || !strings.Contains(reason, "torpor restart solo") {
		t.Fatalf("after the reboot the job is %s (%q), want failed saying its job-node is gone and how to restart", state, reason)
	}
	s.restart("restarted from solo/000001")
}

// TestEmbeddedAdopt: after the host process dies, the next command (`torpor
// ps`) takes the job over and shows it running; it runs on, and `torpor
// wait` sees it finish with the undisturbed checksum.
func TestEmbeddedAdopt(t *testing.T) {
	s := newSolo(t)
	s.start()
	s.progress("started")
	s.kill()
	if state, reason := s.jobState(); state != "running" {
		t.Fatalf("after its torpor run died the job is %s (%q), want running", state, reason)
	}
	s.progress("after the takeover by torpor ps")
	if _, errOut, code := s.cli("wait", "solo"); code != 0 || !strings.Contains(errOut, "job solo is finished") {
		t.Fatalf("torpor wait solo: exit %d", code)
	}
	if got := s.checksum(s.output()); got != s.want {
		t.Errorf("checksum %s, want the undisturbed %s", got, s.want)
	}
	s.assertClean()
}

// TestEmbeddedCancelHostJob: cancelling the job whose `torpor run` hosts the
// coordinator gets a clean answer; the run then ends with status 130, and
// the job reads cancelled.
func TestEmbeddedCancelHostJob(t *testing.T) {
	s := newSolo(t)
	s.start()
	s.progress("started")
	_, errOut, code := s.cli("cancel", "solo")
	if code != 0 || !strings.Contains(errOut, "job solo cancelled") {
		t.Fatalf("torpor cancel solo: exit %d\n%s", code, errOut)
	}
	done := make(chan error, 1)
	go func() { done <- s.run.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 130 {
			data, _ := os.ReadFile(s.runOut)
			t.Errorf("torpor run ended with %v, want exit status 130\n%s", err, data)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("torpor run did not end within 30 s of the cancel")
	}
	s.waitFor(s.runOut, regexp.MustCompile(`job solo failed: cancelled`), time.Second)
	if state, reason := s.jobState(); state != "failed" || reason != "cancelled" {
		t.Errorf("the job is %s (%q), want failed (cancelled)", state, reason)
	}
	s.assertClean()
}

// TestStaleSocket: a socket file no coordinator listens on any more (the
// process that hosted it was killed). A user, who cannot embed a
// coordinator, is told what happened and what to do, not "connection
// refused"; root's command embeds one in its place.
func TestStaleSocket(t *testing.T) {
	s := newSoloEnv(t)
	sock := filepath.Join(s.dir, "coordinator.sock")
	// A socket file whose listener is gone, as a SIGKILL leaves it.
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()
	torpor, dir, env, state := s.torpor, s.dir, s.env, s.state

	u := testuser.New(t)
	cmd := exec.Command(torpor, "ps")
	cmd.Env, cmd.Dir = env, dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as(u)}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "the coordinator that served it is gone") ||
		!strings.Contains(string(out), "`torpor restart JOB` brings one back from its last checkpoint") ||
		strings.Contains(string(out), "connection refused") {
		t.Errorf("torpor ps as a user on a stale socket: %v\n%s", err, out)
	}

	cmd = exec.Command(torpor, "ps")
	cmd.Env, cmd.Dir = env, dir
	out, err = cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "JOB") {
		t.Errorf("torpor ps as root on a stale socket: %v\n%s", err, out)
	}
	s.assertClean()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the embedded coordinator left its socket: %v", err)
	}

	// A daemon's state directory: its coordinator is down, and root's
	// command does not embed one over its registry.
	if err := os.WriteFile(filepath.Join(state, "daemon"), []byte("127.0.0.1:7070\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(torpor, "ps")
	cmd.Env, cmd.Dir = env, dir
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "belongs to a coordinator daemon (it listened for shims on 127.0.0.1:7070)") {
		t.Errorf("torpor ps as root over a daemon's state directory: %v\n%s", err, out)
	}
}
