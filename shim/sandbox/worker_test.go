package sandbox

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/shim/criu"
)

// TestCRIUWorkers: a CRIU started ahead (criu.Worker) serves the dump it
// was started for, in the sandbox's namespace; one that died, or was started
// for another sandbox, is not used and is reaped, and the dump starts a
// CRIU of its own.
func TestCRIUWorkers(t *testing.T) {
	e := newEnv(t, 2)
	a := e.sandbox(1, 1, false)
	other := e.sandbox(2, 2, false)
	e.startHogs(a, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	dump := func(s *Sandbox, w *criu.Worker, leaveRunning bool, dir string) int {
		t.Helper()
		pid := 0
		opts := criu.Options{ImagesDir: dir, LeaveRunning: leaveRunning, FileLocks: true, Worker: w,
			Started: func(p int) { pid = p }}
		if _, err := s.Dump(ctx, e.drv, opts); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	start := func(s *Sandbox) *criu.Worker {
		t.Helper()
		w, err := s.StartDumpWorker(ctx, e.drv)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}

	w := start(a)
	if pid := dump(a, w, true, e.images("warm")); pid != w.Pid() {
		t.Fatalf("the dump ran CRIU %d, not the worker %d started for it", pid, w.Pid())
	}
	gone(t, w.Pid())

	dead := start(a)
	if err := syscall.Kill(dead.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExited(t, dead.Pid())
	if pid := dump(a, dead, true, e.images("dead")); pid == dead.Pid() || pid == 0 {
		t.Fatalf("the dump ran CRIU %d with a dead worker %d", pid, dead.Pid())
	}
	gone(t, dead.Pid())

	elsewhere := start(other)
	if pid := dump(a, elsewhere, false, e.images("last")); pid == elsewhere.Pid() || pid == 0 {
		t.Fatalf("the dump ran CRIU %d: the worker %d of another sandbox", pid, elsewhere.Pid())
	}
	gone(t, elsewhere.Pid())

	// The tree is gone; it comes back in a new sandbox, whose next dump
	// gets a worker of its own.
	b := e.sandbox(2, 1, false)
	if _, err := b.Restore(ctx, e.drv, criu.Options{ImagesDir: e.images("last"), FileLocks: true}); err != nil {
		t.Fatal(err)
	}
	bw := start(b)
	if pid := dump(b, bw, true, e.images("b")); pid != bw.Pid() {
		t.Fatalf("the restored sandbox's dump ran CRIU %d, not its worker %d", pid, bw.Pid())
	}
	gone(t, bw.Pid())

	// Close ends an unused worker and reaps it.
	unused := start(b)
	unused.Close()
	gone(t, unused.Pid())
	unused.Close() // twice is harmless
}

// gone fails unless pid no longer exists (exited and reaped).
func gone(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("CRIU %d still exists (kill 0: %v)", pid, err)
	}
}

// waitExited waits until pid, a child not yet reaped, has exited: its
// pidfd becomes readable then.
func waitExited(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 10_000)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n != 1 {
			t.Fatalf("CRIU %d did not die within 10 s (poll: %d, %v)", pid, n, err)
		}
		return
	}
}
