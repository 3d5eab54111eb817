package pmix

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/torpor-hpc/torpor/pmix/link"
)

// Main is `torpor pmixd --spec FILE [--log-level LEVEL]`: it reads the JSON
// of a JobSpec (encoding/json of pmix.JobSpec; Stdout and Stderr are not
// part of it), runs the job-node with the link client at spec.Link as its
// Upstream (LocalUpstream without one), forwards the ranks' output to stdout
// and stderr, logs to stderr, and returns the job-node's exit code (2 for a
// usage error). SIGTERM and SIGINT end the ranks (exit code 143).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pmixd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	specPath := fs.String("spec", "", "JSON job spec of this job-node (required)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *specPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "pmixd: usage: torpor pmixd --spec FILE [--log-level LEVEL]")
		return 2
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "pmixd: bad --log-level %q: want debug, info, warn or error\n", *level)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv})).With("component", "pmixd")
	spec, err := readSpec(*specPath)
	if err != nil {
		log.Error("read job spec", "err", err)
		return 2
	}
	spec.Stdout, spec.Stderr = stdout, stderr
	spec.ReapOrphans = os.Getpid() == 1

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var up Upstream = LocalUpstream{}
	var cl *link.Client
	if spec.Link != "" {
		cl = link.NewClient(link.Config{Path: spec.Link, Job: spec.Job, Node: spec.NodeIndex, Logger: log})
		up = cl
	}
	d, err := New(spec, up, log)
	if err != nil {
		log.Error("start pmixd", "err", err)
		return 2
	}
	linkCtx, cancelLink := context.WithCancel(context.WithoutCancel(ctx))
	linkDone := make(chan struct{})
	if cl != nil {
		go func() {
			defer close(linkDone)
			_ = cl.Run(linkCtx, d)
		}()
	} else {
		close(linkDone)
	}
	code, err := d.Run(ctx)
	cancelLink()
	<-linkDone
	if err != nil {
		log.Error("job-node ended", "code", code, "err", err)
	} else {
		log.Info("job-node ended", "code", code)
	}
	return code
}

// readSpec reads and validates a JSON JobSpec.
func readSpec(path string) (JobSpec, error) {
	var spec JobSpec
	b, err := os.ReadFile(path)
	if err != nil {
		return spec, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return spec, fmt.Errorf("decode %s: %w", path, err)
	}
	if err := validate(spec); err != nil {
		return spec, fmt.Errorf("%s: %w", path, err)
	}
	return spec, nil
}
