package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/shim/criu"
)

// Dump checkpoints the sandbox's tree with CRIU, run inside the sandbox's
// network namespace (so the namespace itself is external to the images). The
// sandbox fills in opts.Pid and opts.NetNSPath, and opts.FreezeCgroup when it
// is Frozen; the caller sets the images dir, LeaveRunning, TCPEstablished and
// the rest. Without LeaveRunning the tree is gone afterwards and the sandbox
// is Dumped. The network lock is the caller's business (LockNetwork or
// netquiesce): take it before dumping a tree with TCP connections.
func (s *Sandbox) Dump(ctx context.Context, drv *criu.Driver, opts criu.Options) (criu.DumpResult, error) {
	from, err := s.begin("dump")
	if err != nil {
		return criu.DumpResult{}, err
	}
	defer s.end()
	s.mu.Lock()
	t := s.tree
	s.expectKO = !opts.LeaveRunning
	s.mu.Unlock()
	opts.Pid = t.pid
	opts.NetNSPath = s.NetNSPath()
	var guard *dumpGuard
	if from == Frozen {
		opts.FreezeCgroup = s.cg.Path()
		if guard, err = s.guardDump(); err != nil {
			return criu.DumpResult{}, fmt.Errorf("dump sandbox %s: %w", s.cfg.Name, err)
		}
		started, notify := opts.Started, opts.Notify
		opts.Started = func(pid int) {
			guard.started(pid)
			if started != nil {
				started(pid)
			}
		}
		// The guard acts first: a caller's hook (a fault point) may end
		// CRIU or this process.
		opts.Notify = func(ev criu.Event) error {
			guard.notify(ev)
			if notify != nil {
				return notify(ev)
			}
			return nil
		}
	}
	res, err := drv.Dump(ctx, opts)
	if guard != nil {
		if errors.Is(err, criu.ErrKilled) {
			// The guard's watcher lost the race to the reaper: late, but
			// still before the shim releases TCP repair and rolls back.
			guard.freeze("CRIU was killed (seen when it was reaped)")
		}
		why := guard.done()
		switch {
		case why != "" && err != nil:
			s.log.Warn("CRIU failed; the dump guard froze its tree again", "why", why)
		case why != "" && !opts.LeaveRunning:
			// CRIU killed the tree; the group is reused by a restore.
			if terr := s.cg.SetFreeze(false); terr != nil {
				s.log.Error("thaw the emptied cgroup after the dump", "err", terr)
			}
		}
	}
	if err != nil {
		s.mu.Lock()
		s.expectKO = false
		select {
		case <-t.done:
			s.state, s.exitErr = Exited, fmt.Errorf("tree died during a failed dump: %v", t.err)
		default:
		}
		s.mu.Unlock()
		return res, fmt.Errorf("dump sandbox %s: %w", s.cfg.Name, err)
	}
	// CRIU's own figures (its stats-dump), for every dump: they split its
	// time into the tree frozen, the pages collected and written, and the
	// rest, the same way for a job-node and for a benchmark's raw baseline.
	st := res.Stats
	dumped := []any{"images", opts.ImagesDir, "elapsed", res.Elapsed, "leave_running", opts.LeaveRunning,
		"criu_freezing", st.FreezingTime, "criu_frozen", st.FrozenTime, "criu_memdump", st.MemdumpTime, "criu_memwrite", st.MemwriteTime,
		"pages_written", st.PagesWritten, "pages_lazy", st.PagesLazy}
	if opts.LeaveRunning {
		s.log.Info("sandbox dumped", dumped...)
		return res, nil
	}
	// CRIU killed the tree; wait until the init is reaped and the cgroup is empty.
	select {
	case <-t.done:
	case <-ctx.Done():
		return res, fmt.Errorf("dump sandbox %s: wait for the dumped tree to exit: %w", s.cfg.Name, context.Cause(ctx))
	}
	if err := s.cg.WaitEmpty(ctx); err != nil {
		return res, fmt.Errorf("dump sandbox %s: %w", s.cfg.Name, err)
	}
	s.mu.Lock()
	s.state, s.tree, s.expectKO = Dumped, nil, false
	s.mu.Unlock()
	s.log.Info("sandbox dumped", dumped...)
	return res, nil
}

// StartDumpWorker starts, ahead of time, the CRIU of a later Dump of this
// sandbox (opts.Worker): in the namespace Dump runs CRIU in.
func (s *Sandbox) StartDumpWorker(ctx context.Context, drv *criu.Driver) (*criu.Worker, error) {
	return drv.StartWorker(ctx, s.NetNSPath(), "")
}

// Restore restores a tree from opts.ImagesDir into this sandbox: CRIU runs in
// the sandbox's network namespace and cgroup (with CgroupIgnore, the default,
// the restored tasks inherit that cgroup), and the restored init becomes the
// shim's child. Namespace PIDs and the hostname come from the images. The
// sandbox must carry the address the tree was dumped with.
func (s *Sandbox) Restore(ctx context.Context, drv *criu.Driver, opts criu.Options) (criu.RestoreResult, error) {
	if _, err := s.begin("restore"); err != nil {
		return criu.RestoreResult{}, err
	}
	defer s.end()
	opts.NetNSPath = s.NetNSPath()
	opts.CgroupDir = s.cg.Path()
	opts.RestoreSibling = true
	res, err := drv.Restore(ctx, opts)
	if err != nil {
		s.cleanFailedRestore(context.WithoutCancel(ctx))
		return res, fmt.Errorf("restore sandbox %s: %w", s.cfg.Name, err)
	}
	proc, err := os.FindProcess(res.Pid)
	if err != nil {
		s.cleanFailedRestore(context.WithoutCancel(ctx))
		return res, fmt.Errorf("restore sandbox %s: find restored init %d: %w", s.cfg.Name, res.Pid, err)
	}
	t := &tree{pid: res.Pid, done: make(chan struct{})}
	s.mu.Lock()
	s.tree, s.state, s.exitErr = t, Running, nil
	s.mu.Unlock()
	s.watch(t, func() error {
		st, err := proc.Wait()
		if err != nil {
			return err
		}
		if !st.Success() {
			return &InitExit{State: st}
		}
		return nil
	})
	s.log.Info("sandbox restored", "pid", res.Pid, "elapsed", res.Elapsed,
		"criu_forking", res.Stats.ForkingTime, "criu_restore", res.Stats.RestoreTime, "pages_restored", res.Stats.PagesRestored)
	return res, nil
}

// cleanFailedRestore kills what a failed restore left in the cgroup and reaps
// the partially restored root, which rst_sibling made the shim's child.
func (s *Sandbox) cleanFailedRestore(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = s.cg.KillEach(ctx) // not cgroup.kill: the next restore clones into this group
	for _, pid := range childrenInCgroup(s.cg.Rel()) {
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
	}
}

// childrenInCgroup lists this process's children (zombies included) whose
// cgroup v2 path is rel.
func childrenInCgroup(rel string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := strconv.Itoa(os.Getpid())
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(stat), ')')
		f := strings.Fields(string(stat)[i+1:])
		if i < 0 || len(f) < 2 || f[1] != self {
			continue
		}
		cg, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(cg), "\n") {
			if p, ok := strings.CutPrefix(line, "0::"); ok && strings.TrimSuffix(p, " (deleted)") == rel {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// InitExit is how a restored tree's init ended when it did not succeed (a
// restored init is the shim's child by os.FindProcess, not an exec.Cmd).
type InitExit struct {
	State *os.ProcessState
}

func (e *InitExit) Error() string { return "init " + e.State.String() }

// ExitCode is the init's exit status, or -1 when a signal ended it.
func (e *InitExit) ExitCode() int { return e.State.ExitCode() }
