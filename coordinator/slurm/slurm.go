// Package slurm asks a Slurm controller about batch jobs, for a coordinator
// that places a user's job-nodes only inside that user's allocation
// (`torpor coordinator --slurm`). It runs Slurm's own client commands as the
// daemon (root), so Slurm's authentication (MUNGE) and configuration are the
// site's.
package slurm

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/torpor-hpc/torpor/coordinator"
)

// Allocations implements coordinator.Allocations with squeue and scontrol.
type Allocations struct {
	// Env is added to the commands' environment (e.g. SLURM_CONF=...).
	Env []string
	// Timeout bounds each command; 0 means 10 s.
	Timeout time.Duration
}

// run runs a Slurm command and returns its standard output.
func (a Allocations) run(ctx context.Context, name string, args ...string) (string, error) {
	to := a.Timeout
	if to <= 0 {
		to = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(cmd.Environ(), a.Env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Hosts returns the nodes of batch job id if it is uid's and running.
// Only fields the user cannot choose are read: squeue prints the numeric
// uid, the state and the node list, separated by a character none of them
// can hold (a job's name or command, which the user chooses, is never
// parsed).
func (a Allocations) Hosts(ctx context.Context, uid int, id string) ([]string, error) {
	if !validJobID(id) {
		return nil, fmt.Errorf("Slurm job id %q is not a job id", id)
	}
	out, err := a.run(ctx, "squeue", "--noheader", "--jobs="+id, "--format=%U|%T|%N")
	if err != nil {
		if strings.Contains(err.Error(), "Invalid job id") {
			// Slurm forgot it: it ended MinJobAge ago, or never was.
			return nil, fmt.Errorf("%w: Slurm knows no job %s (it ended)", coordinator.ErrAllocationEnded, id)
		}
		return nil, fmt.Errorf("ask Slurm about job %s: %w", id, err)
	}
	if strings.TrimSpace(out) == "" {
		return nil, fmt.Errorf("%w: Slurm lists no job %s (it ended)", coordinator.ErrAllocationEnded, id)
	}
	owner, state, list, err := parseSqueue(out)
	if err != nil {
		return nil, fmt.Errorf("Slurm job %s: %w", id, err)
	}
	if owner != uid {
		return nil, fmt.Errorf("Slurm job %s is not yours (uid %d)", id, uid)
	}
	if state != "RUNNING" {
		return nil, fmt.Errorf("%w: Slurm job %s is %s, not RUNNING: its nodes are not yours now", coordinator.ErrAllocationEnded, id, state)
	}
	out, err = a.run(ctx, "scontrol", "show", "hostnames", list)
	if err != nil {
		return nil, fmt.Errorf("nodes of Slurm job %s: %w", id, err)
	}
	hosts := strings.Fields(out)
	if len(hosts) == 0 {
		return nil, fmt.Errorf("Slurm job %s has no nodes", id)
	}
	return hosts, nil
}

// validJobID accepts a job id (digits) or an array or het job's task
// (digits, '_' or '+', digits).
func validJobID(id string) bool {
	if id == "" || len(id) > 32 {
		return false
	}
	sep := false
	for i, c := range id {
		switch {
		case c >= '0' && c <= '9':
		case (c == '_' || c == '+') && !sep && i > 0 && i < len(id)-1:
			sep = true
		default:
			return false
		}
	}
	return true
}

// parseSqueue reads squeue's one line "UID|STATE|NODELIST".
func parseSqueue(out string) (uid int, state, nodes string, err error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1 || lines[0] == "" {
		return 0, "", "", fmt.Errorf("squeue printed %d lines, want one (is the job still in the queue?)", len(lines))
	}
	f := strings.Split(lines[0], "|")
	if len(f) != 3 {
		return 0, "", "", fmt.Errorf("squeue printed %q, want UID|STATE|NODELIST", lines[0])
	}
	if uid, err = strconv.Atoi(f[0]); err != nil {
		return 0, "", "", fmt.Errorf("squeue's uid %q: %w", f[0], err)
	}
	return uid, f[1], f[2], nil
}
