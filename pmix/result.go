package pmix

import (
	"errors"
	"fmt"
	"syscall"
)

// Sentinel causes carried by JobError.
var (
	ErrRankAborted  = errors.New("rank called MPI_Abort")
	ErrRankFailed   = errors.New("rank failed")
	ErrJobStopped   = errors.New("job stopped")
	ErrNoFinalize   = errors.New("rank exited without calling MPI_Finalize")
	ErrRankSignaled = errors.New("rank killed by a signal")
)

// JobError says why a job ended badly and which rank caused it.
type JobError struct {
	Job    string
	Node   int
	Rank   int // -1 when no rank is at fault (e.g. the job was stopped)
	Code   int // the exit code pmixd returns
	Reason string
	Cause  error // one of the sentinels above, or the stop cause
}

func (e *JobError) Error() string {
	if e.Rank < 0 {
		return fmt.Sprintf("job %s: %s (exit code %d)", e.Job, e.Reason, e.Code)
	}
	return fmt.Sprintf("job %s: rank %d %s (exit code %d)", e.Job, e.Rank, e.Reason, e.Code)
}

func (e *JobError) Unwrap() error { return e.Cause }

// rankExit is how one rank ended.
type rankExit struct {
	rank   int
	pid    int
	status syscall.WaitStatus
}

// abortInfo records a PMIx_Abort from a rank.
type abortInfo struct {
	status int
	msg    string
}

// judge turns a rank's end into a JobError, or nil if it ended well.
func judge(job string, node int, e rankExit, ab *abortInfo, connected, finalized bool) *JobError {
	je := &JobError{Job: job, Node: node, Rank: e.rank}
	switch {
	case ab != nil:
		je.Code = ab.status & 0xff
		if je.Code == 0 {
			je.Code = 1 // an abort is never a success
		}
		je.Cause = ErrRankAborted
		je.Reason = fmt.Sprintf("called MPI_Abort with error code %d", ab.status)
		if ab.msg != "" && ab.msg != "N/A" { // Open MPI sends "N/A" for no message
			je.Reason += ": " + ab.msg
		}
	case e.status.Signaled():
		sig := e.status.Signal()
		je.Code = 128 + int(sig)
		je.Cause = ErrRankSignaled
		je.Reason = fmt.Sprintf("(pid %d) was killed by signal %d (%s)", e.pid, int(sig), sig)
	case e.status.ExitStatus() != 0:
		je.Code = e.status.ExitStatus()
		je.Cause = ErrRankFailed
		je.Reason = fmt.Sprintf("(pid %d) exited with status %d", e.pid, je.Code)
	case connected && !finalized:
		je.Code = 1
		je.Cause = ErrNoFinalize
		je.Reason = fmt.Sprintf("(pid %d) exited with status 0 after MPI_Init but without calling MPI_Finalize", e.pid)
	default:
		return nil
	}
	return je
}
