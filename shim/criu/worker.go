package criu

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
)

// Worker is a CRIU started ahead of the run it will serve: a `criu swrk`
// waiting for its one request. Starting CRIU (its exec and dynamic
// libraries: 16-22 ms on the benchmark's VM, where a first touch of memory
// is slow) then happens before, not inside, the dump the job stands still
// for. A Worker serves one request (Options.Worker), in the network
// namespace and cgroup it was started in; an unused one is ended with
// Close.
type Worker struct {
	s      *swrk
	pid    int
	netns  string
	cgroup string
}

// StartWorker starts a CRIU in netnsPath and cgroupDir (either may be
// empty: the caller's), for a later request with the same Options.NetNSPath
// and Options.CgroupDir.
func (d *Driver) StartWorker(ctx context.Context, netnsPath, cgroupDir string) (*Worker, error) {
	s, err := d.startSwrk(ctx, netnsPath, cgroupDir)
	if err != nil {
		return nil, fmt.Errorf("start a criu worker: %w", err)
	}
	return &Worker{s: s, pid: s.cmd.Process.Pid, netns: netnsPath, cgroup: cgroupDir}, nil
}

// startSwrk starts a CRIU for one request in netnsPath and cgroupDir, with
// its kernel cache prepared and, where this host needs it, the prlimit
// library preloaded.
func (d *Driver) startSwrk(ctx context.Context, netnsPath, cgroupDir string) (*swrk, error) {
	d.Prepare(ctx)
	preload, err := d.preloadLib()
	if err != nil {
		return nil, err
	}
	return startSwrk(d.bin.Path, netnsPath, cgroupDir, preload)
}

// Pid is the worker's CRIU process.
func (w *Worker) Pid() int { return w.pid }

// Close kills the worker's CRIU unless a request took it, and reaps it.
func (w *Worker) Close() {
	if w == nil || w.s == nil {
		return
	}
	s := w.s
	w.s = nil
	_ = s.cmd.Process.Kill()
	s.sock.Close()
	_ = s.cmd.Wait()
}

// take hands the worker's CRIU to a request in netns and cgroup, or
// returns nil (and ends the worker) when it was started elsewhere or is no
// longer waiting: a CRIU that waits for its request never writes to its
// socket, so anything to read there, or a hang-up, means it died.
func (w *Worker) take(netns, cgroup string) *swrk {
	if w == nil || w.s == nil {
		return nil
	}
	if w.netns != netns || w.cgroup != cgroup {
		w.Close()
		return nil
	}
	waiting := false
	if rc, err := w.s.sock.SyscallConn(); err == nil {
		// Not sock.Fd(): that would make the socket blocking, and a
		// deadline could no longer interrupt a read (swrk.call).
		_ = rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 0)
			waiting = err == nil && n == 0
		})
	}
	if !waiting {
		w.Close()
		return nil
	}
	s := w.s
	w.s = nil
	return s
}
