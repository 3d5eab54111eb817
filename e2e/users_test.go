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

	"github.com/torpor-hpc/torpor/internal/testuser"
)

// as is the credential to run the CLI as u.
func as(u *testuser.User) *syscall.Credential {
	return &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID), Groups: []uint32{uint32(u.GID), uint32(u.Supplement)}}
}

// TestJobsRunAsTheirOwner: through the daemons, as a user the test creates,
// a job runs with that user's uid and groups and cannot do what the user
// cannot; a working directory or program the user may not use is refused;
// another user can neither see nor touch the job or its checkpoints.
func TestJobsRunAsTheirOwner(t *testing.T) {
	c := newCluster(t, 3)
	alice, bob := testuser.New(t), testuser.New(t)
	pwned := "/etc/torpor-pwned-" + alice.Name

	// 1. The experiment of the issue: id, and a write to /etc.
	out, code := c.cliAs(as(alice), "run", "--plain", "--host", "h1", "--run-dir", c.runDir, "--",
		"/bin/sh", "-c", "id -u; id -G; touch "+pwned+" && echo WROTE-ETC; true")
	t.Logf("alice's id job: exit %d\n%s", code, out)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("\n%d\n", alice.UID)) && !strings.HasPrefix(out, fmt.Sprintf("%d\n", alice.UID)) {
		t.Fatalf("the job did not print alice's uid %d (exit %d)", alice.UID, code)
	}
	if !strings.Contains(out, fmt.Sprint(alice.Supplement)) || !strings.Contains(out, "Permission denied") {
		t.Fatalf("the job lacks alice's groups or could write /etc")
	}
	if _, err := os.Stat(pwned); err == nil || strings.Contains(out, "WROTE-ETC") {
		os.Remove(pwned)
		t.Fatal("alice's job wrote to /etc")
	}

	// -x LD_PRELOAD reaches the job, which still runs as alice.
	out, code = c.cliAs(as(alice), "run", "--plain", "--host", "h2", "--run-dir", c.runDir,
		"-x", "LD_PRELOAD=/nonexistent/torpor-preload.so", "--", "/usr/bin/id", "-u")
	if code != 0 || !strings.Contains(out, fmt.Sprint(alice.UID)) || !strings.Contains(out, "torpor-preload.so") {
		t.Fatalf("LD_PRELOAD job: exit %d\n%s", code, out)
	}

	// 3. A working directory and a program alice may not use.
	secret := filepath.Join(c.dir, "root-only.sh")
	if err := os.WriteFile(secret, []byte("#!/bin/sh\necho RAN\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"--wdir /root", []string{"--wdir", "/root", "--", "/bin/true"}, "/root"},
		{"a program only root may run", []string{"--", secret}, secret},
	} {
		args := append([]string{"run", "--plain", "--host", "h1", "--run-dir", c.runDir}, tc.args...)
		out, code := c.cliAs(as(alice), args...)
		if code == 0 || !strings.Contains(strings.ToLower(out), "permission denied") || !strings.Contains(out, tc.want) || strings.Contains(out, "RAN") {
			t.Fatalf("%s: exit %d\n%s", tc.name, code, out)
		}
		t.Logf("%s refused: %s", tc.name, lastLines(strings.TrimSpace(out), 1))
	}

	// 4. Another user's job and checkpoints.
	stop := filepath.Join(c.dir, "stop-alice")
	job := c.userJob(alice, "alice", "h1,h2", fmt.Sprintf("while [ ! -e %s ]; do sleep 0.1; done", stop))
	ckpt := lastLines(c.mustCLIAs(alice, "checkpoint", job), 1)
	if !strings.HasPrefix(ckpt, job+"/") {
		t.Fatalf("alice's checkpoint printed %q", ckpt)
	}
	if ps := c.mustCLIAs(bob, "ps"); strings.Contains(ps, job) {
		t.Fatalf("bob sees alice's job:\n%s", ps)
	}
	if ls := c.mustCLIAs(bob, "ls"); strings.Contains(ls, job) {
		t.Fatalf("bob sees alice's checkpoints:\n%s", ls)
	}
	if ps := c.mustCLI("ps"); !strings.Contains(ps, alice.Name) {
		t.Fatalf("ps does not name the owner %s:\n%s", alice.Name, ps)
	}
	for _, verb := range [][]string{
		{"checkpoint", job}, {"suspend", job}, {"resume", job}, {"cancel", job}, {"wait", job},
		{"migrate", job, "--node", "n0", "--to", "h3"}, {"restart", ckpt}, {"restart", job}, {"ls", job},
	} {
		out, code := c.cliAs(as(bob), verb...)
		if code == 0 || !strings.Contains(out, "permission denied") {
			t.Fatalf("bob: torpor %s: exit %d\n%s", strings.Join(verb, " "), code, out)
		}
	}
	if st := c.jobState(job); st != "running" {
		t.Fatalf("alice's job is %s after bob's attempts", st)
	}
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitState(job, "finished", 30*time.Second)
}

// userJob starts a plain job of u running script on hosts, waits until it
// runs and returns its id.
func (c *cluster) userJob(u *testuser.User, name, hosts, script string) string {
	c.t.Helper()
	cmd := exec.Command(c.torpor, "run", "--plain", "--name", name, "--host", hosts, "--run-dir", c.runDir, "--", "/bin/sh", "-c", script)
	buf := &logBuffer{}
	c.logs["run-"+name] = buf
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.Env = append(os.Environ(), "TORPOR_SOCKET="+c.socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as(u)}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { stop(cmd, syscall.SIGTERM) })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if job := c.findJob(name); job != "" {
			return job
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("job %s never started:\n%s", name, buf)
		}
	}
}

func (c *cluster) mustCLIAs(u *testuser.User, args ...string) string {
	c.t.Helper()
	out, code := c.cliAs(as(u), args...)
	if code != 0 {
		c.t.Fatalf("torpor %s as %s: exit %d\n%s", strings.Join(args, " "), u.Name, code, out)
	}
	return out
}
