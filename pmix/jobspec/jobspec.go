// Package jobspec is what pmixd is told to run: a job-node's share of an MPI
// job. It is the contract between the code that plans a job (torpor run), the
// shim that starts pmixd in a job-node's sandbox, and pmixd itself, and it
// needs neither libpmix nor cgo.
package jobspec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"
)

// Env is the environment variable that carries the JSON of a job-node's
// JobSpec: a job-node whose environment holds it runs pmixd (torpor's PMIx
// server, PID 1's child in the sandbox), which the shim serves through a link
// socket.
const Env = "TORPOR_PMIXD_SPEC"

// EnvString is s as the NAME=value string a job-node's environment carries.
func EnvString(s JobSpec) (string, error) {
	data, err := json.Marshal(s)
	if err != nil {
		return "", err
	}
	return Env + "=" + string(data), nil
}

// FromEnv finds and decodes the spec in a job-node's environment; nil when
// there is none.
func FromEnv(env []string) (*JobSpec, error) {
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, Env+"="); ok {
			var js JobSpec
			if err := json.Unmarshal([]byte(v), &js); err != nil {
				return nil, fmt.Errorf("%w: bad %s: %v", ErrBadSpec, Env, err)
			}
			return &js, nil
		}
	}
	return nil, nil
}

// ErrBadSpec is wrapped by JobSpec validation errors.
var ErrBadSpec = errors.New("invalid job spec")

// Wire selects how ranks reach pmixd.
type Wire string

// Wires pmixd serves.
const (
	// WirePMIx is a PMIx server (libpmix): Open MPI ranks. The default.
	WirePMIx Wire = "pmix"
	// WirePMI1 is the PMI-1 simple protocol on an inherited socket (PMI_FD):
	// MPICH ranks. Needs no libpmix, so it also works in !cgo builds.
	WirePMI1 Wire = "pmi1"
)

// Node is one job-node of a job: the hostname its ranks see (its sandbox's UTS
// hostname) and the global ranks it runs, ascending.
type Node struct {
	Hostname string
	Ranks    []int
}

// JobSpec is everything pmixd needs to run its job-node's share of a job.
type JobSpec struct {
	// Job is the job id; it is also the PMIx namespace of the ranks.
	Job string
	// Nodes lists every job-node of the job, by node index.
	Nodes []Node
	// NodeIndex is the job-node this pmixd hosts.
	NodeIndex int
	// Wire is the process-management interface of the ranks; empty means WirePMIx.
	Wire Wire
	// Argv is the program and its arguments, the same for every rank.
	Argv []string
	// Env is the ranks' base environment (KEY=VALUE). Inherited PMIX_*
	// variables other than PMIX_MCA_* are dropped from it.
	Env []string
	// ExtraEnv is applied last and wins (mpirun -x).
	ExtraEnv []string
	// Dir is the ranks' working directory; empty means pmixd's.
	Dir string
	// TmpDir is a directory owned by this pmixd: the PMIx server's rendezvous
	// files and shared-memory data store, and the job's PMIX_TMPDIR, live below
	// it. Ranks must be able to read it and a CRIU restore must find it at the
	// same path. Required.
	TmpDir string
	// TagOutput prefixes every forwarded line with "[job,rank]<stdout>: ".
	TagOutput bool
	// Stdout and Stderr receive the ranks' output, line by line; nil discards.
	// Main sets them to its own.
	Stdout io.Writer `json:"-"`
	Stderr io.Writer `json:"-"`
	// KillGrace is how long a rank has between SIGTERM and SIGKILL when the job
	// is ended; 0 means 2s.
	KillGrace time.Duration
	// Link is the unix socket of the shim serving this job-node (package
	// pmix/link); Main uses it as the Upstream. Empty: a single-node job with
	// LocalUpstream.
	Link string
	// Loader, when set, is the dynamic loader pmixd runs under, with the
	// directories of LibraryPath searched first (ld.so --library-path): the
	// ranks' own loader and library directories, so that pmixd's libpmix (and
	// libc) are the ones the ranks' MPI library was built with — Open MPI 5
	// and its PMIx 5 in a private prefix (make deps), say, on a system whose
	// own libpmix is 4.2. Only for WirePMIx. Empty: pmixd runs as it is.
	Loader      string   `json:",omitempty"`
	LibraryPath []string `json:",omitempty"`
	// ReapOrphans makes pmixd reap every child (wait4(-1)), as PID 1 of a
	// sandbox must. Leave it off when pmixd's logic runs inside a process that
	// has other children.
	ReapOrphans bool
}

// Size is the number of ranks in the job.
func (s JobSpec) Size() int {
	n := 0
	for _, nd := range s.Nodes {
		n += len(nd.Ranks)
	}
	return n
}

// LocalRanks are the ranks this job-node runs.
func (s JobSpec) LocalRanks() []int {
	if s.NodeIndex < 0 || s.NodeIndex >= len(s.Nodes) {
		return nil
	}
	return s.Nodes[s.NodeIndex].Ranks
}

// NodeOf returns the index of the job-node that runs rank, or -1.
func (s JobSpec) NodeOf(rank int) int {
	for i, nd := range s.Nodes {
		for _, r := range nd.Ranks {
			if r == rank {
				return i
			}
		}
	}
	return -1
}

// PMIxdArgv is the command that runs pmixd from the torpor binary self with
// args: self itself, or under Loader with LibraryPath.
func (s JobSpec) PMIxdArgv(self string, args ...string) []string {
	argv := []string{self, "pmixd"}
	if s.Loader != "" {
		argv = []string{s.Loader, "--library-path", strings.Join(s.LibraryPath, ":"), self, "pmixd"}
	}
	return append(argv, args...)
}

// ServerTmpDir is where the PMIx server keeps its rendezvous files.
func (s JobSpec) ServerTmpDir() string { return filepath.Join(s.TmpDir, "srv") }

// JobTmpDir is the job's PMIX_TMPDIR.
func (s JobSpec) JobTmpDir() string { return filepath.Join(s.TmpDir, "job") }

// NsDir is the namespace's PMIX_NSDIR.
func (s JobSpec) NsDir() string { return filepath.Join(s.TmpDir, "job", "ns") }

// Validate checks what it can of the spec without libpmix; pmixd checks the
// namespace map libpmix registers before anything is started as well.
func (s JobSpec) Validate() error {
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		return fmt.Errorf("%w: no program to run", ErrBadSpec)
	}
	switch s.Wire {
	case "", WirePMIx, WirePMI1:
	default:
		return fmt.Errorf("%w: unknown wire %q (want %q or %q)", ErrBadSpec, s.Wire, WirePMIx, WirePMI1)
	}
	if s.Loader != "" {
		if s.Wire == WirePMI1 {
			return fmt.Errorf("%w: a loader for pmixd is for PMIx ranks only", ErrBadSpec)
		}
		if !filepath.IsAbs(s.Loader) {
			return fmt.Errorf("%w: loader %q must be an absolute path", ErrBadSpec, s.Loader)
		}
		for _, d := range s.LibraryPath {
			if !filepath.IsAbs(d) || strings.ContainsAny(d, ":;") {
				return fmt.Errorf("%w: library directory %q must be an absolute path without ':' or ';'", ErrBadSpec, d)
			}
		}
	}
	if s.TmpDir == "" || !filepath.IsAbs(s.TmpDir) {
		return fmt.Errorf("%w: TmpDir %q must be an absolute path", ErrBadSpec, s.TmpDir)
	}
	for i, nd := range s.Nodes {
		for _, r := range nd.Ranks {
			if r < 0 {
				return fmt.Errorf("%w: node %d has negative rank %d", ErrBadSpec, i, r)
			}
		}
	}
	return nil
}
