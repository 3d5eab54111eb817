// Package coordinator owns jobs and drives the coordinated checkpoint,
// restart and migration protocol across every shim that hosts a job-node.
//
// It never touches processes, namespaces or CRIU itself: every action on a
// job-node goes through an agentapi.Agent (the shim of the host the job-node
// lives on).
// docs/protocol.md describes the phases, deadlines and failure handling that
// this package implements.
package coordinator

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
)

// JobSpec is everything needed to start a job, and to restart it from a
// checkpoint on any set of hosts.
type JobSpec struct {
	ID    string              `json:"id"`
	Owner int                 `json:"owner"` // uid of the user who started it
	Nodes []agentapi.NodeSpec `json:"nodes"`
	// Compress is how its checkpoints store the memory images: "" or
	// "none" raw, "lz4", "zstd" (torpor run --compress).
	Compress string `json:"compress,omitempty"`
}

// Node returns the job-node called name.
func (s *JobSpec) Node(name string) (*agentapi.NodeSpec, error) {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i], nil
		}
	}
	return nil, fmt.Errorf("%w: job %s has no job-node %q", agentapi.ErrNotFound, s.ID, name)
}

// Validate reports the first thing wrong with a job spec.
func (s *JobSpec) Validate() error {
	if s.ID == "" {
		return fmt.Errorf("%w: job has no id", agentapi.ErrInvalid)
	}
	if err := agentapi.CheckName("job id", s.ID); err != nil {
		return err
	}
	if len(s.Nodes) == 0 {
		return fmt.Errorf("%w: job %s has no job-nodes", agentapi.ErrInvalid, s.ID)
	}
	if _, err := catalog.ParseCodec(s.Compress); err != nil {
		return fmt.Errorf("%w: job %s: --compress: %w", agentapi.ErrInvalid, s.ID, err)
	}
	names := map[string]bool{}
	ips := map[string]bool{}
	for _, n := range s.Nodes {
		switch {
		case n.Name == "":
			return fmt.Errorf("%w: job %s has a job-node without a name", agentapi.ErrInvalid, s.ID)
		case !agentapi.ValidName(n.Name):
			return fmt.Errorf("job %s: %w", s.ID, agentapi.CheckName("job-node name", n.Name))
		case names[n.Name]:
			return fmt.Errorf("%w: job %s has two job-nodes called %s", agentapi.ErrInvalid, s.ID, n.Name)
		case n.Host == "":
			return fmt.Errorf("%w: job-node %s of job %s has no host", agentapi.ErrInvalid, n.Name, s.ID)
		case n.IP != "" && ips[n.IP]:
			return fmt.Errorf("%w: job %s gives address %s to two job-nodes", agentapi.ErrInvalid, s.ID, n.IP)
		case len(n.Argv) == 0:
			return fmt.Errorf("%w: job-node %s of job %s has no command", agentapi.ErrInvalid, n.Name, s.ID)
		case !agentapi.ValidName(n.Host):
			return fmt.Errorf("job-node %s: %w", n.Name, agentapi.CheckName("host name", n.Host))
		case n.Hostname != "" && !agentapi.ValidName(n.Hostname):
			return fmt.Errorf("job-node %s: %w", n.Name, agentapi.CheckName("hostname", n.Hostname))
		case n.Dir != "" && !filepath.IsAbs(n.Dir):
			return fmt.Errorf("%w: job-node %s: working directory %q is not absolute", agentapi.ErrInvalid, n.Name, n.Dir)
		case len(n.Keep) > MaxKeep:
			return fmt.Errorf("%w: job-node %s: %d --keep paths, at most %d are allowed", agentapi.ErrInvalid, n.Name, len(n.Keep), MaxKeep)
		case n.KeepMax < 0:
			return fmt.Errorf("%w: job-node %s: --keep-max %d is negative", agentapi.ErrInvalid, n.Name, n.KeepMax)
		}
		for _, k := range n.Keep {
			if !filepath.IsAbs(k) || filepath.Clean(k) != k || k == "/" || strings.IndexByte(k, 0) >= 0 || len(k) > 4096 {
				return fmt.Errorf("%w: job-node %s: --keep %q: give an absolute, clean path below /", agentapi.ErrInvalid, n.Name, truncate(k, 80))
			}
		}
		if err := checkStrings(n.Name, "command", n.Argv, false); err != nil {
			return err
		}
		if err := checkStrings(n.Name, "environment", n.Env, true); err != nil {
			return err
		}
		if strings.IndexByte(n.Dir, 0) >= 0 {
			return fmt.Errorf("%w: job-node %s: working directory holds a NUL byte", agentapi.ErrInvalid, n.Name)
		}
		names[n.Name], ips[n.IP] = true, true
	}
	if len(s.Nodes) > MaxNodes {
		return fmt.Errorf("%w: job %s has %d job-nodes, at most %d are allowed", agentapi.ErrInvalid, s.ID, len(s.Nodes), MaxNodes)
	}
	return nil
}

// Limits on what one request may carry. A command line and an environment
// reach execve(2): Linux refuses a single string over 128 KiB
// (MAX_ARG_STRLEN) and, with the default 8 MiB stack, more than 2 MiB of
// both together; the coordinator refuses them first, with a message.
const (
	MaxNodes     = 4096
	MaxArgString = 128 << 10
	MaxArgBytes  = 2 << 20
	MaxArgs      = 1 << 16
	MaxKeep      = 64 // --keep paths per job
)

// checkStrings checks one job-node's command or environment: a bounded
// count and size, no NUL bytes, and NAME=value for the environment.
func checkStrings(node, what string, ss []string, env bool) error {
	if len(ss) > MaxArgs {
		return fmt.Errorf("%w: job-node %s: the %s has %d strings, at most %d are allowed", agentapi.ErrInvalid, node, what, len(ss), MaxArgs)
	}
	total := 0
	for i, v := range ss {
		total += len(v) + 1
		switch {
		case len(v) > MaxArgString:
			return fmt.Errorf("%w: job-node %s: %s string %d is %d bytes, at most %d are allowed", agentapi.ErrInvalid, node, what, i, len(v), MaxArgString)
		case strings.IndexByte(v, 0) >= 0:
			return fmt.Errorf("%w: job-node %s: %s string %d holds a NUL byte", agentapi.ErrInvalid, node, what, i)
		case env && (strings.IndexByte(v, '=') <= 0):
			return fmt.Errorf("%w: job-node %s: environment string %q is not NAME=value", agentapi.ErrInvalid, node, truncate(v, 40))
		case !env && i == 0 && v == "":
			return fmt.Errorf("%w: job-node %s: the program name is empty", agentapi.ErrInvalid, node)
		}
	}
	if total > MaxArgBytes {
		return fmt.Errorf("%w: job-node %s: the %s is %d bytes, at most %d are allowed", agentapi.ErrInvalid, node, what, total, MaxArgBytes)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// State is where a job is in its life.
type State string

const (
	StateStarting      State = "starting"      // sandboxes being created
	StateRunning       State = "running"       // every job-node running
	StateCheckpointing State = "checkpointing" // a checkpoint is in progress
	StateMigrating     State = "migrating"     // a job-node is moving
	StateSuspended     State = "suspended"     // no processes; restartable from its last checkpoint
	StateRestoring     State = "restoring"     // being restored from a checkpoint
	StateFinished      State = "finished"      // every job-node exited 0
	StateFailed        State = "failed"        // a job-node failed, or an operation lost it
)

// transitions lists the legal moves of the job state machine.
var transitions = map[State][]State{
	StateStarting:      {StateRunning, StateFailed},
	StateRunning:       {StateCheckpointing, StateMigrating, StateFinished, StateFailed},
	StateCheckpointing: {StateRunning, StateSuspended, StateFailed, StateFinished},
	StateMigrating:     {StateRunning, StateFailed, StateFinished},
	StateSuspended:     {StateRestoring, StateFailed},
	StateRestoring:     {StateRunning, StateSuspended, StateFailed},
	StateFinished:      {},
	StateFailed:        {StateRestoring},
}

// Transient says whether a job in state s is in the middle of an
// operation: a job left there by a coordinator that died, or by a rollback
// that could not reach a shim, is settled later (Coordinator.settle).
func (s State) Transient() bool {
	switch s {
	case StateCheckpointing, StateMigrating, StateRestoring, StateStarting:
		return true
	}
	return false
}

// CanMove reports whether a job may go from one state to another.
func CanMove(from, to State) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Job is the coordinator's record of one job.
type Job struct {
	Spec    JobSpec   `json:"spec"`
	State   State     `json:"state"`
	Reason  string    `json:"reason,omitempty"` // why it failed, or the last error of an aborted operation
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// LastCheckpoint is the handle of the newest committed checkpoint.
	LastCheckpoint string `json:"last_checkpoint,omitempty"`
	// ExitCode is set when the job finished or failed by a job-node exiting.
	ExitCode int `json:"exit_code"`
	// Leaving is the old copy of a job-node whose migration is past its
	// point of no return: Spec places the job-node on its new host, and
	// this copy, frozen and locked, is still to be destroyed. It is saved
	// before the job is unlocked, so that a coordinator that dies meanwhile
	// destroys it when it settles the job (settle) instead of thawing it
	// beside the new copy.
	Leaving *agentapi.NodeSpec `json:"leaving,omitempty"`
	// Arriving is the copy a running migration restores on the job-node's
	// new host, saved as the migration begins: until the point of no return
	// (when Spec takes it and Leaving the old copy) the job-node's place is
	// still its old host. A coordinator that dies between the restore and
	// that point destroys it when it settles the job, before it thaws the
	// old copy; without it, the restored copy stayed frozen on the new
	// host, holding its memory, and a later migration there was refused
	// (the shim already had the job-node).
	Arriving *agentapi.NodeSpec `json:"arriving,omitempty"`
}

func (j *Job) move(to State, now time.Time) error {
	if !CanMove(j.State, to) {
		return fmt.Errorf("%w: job %s is %s and cannot become %s", agentapi.ErrState, j.Spec.ID, j.State, to)
	}
	j.State, j.Updated = to, now
	return nil
}
