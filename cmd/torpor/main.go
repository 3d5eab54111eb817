// Command torpor checkpoints, restarts and migrates running MPI jobs.
//
// One binary plays every role: the CLI verbs, the coordinator and shim
// daemons, and pmixd inside each job-node sandbox. main only parses flags
// and calls into the packages that hold the logic.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/torpor-hpc/torpor/metrics"
	"github.com/torpor-hpc/torpor/shim/sandbox"
)

// verb is one sub-command.
type verb struct {
	summary string
	run     func(ctx context.Context, args []string) error
}

var verbs = map[string]verb{
	"coordinator": {"run the coordinator daemon (jobs, protocol, checkpoint catalog)", runCoordinator},
	"shim":        {"run the per-host shim daemon (sandboxes, CRIU, eBPF lock)", runShim},
	"sim":         {"create (up NAME HOSTS) or remove (down NAME) a simulated cluster on this machine", runSim},
	"batch":       {"in a Slurm batch script: run the job, restart it after a requeue, checkpoint and requeue it before the time limit", runBatch},
	"cancel":      {"end a job now (its checkpoints are kept)", runCancel},
	"checkpoint":  {"checkpoint a running job; prints the checkpoint handle", runCheckpoint},
	"events":      {"show the history of jobs: state changes, checkpoints, restarts, migrations, failures (--follow: as they happen)", runEvents},
	"doctor":      {"check that this host can run torpor, and say how to fix what is missing", runDoctor},
	"ls":          {"list checkpoints, with size, phases and verification", runLs},
	"migrate":     {"move one job-node of a running job to another host", runMigrate},
	"pmixd":       {"(internal) an MPI job-node's PMIx server, started by the shim", runPMIxd},
	"ps":          {"list jobs", runPs},
	"run":         {"run a job (mpirun flags); embeds a coordinator when none runs", runRun},
	"restart":     {"restart a job from a checkpoint handle or its newest checkpoint", runRestart},
	"resume":      {"restart a suspended job from its newest checkpoint", runResume},
	"suspend":     {"checkpoint a job and stop it, freeing its hosts", runSuspend},
	"wait":        {"wait until a job finishes, fails or is suspended; exit with its status", runWait},
	"version":     {"print torpor's version", runVersion},
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a process exit status out of a verb.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: torpor <command> [flags] [args]\n\ncommands:\n")
	names := make([]string, 0, len(verbs))
	for n := range verbs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, verbs[n].summary)
	}
	fmt.Fprintf(w, "\nRun `torpor <command> -h` for the flags of a command.\n")
}

func main() {
	// A sandbox's init is a re-exec of this binary: it never returns.
	sandbox.MaybeRunInit()
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage(os.Stdout)
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	v, ok := verbs[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "torpor: unknown command %q\n\n", os.Args[1])
		usage(os.Stderr)
		os.Exit(2)
	}
	metrics.Version = version
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := v.run(ctx, os.Args[2:])
	stop()
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "torpor %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func runVersion(context.Context, []string) error {
	fmt.Println("torpor", version)
	return nil
}

// newFlagSet returns a flag set whose parse errors come back as errors
// (exit status 2 from main), never as an os.Exit inside the flag package.
func newFlagSet(name, argsUsage string) *flag.FlagSet {
	fs := flag.NewFlagSet("torpor "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: torpor %s [flags] %s\n", name, argsUsage)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses flags that may also follow the positional arguments
// (`torpor migrate JOB --node n1 --to h4`). The positional arguments are left
// in fs.Args(). A "--" ends the flags.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return exitError{2}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	// Leave the positional arguments where fs.Args() finds them.
	_ = fs.Parse(append([]string{"--"}, pos...))
	return nil
}
