package main

import (
	"context"
	"os"

	"github.com/torpor-hpc/torpor/doctor"
	"github.com/torpor-hpc/torpor/internal/config"
	"github.com/torpor-hpc/torpor/internal/embedded"
	"github.com/torpor-hpc/torpor/shim/criu"
)

func runDoctor(ctx context.Context, args []string) error {
	fs := newFlagSet("doctor", "")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	criuPath := fs.String("criu", "", "CRIU binary to check (default: $TORPOR_CRIU, config, "+criu.DefaultPrefix+", $PATH)")
	cfgPath := fs.String("config", "", "configuration file (default: $TORPOR_CONFIG or "+config.DefaultPath+")")
	ckptDir := fs.String("checkpoint-dir", "", "checkpoint directory to measure (default: from the config)")
	runDir := fs.String("run-dir", embedded.DefaultRunDir, "the shim's run directory, to check its file system")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if *ckptDir == "" {
		*ckptDir = cfg.CheckpointDir
	}
	env := &doctor.Env{
		CRIU:          criu.Locator{Flag: *criuPath, Config: cfg.CRIU},
		CheckpointDir: *ckptDir,
		RunDir:        *runDir,
		PMIxVersion:   pmixVersion,
	}
	if err := env.Probe(); err != nil {
		return err
	}
	rep := doctor.Run(ctx, env, doctor.Checks())
	if *asJSON {
		err = rep.WriteJSON(os.Stdout)
	} else {
		err = rep.WriteText(os.Stdout)
	}
	if err != nil {
		return err
	}
	if rep.Failed() {
		return exitError{1}
	}
	return nil
}
