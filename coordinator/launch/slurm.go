package launch

import (
	"fmt"
	"strconv"
)

// Slurm is what `torpor run` learns from the Slurm environment.
type Slurm struct {
	// InAllocation is true inside a Slurm job (SLURM_JOB_ID is set).
	InAllocation bool
	JobID        string
	// RestartCount is SLURM_RESTART_COUNT: how many times Slurm requeued the
	// job (--requeue). Above 0, the run restarts from the last checkpoint.
	RestartCount int
}

// Restart says whether this run is a restart of a requeued job.
func (s Slurm) Restart() bool { return s.RestartCount > 0 }

// DetectSlurm reads the Slurm environment through getenv (os.Getenv in
// production). A malformed SLURM_RESTART_COUNT is an error rather than a
// silent first run, since treating a restart as a first run would start the
// job over and lose its progress.
func DetectSlurm(getenv func(string) string) (Slurm, error) {
	s := Slurm{JobID: getenv("SLURM_JOB_ID")}
	s.InAllocation = s.JobID != ""
	if v := getenv("SLURM_RESTART_COUNT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return Slurm{}, fmt.Errorf("read SLURM_RESTART_COUNT=%q: not a count; unset it for a first run", v)
		}
		s.RestartCount = n
	}
	return s, nil
}
