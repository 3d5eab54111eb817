package sandbox

import (
	"errors"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/shim/cgroup"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// dumpGuard keeps a frozen sandbox's tree from running while CRIU's dump of
// it could still die.
//
// Given a frozen cgroup, CRIU seizes every task with ptrace and then thaws the
// cgroup: a ptrace-stopped task does not run, and CRIU must run its parasite
// in each task. It freezes the cgroup again only at the end, before it lets
// the tasks go. A CRIU that dies in between (killed, out of memory, a crash)
// lets them go at once, thawed, with their TCP connections still in repair
// mode, where a read fails with EPERM: an MPI library takes that for a broken
// connection. The guard writes cgroup.freeze again
//   - at CRIU's post-dump notification: every image is written, every
//     parasite removed, and CRIU holds the seized tree until it is answered,
//     so no task needs to run any more; a CRIU that dies from then on leaves
//     the tree frozen, and the shim takes its connections out of repair mode
//     before the rollback thaws it;
//   - as soon as CRIU's pidfd says it was killed by a signal before that,
//     which narrows the window in which the tasks run to the time the kernel
//     takes to wake the guard.
//
// Both are events: the guard neither polls nor sleeps.
type dumpGuard struct {
	cg  *cgroup.Group
	log *slog.Logger

	// pidfd is CRIU's pidfd, opened by started while CRIU cannot have been
	// reaped yet (-1 until then); wake tells the watcher to end.
	pidfd      int
	wake, stop *os.File
	wg         sync.WaitGroup

	mu    sync.Mutex
	froze string // why the guard froze the cgroup, "" if it did not
}

func (s *Sandbox) guardDump() (*dumpGuard, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	return &dumpGuard{cg: s.cg, log: s.log, pidfd: -1, wake: r, stop: w}, nil
}

// started is criu.Options.Started: the driver calls it before it sends the
// request and long before it reaps CRIU, so the PID still names CRIU.
func (g *dumpGuard) started(pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		g.log.Warn("dump guard: cannot watch CRIU; only its post-dump notification freezes the tree", "pid", pid, "err", err)
		return
	}
	g.pidfd = fd
	g.wg.Add(1)
	go g.watch()
}

// notify is the guard's part of criu.Options.Notify.
func (g *dumpGuard) notify(ev criu.Event) {
	if ev == criu.EventPostDump {
		g.freeze("CRIU dumped every task")
	}
}

// done ends the guard once CRIU returned (and was reaped); it reports why the
// guard froze the cgroup ("" if it did not).
func (g *dumpGuard) done() string {
	g.stop.Close()
	g.wg.Wait()
	g.wake.Close()
	if g.pidfd >= 0 {
		unix.Close(g.pidfd)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.froze
}

func (g *dumpGuard) freeze(why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.froze != "" {
		return
	}
	if err := g.cg.SetFreeze(true); err != nil {
		g.log.Error("dump guard: freeze the tree again", "why", why, "err", err)
		return
	}
	g.froze = why
}

// watch waits until CRIU exits or the guard is done, whichever comes first.
func (g *dumpGuard) watch() {
	defer g.wg.Done()
	fds := []unix.PollFd{
		{Fd: int32(g.pidfd), Events: unix.POLLIN},
		{Fd: int32(g.wake.Fd()), Events: unix.POLLIN},
	}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			g.log.Warn("dump guard: wait for CRIU", "err", err)
			return
		}
		break
	}
	if fds[0].Revents&unix.POLLIN != 0 && killedBySignal(g.pidfd) {
		g.freeze("CRIU was killed")
	}
}

// killedBySignal says whether the exited process behind pidfd (a child of
// this process, not reaped: WNOWAIT) ended by a signal. Its reaper may have
// been quicker; then it says false.
func killedBySignal(pidfd int) bool {
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, pidfd, &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil); err != nil {
		return false
	}
	const cldKilled, cldDumped = 2, 3 // CLD_KILLED, CLD_DUMPED
	return info.Code == cldKilled || info.Code == cldDumped
}
