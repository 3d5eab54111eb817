package catalog

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/torpor-hpc/torpor/agentapi"
)

// validName checks a job id or job-node name with agentapi.CheckName (the
// same rule as the coordinator's and the shim's), so it is always a single,
// ordinary path component. The error matches ErrBadHandle and
// agentapi.ErrInvalid.
func validName(kind, s string) error {
	if err := agentapi.CheckName(kind, s); err != nil {
		return fmt.Errorf("%w: %w", ErrBadHandle, err)
	}
	return nil
}

// formatSeq is the directory name of sequence number n.
func formatSeq(n uint64) string { return fmt.Sprintf("%06d", n) }

// parseSeq accepts only the canonical form written by formatSeq (so "1" and
// "0000001" are not aliases of "000001").
func parseSeq(s string) (uint64, bool) {
	if len(s) < 6 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 || formatSeq(n) != s {
		return 0, false
	}
	return n, true
}

// FormatHandle builds the handle "<job>/<seq>".
func FormatHandle(job string, seq uint64) string { return job + "/" + formatSeq(seq) }

// ParseHandle splits "<job>/<seq>" (e.g. "ring-7f3a/000004") into job and sequence
// number.
func ParseHandle(handle string) (job string, seq uint64, err error) {
	job, s, ok := strings.Cut(handle, "/")
	if !ok {
		return "", 0, fmt.Errorf("%w: %q is not of the form <job>/<seq> (e.g. ring-7f3a/000004); `torpor ls` lists them", ErrBadHandle, handle)
	}
	if err := validName("job id", job); err != nil {
		return "", 0, fmt.Errorf("parse handle %q: %w", handle, err)
	}
	seq, ok = parseSeq(s)
	if !ok {
		return "", 0, fmt.Errorf("%w: %q: sequence %q must be a zero-padded number such as 000004", ErrBadHandle, handle, s)
	}
	return job, seq, nil
}
