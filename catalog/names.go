package catalog

import (
	"fmt"
	"strconv"
	"strings"
)

const maxNameLen = 128

// validName checks a job or node name: 1..128 characters from [A-Za-z0-9._-], not
// starting with '.', so it is always a single, ordinary path component.
func validName(kind, s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s name", ErrBadHandle, kind)
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("%w: %s name longer than %d characters", ErrBadHandle, kind, maxNameLen)
	}
	if s[0] == '.' {
		return fmt.Errorf("%w: %s name %q starts with '.'", ErrBadHandle, kind, s)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok {
			return fmt.Errorf("%w: %s name %q may only contain letters, digits, '.', '_' and '-'", ErrBadHandle, kind, s)
		}
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
	if err := validName("job", job); err != nil {
		return "", 0, fmt.Errorf("parse handle %q: %w", handle, err)
	}
	seq, ok = parseSeq(s)
	if !ok {
		return "", 0, fmt.Errorf("%w: %q: sequence %q must be a zero-padded number such as 000004", ErrBadHandle, handle, s)
	}
	return job, seq, nil
}
