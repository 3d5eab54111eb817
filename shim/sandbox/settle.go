package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/torpor-hpc/torpor/shim/cgroup"
)

// A tree frozen with a task between vfork and exec cannot be dumped. The
// vfork parent waits in the kernel for its child to exec or exit, in
// uninterruptible sleep (state D), and the cgroup freezer counts that wait as
// frozen. CRIU seizes both, stops the child with ptrace and then waits for the
// parent to stop, which it never does while its child is stopped: the dump
// fails after CRIU's 10 s timeout ("Timeout reached", then "Unseizable
// non-zombie ... state D"). dash forks every command with vfork, glibc's
// posix_spawn and system() use it too; a job script looping over short
// commands was caught there once in ~150 freezes.
//
// settle therefore looks at every thread of a frozen group. While one sleeps
// uninterruptibly it thaws the group, waits (at most settleWait) until those
// threads left that state, and freezes it again; after settleRounds it gives
// up, thaws the group and says which thread stayed.
const (
	settleRounds = 10
	settleWait   = 200 * time.Millisecond
	settlePoll   = 200 * time.Microsecond
)

// settleHook, when set by a test, runs after each thaw of a settle round.
var settleHook func(round int)

func settle(ctx context.Context, cg *cgroup.Group) (rounds int, err error) {
	for round := 0; ; round++ {
		stuck, err := uninterruptible(ctx, cg)
		if err != nil {
			return round, err
		}
		if len(stuck) == 0 {
			return round, nil
		}
		if round == settleRounds {
			why := fmt.Sprintf("thread %d stays in uninterruptible sleep (state D, in %s) after %d thaws of %v: CRIU could not stop it; the job was thawed, try the checkpoint again later",
				stuck[0], kernelWait(stuck[0]), settleRounds, settleWait)
			if terr := cg.Thaw(ctx); terr != nil {
				return round, fmt.Errorf("%s; and thaw: %w", why, terr)
			}
			return round, fmt.Errorf("%s", why)
		}
		if err := cg.Thaw(ctx); err != nil {
			return round, err
		}
		if settleHook != nil {
			settleHook(round)
		}
		waitLeftD(ctx, stuck)
		if err := cg.Freeze(ctx); err != nil {
			return round, err
		}
	}
}

// uninterruptible lists the threads of a frozen group in state D. A thread
// may still show R for a moment after the group reports frozen (a vfork
// parent counts as frozen just before it goes to sleep; a thread on its way
// into the freezer's trap): it first waits, at most settleWait, until no
// thread runs.
func uninterruptible(ctx context.Context, cg *cgroup.Group) ([]int, error) {
	deadline := time.Now().Add(settleWait)
	for {
		b, err := os.ReadFile(filepath.Join(cg.Path(), "cgroup.threads"))
		if err != nil {
			return nil, fmt.Errorf("read threads of cgroup %s: %w", cg.Rel(), err)
		}
		var stuck []int
		running := false
		for _, f := range strings.Fields(string(b)) {
			tid, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("parse threads of cgroup %s: %w", cg.Rel(), err)
			}
			switch threadState(tid) {
			case 'D':
				stuck = append(stuck, tid)
			case 'R':
				running = true
			}
		}
		if !running || time.Now().After(deadline) || ctx.Err() != nil {
			return stuck, nil
		}
		time.Sleep(settlePoll)
	}
}

// threadState is the state letter of /proc/TID/stat, or 0 when the thread is
// gone.
func threadState(tid int) byte {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/stat")
	if err != nil {
		return 0
	}
	// "pid (comm) S ...": comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// kernelWait names the kernel function a thread waits in (its wchan), for
// the error.
func kernelWait(tid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/wchan")
	if err != nil || len(b) == 0 || string(b) == "0" {
		return "an unknown kernel wait"
	}
	return string(b)
}

// waitLeftD returns once none of tids is in state D any more, after
// settleWait, or when ctx ends.
func waitLeftD(ctx context.Context, tids []int) {
	deadline := time.Now().Add(settleWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		left := true
		for _, tid := range tids {
			if threadState(tid) == 'D' {
				left = false
				break
			}
		}
		if left {
			return
		}
		time.Sleep(settlePoll)
	}
}
