package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

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
	dirs := &apiv1.RunRequest{CheckpointDir: o.CheckpointDir, RunDir: o.RunDir}
	if o.RunDir == "" {
		o.RunDir = "/run/torpor"
	}
	if o.LogLevel == "" {
		o.LogLevel = "warn"
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
		cfg, err := config.Load("")
		if err != nil {
			return err
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
	return superviseJob(ctx, cl, spec, o, dirs)
}

// superviseJob starts the job and stays with it: it prints its output,
// checkpoints it on the checkpoint signal or interval, and returns with the
// job's exit status.
func superviseJob(ctx context.Context, cl apiv1.CoordinatorClient, spec coordinator.JobSpec, o launch.Options, dirs *apiv1.RunRequest) error {
	job, err := cl.Run(ctx, &apiv1.RunRequest{Spec: coordinator.SpecToPB(spec), CheckpointDir: dirs.CheckpointDir, RunDir: dirs.RunDir})
	if err != nil {
		return client.RPCErr(err)
	}
	id := job.Spec.Id
	fmt.Fprintf(os.Stderr, "torpor: job %s started on %s\n", id, nodeList(job.Spec))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, o.CheckpointSignal)
	defer signal.Stop(sig)
	var tick <-chan time.Time
	if o.CheckpointInterval > 0 {
		t := time.NewTicker(o.CheckpointInterval)
		defer t.Stop()
		tick = t.C
	}
	tail := newTailer(o.RunDir, id, job.Spec.Nodes, os.Stdout)
	restarts := 0
	poll := time.NewTicker(200 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(os.Stderr, "torpor: interrupted; job %s is left to the coordinator (see `torpor ps`)\n", id)
			return exitError{130}
		case <-sig:
			checkpointNow(ctx, cl, id, "signal")
		case <-tick:
			checkpointNow(ctx, cl, id, "interval")
		case <-poll.C:
		}
		tail.poll()
		j, err := cl.GetJob(ctx, &apiv1.JobRef{Job: id})
		if err != nil {
			return client.RPCErr(err)
		}
		switch j.State {
		case string(coordinator.StateFinished):
			tail.poll()
			fmt.Fprintf(os.Stderr, "torpor: job %s finished\n", id)
			return nil
		case string(coordinator.StateFailed):
			tail.poll()
			if restarts < o.RestartOnFailure && j.LastCheckpoint != "" {
				restarts++
				fmt.Fprintf(os.Stderr, "torpor: job %s failed (%s); restart %d of %d from %s\n", id, j.Reason, restarts, o.RestartOnFailure, j.LastCheckpoint)
				if _, err := cl.Restart(ctx, &apiv1.RestartRequest{Ref: id, Fallback: true}); err != nil {
					fmt.Fprintf(os.Stderr, "torpor: restart failed: %v\n", client.RPCErr(err))
				}
				continue
			}
			fmt.Fprintf(os.Stderr, "torpor: job %s failed: %s\n", id, j.Reason)
			code := int(j.ExitCode)
			if code == 0 {
				code = 1
			}
			return exitError{code}
		case string(coordinator.StateSuspended):
			// Stay: a suspended job is resumed with `torpor resume`, and an
			// embedded coordinator must live for that.
		}
	}
}

func checkpointNow(ctx context.Context, cl apiv1.CoordinatorClient, id, why string) {
	start := time.Now()
	rep, err := cl.Checkpoint(ctx, &apiv1.CheckpointRequest{Job: id})
	if err != nil {
		fmt.Fprintf(os.Stderr, "torpor: checkpoint (%s) failed: %v\n", why, client.RPCErr(err))
		return
	}
	fmt.Fprintf(os.Stderr, "torpor: checkpoint %s (%s) committed in %s\n", rep.Handle, why, time.Since(start).Round(time.Millisecond))
}

func nodeList(s *apiv1.JobSpec) string {
	var parts []string
	for _, n := range s.Nodes {
		parts = append(parts, fmt.Sprintf("%s@%s(%s)", n.Name, n.Host, strings.Split(n.Ip, "/")[0]))
	}
	return strings.Join(parts, " ")
}

// tailer copies job-node output files to w as they grow. After a restart a
// file is cut back to its size at the checkpoint; the replayed output is
// printed again, as the job really produces it again.
type tailer struct {
	w     io.Writer
	files []string
	off   []int64
}

func newTailer(runDir, job string, nodes []*apiv1.NodeSpec, w io.Writer) *tailer {
	t := &tailer{w: w}
	for _, n := range nodes {
		t.files = append(t.files, filepath.Join(runDir, "jobs", job, n.Name+".out"))
		t.off = append(t.off, 0)
	}
	return t
}

func (t *tailer) poll() {
	for i, p := range t.files {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if st, err := f.Stat(); err == nil && st.Size() < t.off[i] {
			t.off[i] = st.Size()
		}
		n, _ := io.Copy(t.w, io.NewSectionReader(f, t.off[i], 1<<62))
		t.off[i] += n
		f.Close()
	}
}
