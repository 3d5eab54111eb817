package sandbox

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/shim/criu"
)

// vforker vforks once; the child blocks opening a FIFO for reading before it
// execs /bin/true, so its parent waits in the kernel's vfork wait (state D)
// until the test opens the FIFO for writing. Then the parent says so and
// sleeps.
const vforkerC = `#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
	printf("up\n");
	fflush(stdout);
	pid_t pid = vfork();
	if (pid == 0) {
		/* A freeze may end the wait with EINTR. */
		while (open(argv[1], O_RDONLY) < 0 && errno == EINTR)
			;
		execl("/bin/true", "true", (char *)0);
		_exit(127);
	}
	int status;
	waitpid(pid, &status, 0);
	printf("child done %d\n", status);
	fflush(stdout);
	for (;;)
		pause();
}
`

// TestFreezeInsideVfork: a tree frozen while a child sits between vfork and
// exec cannot be dumped (CRIU waits 10 s for the vfork parent and fails).
// Freeze thaws it again until the child moved on; when it never does, Freeze
// fails after settleRounds, says which thread stayed, and leaves the tree
// running. Once the child can exec, Freeze succeeds and CRIU dumps the tree.
func TestFreezeInsideVfork(t *testing.T) {
	e := newEnv(t, 1)
	src := filepath.Join(e.dir, "vforker.c")
	bin := filepath.Join(e.dir, "vforker.bin")
	if err := os.WriteFile(src, []byte(vforkerC), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("compile the vforker (gcc comes with make deps' build-essential): %v\n%s", err, out)
	}
	fifo := filepath.Join(e.dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	s := e.sandbox(1, 1, false)
	out := filepath.Join(e.dir, "vforker.out")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Start(ctx, Process{Argv: []string{bin, fifo}, Output: out}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the vfork parent to wait for its child", 20*time.Second, func() bool {
		return vforkWaiting(s)
	})

	// The child never moves: Freeze gives up and the tree runs on.
	start := time.Now()
	err := s.Freeze(ctx)
	if err == nil || !strings.Contains(err.Error(), "uninterruptible sleep") {
		b, _ := os.ReadFile(out)
		t.Fatalf("Freeze with a child stuck inside vfork: %v (the vforker printed %q)", err, b)
	}
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if st := s.State(); st != Running {
		t.Fatalf("state after a failed freeze: %s", st)
	}
	if frozen, err := s.cg.FreezeSet(); err != nil || frozen {
		t.Fatalf("cgroup.freeze after a failed freeze: %v %v", frozen, err)
	}

	// The child moves on once thawed: Freeze succeeds and the tree dumps.
	thaws := 0
	settleHook = func(round int) {
		thaws++
		if round == 0 {
			f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				t.Error(err)
				return
			}
			f.Close()
		}
	}
	defer func() { settleHook = nil }()
	if err := s.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	if thaws == 0 {
		t.Fatal("Freeze did not thaw the tree whose child sat inside vfork")
	}
	if stuck, err := uninterruptible(ctx, s.cg); err != nil || len(stuck) != 0 {
		t.Fatalf("frozen with threads in state D: %v %v", stuck, err)
	}
	start = time.Now()
	if _, err := s.Dump(ctx, e.drv, criu.Options{ImagesDir: e.images("vforker"), LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d thaw(s), then CRIU dumped the tree in %v", thaws, time.Since(start).Round(time.Millisecond))
	if err := s.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the vfork parent to reap its child", 20*time.Second, func() bool {
		b, _ := os.ReadFile(out)
		return strings.Contains(string(b), "child done 0")
	})
}

// vforkWaiting says whether the vforker's parent sleeps in state D: its
// child blocks on the FIFO between vfork and exec.
func vforkWaiting(s *Sandbox) bool {
	b, err := os.ReadFile(filepath.Join(s.cg.Path(), "cgroup.threads"))
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(string(b)) {
		stat, err := os.ReadFile("/proc/" + f + "/stat")
		if err == nil && strings.Contains(string(stat), "(vforker.bin) D ") {
			return true
		}
	}
	return false
}
