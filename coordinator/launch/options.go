// Package launch turns the arguments of `torpor run` into a validated launch
// plan: mpirun-style flags (Open MPI spelling, single- and double-dash long
// flags), Open MPI hostfiles, rank placement over hosts, the program to run
// and the MPI flavour it was built against; and the plan into the job spec
// the coordinator starts (JobSpec): a job-node per host, each with a pmixd
// and the MPI settings its flavour needs between job-nodes.
//
// Nothing here starts anything: Parse only reads arguments, Validate and
// Resolve only look at the file system, and Place is pure. Every error a user
// can hit says what to do next.
package launch

import (
	"errors"
	"syscall"
	"time"
)

// MPI flavours a program can be built against.
const (
	MPIOpenMPI = "openmpi"
	MPIMPICH   = "mpich"
)

// Rank mapping policies (--map-by).
const (
	MapBySlot = "slot"
	MapByNode = "node"
)

// LocalHost is the single host of the embedded default: no --host and no
// --hostfile means every rank runs on this machine, in one sandbox.
const LocalHost = "localhost"

// Sentinel errors. Errors returned by this package wrap one of them, so
// callers can tell a usage mistake from a missing program or host.
var (
	// ErrHelp is returned by Parse for -h/--help; print Usage() and exit 0.
	ErrHelp = errors.New("help requested")
	// ErrUsage wraps every malformed command line (unknown or malformed flag,
	// missing value). Print the message and point at `torpor run -h`.
	ErrUsage = errors.New("invalid torpor run command line")
	// ErrNoProgram means no program was given after the flags.
	ErrNoProgram = errors.New("no program to run")
	// ErrProgram means the program cannot be found or is not executable.
	ErrProgram = errors.New("program cannot be run")
	// ErrHostfile wraps every hostfile and --host syntax error.
	ErrHostfile = errors.New("invalid host list")
	// ErrUnknownHost means a host is not part of the cluster.
	ErrUnknownHost = errors.New("unknown host")
	// ErrNotEnoughSlots means more ranks than slots without --oversubscribe,
	// or more ranks than max_slots allows even with it.
	ErrNotEnoughSlots = errors.New("not enough slots")
	// ErrUnknownMPI means DetectMPI found no MPI library in the program.
	ErrUnknownMPI = errors.New("cannot tell which MPI the program uses")
)

// HostSlots is one host and how many ranks it takes.
type HostSlots struct {
	Host string
	// Slots is the number of ranks the host takes without oversubscribing
	// (>= 1).
	Slots int
	// MaxSlots caps the ranks on the host even with --oversubscribe;
	// 0 means no cap.
	MaxSlots int
}

// EnvVar is one -x option.
type EnvVar struct {
	Name  string
	Value string
	// FromCaller is true for `-x NAME` (no "="): the value is taken from the
	// environment of `torpor run` when the ranks start.
	FromCaller bool
}

// MCAParam is one --mca KEY VALUE, passed to the ranks as OMPI_MCA_KEY=VALUE.
type MCAParam struct {
	Key   string
	Value string
}

// Options is everything `torpor run` was told. The zero value of a field
// means "not given"; Parse fills defaults where a default exists.
type Options struct {
	// Plain runs the program as is, once per host, without MPI (torpor only).
	Plain bool
	// Socket is the coordinator's socket; RunDir where job-node output
	// files are; LogLevel the embedded coordinator's (torpor only).
	Socket, RunDir, LogLevel string
	// NP is the number of ranks (-n/-np/-c). 0 means not given: Resolve then
	// uses the total slot count of the hosts, or the local CPU count.
	NP int
	// Hosts from --host/-H, in order, duplicates merged (slots added).
	Hosts []HostSlots
	// Hostfile is the --hostfile/--machinefile path, read by Resolve.
	Hostfile string
	// MapBy is MapBySlot (default) or MapByNode.
	MapBy string
	// Oversubscribe allows more ranks than slots on a host.
	Oversubscribe bool
	// Env holds the -x options in order.
	Env []EnvVar
	// TagOutput prefixes every output line with `[job,rank]<stream>:`.
	TagOutput bool
	// Wdir is the ranks' working directory (--wdir/--wd); a relative program
	// path is resolved against it.
	Wdir string
	// MCA holds --mca KEY VALUE in first-given order; a later value for the
	// same key replaces the earlier one. `--mca crs criu` is consumed (it sets
	// Checkpointing) and is not in this list.
	MCA []MCAParam
	// Keep are paths whose files are captured at every checkpoint besides
	// those the job holds open for writing (--keep, repeatable): a file, or
	// a directory and everything below it. Relative to Wdir (or the current
	// directory).
	Keep []string
	// KeepMax bounds what one job-node's capture copies (--keep-max); 0
	// means 1 GiB.
	KeepMax int64
	// Compress is how the job's checkpoints store the memory images
	// (--compress none|lz4|zstd; "" is none).
	Compress string
	// Checkpointing is on with `--mca crs criu`, `-am ft-enable-cr`,
	// --checkpoint-dir or --checkpoint-interval.
	Checkpointing bool
	// CheckpointDir holds the job's checkpoints ("" = coordinator default).
	CheckpointDir string
	// CheckpointInterval is the time between periodic checkpoints (0 = only
	// on demand).
	CheckpointInterval time.Duration
	// CheckpointSignal sent to the launcher means "checkpoint now"
	// (default SIGUSR1, as Hydra; --signal changes it, Slurm spelling).
	CheckpointSignal syscall.Signal
	// SignalLead is the "@N" of --signal=B:USR1@N: how long before the end
	// of the allocation Slurm sends the signal. Informational.
	SignalLead time.Duration
	// RestartOnFailure is how many times a failed job is restarted from its
	// last checkpoint (0 = never).
	RestartOnFailure int
	// MPI is MPIOpenMPI, MPIMPICH, or "" (autodetect with DetectMPI).
	MPI string
	// JobName names the job in `torpor ps` ("" = derived from the program).
	JobName string
	// Program is the program to run, as given; Args are its arguments.
	Program string
	Args    []string
}
