package sandbox

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/shim/cgroup"
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
//   - once pstree.img exists: CRIU writes it after it dumped every task and
//     removed every parasite, so no task needs to run any more; a CRIU that
//     dies from then on leaves the tree frozen, and the shim takes its
//     connections out of repair mode before the rollback thaws it;
//   - as soon as it sees CRIU killed by a signal before that, which narrows
//     the window in which the tasks run to the guard's reaction time.
type dumpGuard struct {
	cg   *cgroup.Group
	dir  string
	log  *slog.Logger
	pid  chan int
	done chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	froze string // why the guard froze the cgroup, "" if it did not
}

// guardPoll is how often the guard looks at the images directory and CRIU.
const guardPoll = 2 * time.Millisecond

// DumpGuardFile is the image CRIU writes once no task needs to run any more;
// from its appearance on, the dump guard keeps the tree frozen.
const DumpGuardFile = "pstree.img"

func (s *Sandbox) guardDump(dir string) *dumpGuard {
	g := &dumpGuard{cg: s.cg, dir: dir, log: s.log, pid: make(chan int, 1), done: make(chan struct{})}
	g.wg.Add(1)
	go g.run()
	return g
}

// started is told CRIU's PID.
func (g *dumpGuard) started(pid int) {
	select {
	case g.pid <- pid:
	default:
	}
}

// stop ends the guard once CRIU returned; it reports why the guard froze
// the cgroup ("" if it did not).
func (g *dumpGuard) stop() string {
	close(g.done)
	g.wg.Wait()
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

func (g *dumpGuard) run() {
	defer g.wg.Done()
	pidfd := -1
	defer func() {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
	}()
	for {
		select {
		case <-g.done:
			return
		case pid := <-g.pid:
			if fd, err := unix.PidfdOpen(pid, 0); err == nil {
				pidfd = fd
			}
		default:
		}
		if pidfd >= 0 {
			fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, int(guardPoll/time.Millisecond))
			if err != nil && !errors.Is(err, unix.EINTR) {
				g.log.Warn("dump guard: poll CRIU", "err", err)
			}
			if n > 0 {
				if killedBySignal(pidfd) {
					g.freeze("CRIU was killed")
				}
				unix.Close(pidfd)
				pidfd = -1
			}
		} else {
			time.Sleep(guardPoll)
		}
		if _, err := os.Lstat(filepath.Join(g.dir, DumpGuardFile)); err == nil {
			g.freeze("CRIU dumped every task")
			return
		}
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
