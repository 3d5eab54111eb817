package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/client"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/coordinator/launch"
	"github.com/torpor-hpc/torpor/internal/config"
	"github.com/torpor-hpc/torpor/internal/embedded"
	"github.com/torpor-hpc/torpor/shim/criu"
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
	prog, err := o.ResolveProgram()
	if err != nil {
		fmt.Fprintln(os.Stderr, "torpor run:", err)
		return exitError{2}
	}
	// Directories the user named are sent along: daemons refuse any but
	// their own, instead of ignoring them.
	req := &apiv1.RunRequest{CheckpointDir: o.CheckpointDir, RunDir: o.RunDir}
	if o.RunDir == "" {
		o.RunDir = "/run/torpor"
	}
	if o.LogLevel == "" {
		o.LogLevel = "warn"
	}
	cfg, err := config.Load("")
	if err != nil {
		return err
	}
	if err := o.KeepDefaults(cfg.Keep, cfg.KeepMax); err != nil {
		fmt.Fprintln(os.Stderr, "torpor run:", err)
		return exitError{2}
	}
	spec, warnings, err := o.JobSpec(prog)
	for _, w := range warnings {
		fmt.Fprintln(os.Stderr, "torpor run:", w)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "torpor run:", err)
		return exitError{2}
	}

	sock := client.SocketPath(o.Socket)
	if !client.Listens(sock) {
		// No coordinator: embed one, on this machine only.
		for _, n := range spec.Nodes {
			if n.Host != embedded.Host {
				return fmt.Errorf("no coordinator at %s, and host %q is not this machine: start `torpor coordinator` and a `torpor shim` per host, or run without --host", sock, n.Host)
			}
		}
		bin, err := criu.Locator{Config: cfg.CRIU}.Find()
		if err != nil {
			return err
		}
		if o.CheckpointDir != "" {
			cfg.CheckpointDir = o.CheckpointDir
		}
		stack, err := embedded.Start(ctx, embedded.Config{
			StateDir: cfg.StateDir, CheckpointDir: cfg.CheckpointDir, Socket: sock, RunDir: o.RunDir,
			CgroupParent: "/" + strings.Trim(cfg.CgroupRoot, "/"), CRIU: bin, Log: newLogger(o.LogLevel),
		})
		if err != nil {
			return err
		}
		defer stack.Close(ctx)
	}
	cl, done, err := client.Dial(sock)
	if err != nil {
		return err
	}
	defer done()
	req.Spec = coordinator.SpecToPB(spec)
	code, err := client.Supervise(ctx, cl, req, os.Stderr, client.SuperviseOptions{
		RunDir: o.RunDir, Output: os.Stdout, RestartOnFailure: o.RestartOnFailure,
		CheckpointInterval: o.CheckpointInterval, CheckpointSignal: o.CheckpointSignal,
	})
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}
