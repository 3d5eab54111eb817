package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/client"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/coordinator/launch"
	"github.com/torpor-hpc/torpor/internal/config"
	"github.com/torpor-hpc/torpor/internal/embedded"
)

func runRun(ctx context.Context, args []string) error {
	o, err := launch.Parse(args)
	if errors.Is(err, launch.ErrHelp) {
		fmt.Print(launch.Usage())
		return nil
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "torpor run:", err)
		return exitError{2}
	}
	spec, err := jobSpec("run", o)
	if err != nil {
		return err
	}
	// Directories the user named are sent along: daemons refuse any but
	// their own, instead of ignoring them.
	req := &apiv1.RunRequest{CheckpointDir: o.CheckpointDir, RunDir: o.RunDir}
	runDir := o.RunDir

	sock := client.SocketPath(o.Socket)
	if !client.Listens(sock) {
		// No coordinator: one is embedded, on this machine only.
		for _, n := range spec.Nodes {
			if n.Host != embedded.Host {
				return fmt.Errorf("no coordinator at %s, and host %q is not this machine: start `torpor coordinator` and a `torpor shim` per host, or run without --host", sock, n.Host)
			}
		}
	}
	ss, err := connect(ctx, o.Socket, embedOptions{runDir: runDir, checkpointDir: o.CheckpointDir, logLevel: o.LogLevel})
	if err != nil {
		return err
	}
	defer ss.close(ctx, true)
	cl := ss.cl
	req.Spec = coordinator.SpecToPB(spec)
	code, err := client.Supervise(ctx, cl, req, os.Stderr, client.SuperviseOptions{
		RunDir: ss.runDir(runDir), Output: os.Stdout, RestartOnFailure: o.RestartOnFailure,
		CheckpointInterval: o.CheckpointInterval, CheckpointSignal: o.CheckpointSignal,
		Reconnect: ss.reconnect,
	})
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}

// jobSpec turns the parsed flags of `torpor VERB` into a job spec: the
// program resolved, the host's keep defaults applied, warnings printed. A
// mistake of the user's is printed and exits with status 2.
func jobSpec(verb string, o launch.Options) (coordinator.JobSpec, error) {
	usage := func(err error) (coordinator.JobSpec, error) {
		fmt.Fprintf(os.Stderr, "torpor %s: %v\n", verb, err)
		return coordinator.JobSpec{}, exitError{2}
	}
	prog, err := o.ResolveProgram()
	if err != nil {
		return usage(err)
	}
	cfg, err := config.Load("")
	if err != nil {
		return coordinator.JobSpec{}, err
	}
	if err := o.KeepDefaults(cfg.Keep, cfg.KeepMax); err != nil {
		return usage(err)
	}
	spec, warnings, err := o.JobSpec(prog)
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "torpor %s: %v\n", verb, w)
	}
	if err != nil {
		return usage(err)
	}
	return spec, nil
}
