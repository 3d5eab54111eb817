// Command torpor-bench runs torpor's benchmarks (bench/README.md) and writes
// bench/results/<date>-<host>.{json,md}, PNG plots and latest.md. The plots
// are drawn by bin/torpor-plot (bench/plot, its own Go module; `make bench`
// builds both).
//
//	torpor-bench [-quick | -full] [-out bench/results] [-only b1,b2,b4,b5,b6,b7,b8,b9] [-v]
//	torpor-bench -render bench/results/<date>-<host>.json [-out DIR]
//	torpor-bench -readme README.md -from bench/results/latest.json
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/torpor-hpc/torpor/bench/harness"
	"github.com/torpor-hpc/torpor/shim/sandbox"
)

func main() {
	sandbox.MaybeRunInit() // the sandbox init is a re-exec of this binary
	quick := flag.Bool("quick", true, "the short run (< 10 minutes on 2 cores)")
	full := flag.Bool("full", false, "the complete run (sizes up to 1 GiB, 64 real job-nodes)")
	out := flag.String("out", "bench/results", "directory for the results")
	repo := flag.String("repo", ".", "repository root (bench/workloads/bin, bin/torpor)")
	work := flag.String("work", "/var/tmp", "scratch directory for images (its storage is what is measured)")
	only := flag.String("only", "", "run only these benchmarks: comma-separated b1,b2 (with b3),b4,b5,b6,b7,b8,b9")
	verbose := flag.Bool("v", false, "log the coordinator's and shims' events")
	render := flag.String("render", "", "only rewrite the summary and plots of this results .json")
	plotter := flag.String("plot", "", "the torpor-plot binary that draws the PNGs (default <repo>/bin/torpor-plot)")
	readme := flag.String("readme", "", "only rewrite this README's generated benchmark section from -from")
	from := flag.String("from", "bench/results/latest.json", "the results .json -readme reads")
	flag.Parse()
	if *readme != "" {
		if err := harness.UpdateReadme(*readme, *from); err != nil {
			fmt.Fprintln(os.Stderr, "torpor-bench:", err)
			os.Exit(1)
		}
		return
	}
	if *plotter == "" {
		*plotter = filepath.Join(*repo, "bin", "torpor-plot")
	}
	if *render != "" {
		files, err := harness.Render(*render, *out, *plotter)
		if err != nil {
			fmt.Fprintln(os.Stderr, "torpor-bench:", err)
			os.Exit(1)
		}
		for _, f := range files {
			fmt.Println(f)
		}
		return
	}
	_ = quick
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	res, files, err := harness.Run(ctx, harness.Config{
		Full: *full, Out: *out, Repo: *repo, WorkDir: *work, Only: *only, Plotter: *plotter, Log: log,
		Progress: func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "torpor-bench:", err)
		os.Exit(1)
	}
	for _, f := range files {
		fmt.Println(f)
	}
	if len(res.Errors) > 0 {
		fmt.Fprintf(os.Stderr, "torpor-bench: %d benchmark(s) failed, see the summary\n", len(res.Errors))
		os.Exit(1)
	}
}
