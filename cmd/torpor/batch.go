package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/client"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/coordinator/launch"
)

const batchUsage = `usage: torpor batch [torpor run flags] [--] PROGRAM [ARGS]

In a Slurm batch script (configs/slurm/torpor-job.sbatch): runs the job on the
nodes of this allocation, and brings it back when Slurm runs the script again.

  first run (SLURM_RESTART_COUNT unset or 0)
      starts the job as torpor run does, named slurm-$SLURM_JOB_ID unless
      --name is given, on the allocation's nodes unless --host/--hostfile is;
      a job of that name that is suspended (or failed, with a checkpoint) is
      restarted instead, as after a requeue.
  after a requeue (SLURM_RESTART_COUNT > 0)
      restarts it from its newest checkpoint that verifies, its job-nodes
      mapped onto this allocation's nodes, whatever their names; a job with
      no checkpoint starts again from the beginning.
  the --signal signal (default USR1; #SBATCH --signal=B:USR1@SECONDS)
      checkpoints the job, stops it and requeues this batch job
      (scontrol requeue); the next run restarts it.
  SIGTERM (preemption with PreemptMode=REQUEUE, scancel)
      checkpoints the job and stops it; Slurm requeues a preempted job.
  --checkpoint-interval DURATION
      checkpoints it periodically as well.

It needs torpor's daemons: the coordinator (with --slurm, it checks the nodes
against Slurm) and a shim on every node (--user-socket).
`

// runBatch is `torpor batch`.
func runBatch(ctx context.Context, args []string) error {
	// The signals are ours from the start (Go's default for SIGUSR1 is to
	// exit): one that comes while the job is being started or restarted is
	// acted on once that is done.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGHUP, syscall.SIGTERM)
	defer signal.Stop(sigs)
	o, err := launch.Parse(args)
	if errors.Is(err, launch.ErrHelp) {
		fmt.Print(batchUsage)
		return nil
	}
	fail := func(err error) error {
		fmt.Fprintln(os.Stderr, "torpor batch:", err)
		return exitError{2}
	}
	if err != nil {
		return fail(err)
	}
	sj := os.Getenv("SLURM_JOB_ID")
	if sj == "" {
		return fail(errors.New("SLURM_JOB_ID is not set: torpor batch runs inside a Slurm batch script (sbatch); elsewhere use torpor run"))
	}
	if o.JobName == "" {
		o.JobName = "slurm-" + sj
	}
	if len(o.Hosts) == 0 && o.Hostfile == "" {
		if o.Hosts, err = allocationHosts(ctx); err != nil {
			return fail(err)
		}
	}
	spec, err := jobSpec("batch", o)
	if err != nil {
		return err
	}
	sock := client.SocketPath(o.Socket)
	if !client.Listens(sock) {
		return fmt.Errorf("no torpor coordinator or shim answers at %s: under Slurm torpor's daemons run on every node (README \"Under Slurm\"); ask your administrator", sock)
	}
	cl, done, err := client.Dial(sock)
	if err != nil {
		return err
	}
	defer done()

	bg := context.WithoutCancel(ctx)

	id := spec.ID
	restarts, _ := strconv.Atoi(os.Getenv("SLURM_RESTART_COUNT"))
	var j *apiv1.Job
	if restarts > 0 || continues(bg, cl, id) {
		j, err = restartInAllocation(bg, cl, id, o.Hosts)
		if err != nil {
			return err
		}
	}
	if j == nil {
		req := &apiv1.RunRequest{CheckpointDir: o.CheckpointDir, RunDir: o.RunDir, Spec: coordinator.SpecToPB(spec)}
		if j, err = cl.Run(bg, req); err != nil {
			return client.RPCErr(err)
		}
		fmt.Fprintf(os.Stderr, "torpor: job %s started in Slurm job %s on %s\n", id, sj, hostsOf(j.Spec))
	}

	fctx, cancel := context.WithCancel(bg)
	defer cancel()
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	go func() {
		code, err := client.Follow(fctx, cl, j.Spec, os.Stderr, client.SuperviseOptions{
			RunDir: runDirOr(o.RunDir), Output: os.Stdout, CheckpointInterval: o.CheckpointInterval,
		})
		res <- result{code, err}
	}()
	stopSig := o.CheckpointSignal
	var sig os.Signal
	for sig == nil {
		select {
		case r := <-res:
			if r.err != nil {
				return r.err
			}
			if r.code != 0 {
				return exitError{r.code}
			}
			return nil
		case s := <-sigs:
			if s == stopSig || s == syscall.SIGTERM {
				sig = s
			}
		}
	}
	cancel()
	<-res
	fmt.Fprintf(os.Stderr, "torpor: %v: checkpointing job %s and stopping it\n", sig, id)
	handle, err := stopJob(bg, cl, id)
	if err != nil {
		// The allocation ends soon: its nodes must be left free. The job's
		// earlier checkpoints are kept, and the next run restarts from the
		// newest that verifies (or from the beginning, with none).
		fmt.Fprintf(os.Stderr, "torpor: %v; ending job %s, its earlier checkpoints are kept\n", err, id)
		if _, cerr := cl.Cancel(bg, &apiv1.JobRef{Job: id}); cerr != nil {
			return fmt.Errorf("%w; and cancel: %w", err, client.RPCErr(cerr))
		}
	} else if handle == "" {
		return nil // it ended by itself meanwhile
	}
	if sig != stopSig {
		return err
	}
	// The time limit is near: ask Slurm to run this script again.
	out, rerr := exec.CommandContext(bg, "scontrol", "requeue", sj).CombinedOutput()
	if rerr != nil {
		return fmt.Errorf("scontrol requeue %s: %v: %s (job %s keeps its checkpoints: run `torpor resume %s` or submit this script again with --name %s)", sj, rerr, strings.TrimSpace(string(out)), id, id, id)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "torpor: Slurm job %s requeued; its next run restarts job %s from its newest checkpoint, if it has one\n", sj, id)
		return err
	}
	fmt.Fprintf(os.Stderr, "torpor: Slurm job %s requeued; its next run restarts job %s from %s\n", sj, id, handle)
	return nil
}

// stopJob checkpoints a job and stops it, waiting out an operation in
// progress (a periodic checkpoint). It returns the checkpoint, or "" if the
// job had ended by itself.
func stopJob(ctx context.Context, cl apiv1.CoordinatorClient, id string) (string, error) {
	start := time.Now()
	for {
		rep, err := cl.Checkpoint(ctx, &apiv1.CheckpointRequest{Job: id, Stop: true})
		if err == nil {
			fmt.Fprintf(os.Stderr, "torpor: checkpoint %s committed in %s; job %s is stopped (suspended), its nodes are free\n", rep.Handle, time.Since(start).Round(time.Millisecond), id)
			return rep.Handle, nil
		}
		if status.Code(err) == codes.Aborted {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		j, gerr := cl.GetJob(ctx, &apiv1.JobRef{Job: id})
		if gerr == nil {
			switch j.State {
			case string(coordinator.StateFinished), string(coordinator.StateFailed):
				fmt.Fprintf(os.Stderr, "torpor: job %s is %s; nothing to checkpoint\n", id, j.State)
				return "", nil
			case string(coordinator.StateSuspended):
				// The coordinator stopped it meanwhile: its watch of the
				// allocation saw the Slurm job end (the signal and that
				// watch race). Said as for our own checkpoint.
				fmt.Fprintf(os.Stderr, "torpor: checkpoint %s committed in %s; job %s is stopped (suspended by the coordinator, which saw the Slurm job end), its nodes are free\n",
					j.LastCheckpoint, time.Since(start).Round(time.Millisecond), id)
				return j.LastCheckpoint, nil
			}
		}
		return "", fmt.Errorf("checkpoint and stop job %s: %w", id, client.RPCErr(err))
	}
}

// continues says whether a first run (no requeue) names a job that waits to
// be brought back: suspended, or failed with a checkpoint (a script
// submitted again with --name after its first run ended without torpor
// batch requeueing it). A job that finished starts again.
func continues(ctx context.Context, cl apiv1.CoordinatorClient, id string) bool {
	j, err := cl.GetJob(ctx, &apiv1.JobRef{Job: id})
	if err != nil {
		return false
	}
	switch j.State {
	case string(coordinator.StateSuspended), string(coordinator.StateRunning):
		return true
	case string(coordinator.StateFailed):
		return j.LastCheckpoint != ""
	}
	return false
}

// restartInAllocation brings job id back onto the hosts of this allocation.
// It returns nil (and no error) when there is nothing to restart from: the
// job is unknown, or was never checkpointed.
func restartInAllocation(ctx context.Context, cl apiv1.CoordinatorClient, id string, hosts []launch.HostSlots) (*apiv1.Job, error) {
	j, err := cl.GetJob(ctx, &apiv1.JobRef{Job: id})
	if status.Code(err) == codes.NotFound {
		fmt.Fprintf(os.Stderr, "torpor: Slurm ran this script again, but job %s is unknown: starting it\n", id)
		return nil, nil
	}
	if err != nil {
		return nil, client.RPCErr(err)
	}
	switch j.State {
	case string(coordinator.StateFinished):
		fmt.Fprintf(os.Stderr, "torpor: job %s already finished\n", id)
		return j, nil
	case string(coordinator.StateRunning):
		// The last run's script died without stopping it (SIGKILL): stop
		// it here, then bring it onto this allocation.
		fmt.Fprintf(os.Stderr, "torpor: job %s still runs from the last allocation: checkpointing and stopping it\n", id)
		if _, err := stopJob(ctx, cl, id); err != nil {
			return nil, err
		}
	}
	if j.LastCheckpoint == "" {
		if j, err = cl.GetJob(ctx, &apiv1.JobRef{Job: id}); err != nil {
			return nil, client.RPCErr(err)
		}
		if j.LastCheckpoint == "" {
			fmt.Fprintf(os.Stderr, "torpor: job %s has no checkpoint: starting it again from the beginning\n", id)
			return nil, nil
		}
	}
	var names []string
	for _, h := range hosts {
		names = append(names, h.Host)
	}
	placement, err := mapNodes(j.Spec, names)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	rep, err := cl.Restart(ctx, &apiv1.RestartRequest{Ref: id, Hosts: placement, Fallback: true})
	if err != nil {
		return nil, fmt.Errorf("restart job %s: %w", id, client.RPCErr(err))
	}
	printRestarted(rep)
	if j, err = cl.GetJob(ctx, &apiv1.JobRef{Job: id}); err != nil {
		return nil, client.RPCErr(err)
	}
	fmt.Fprintf(os.Stderr, "torpor: job %s restarted from %s in %s on %s\n", id, rep.Checkpoint, time.Since(start).Round(time.Millisecond), hostsOf(j.Spec))
	return j, nil
}

// mapNodes places a job's job-nodes on the hosts of a new allocation: the
// job-nodes of a host the allocation still holds stay there, those of
// every other host go together to a host of the allocation the job does not
// use yet, in order. Job-nodes that shared a host share one again.
func mapNodes(spec *apiv1.JobSpec, hosts []string) (map[string]string, error) {
	var old []string
	for _, n := range spec.Nodes {
		if !slices.Contains(old, n.Host) {
			old = append(old, n.Host)
		}
	}
	if len(old) > len(hosts) {
		return nil, fmt.Errorf("job %s ran on %d hosts and this allocation has %d nodes: submit it with --nodes=%d", spec.Id, len(old), len(hosts), len(old))
	}
	to := map[string]string{}
	var free []string
	for _, h := range hosts {
		if slices.Contains(old, h) {
			to[h] = h
		} else {
			free = append(free, h)
		}
	}
	for _, h := range old {
		if _, ok := to[h]; !ok {
			to[h], free = free[0], free[1:]
		}
	}
	out := map[string]string{}
	for _, n := range spec.Nodes {
		out[n.Name] = to[n.Host]
	}
	return out, nil
}

// allocationHosts are the nodes of this Slurm allocation with their CPUs
// as slots ($SLURM_JOB_NODELIST, expanded by scontrol, and
// $SLURM_JOB_CPUS_PER_NODE).
func allocationHosts(ctx context.Context) ([]launch.HostSlots, error) {
	list := os.Getenv("SLURM_JOB_NODELIST")
	if list == "" {
		return nil, errors.New("SLURM_JOB_NODELIST is not set: give --host or --hostfile")
	}
	out, err := exec.CommandContext(ctx, "scontrol", "show", "hostnames", list).Output()
	if err != nil {
		return nil, fmt.Errorf("scontrol show hostnames %s: %w", list, err)
	}
	names := strings.Fields(string(out))
	slots, err := cpusPerNode(os.Getenv("SLURM_JOB_CPUS_PER_NODE"), len(names))
	if err != nil {
		return nil, err
	}
	hs := make([]launch.HostSlots, len(names))
	for i, n := range names {
		hs[i] = launch.HostSlots{Host: n, Slots: slots[i]}
	}
	return hs, nil
}

// cpusPerNode expands Slurm's compressed CPU counts ("2(x3),1") to one
// count per node; "" gives every node one slot.
func cpusPerNode(s string, nodes int) ([]int, error) {
	if s == "" {
		out := make([]int, nodes)
		for i := range out {
			out[i] = 1
		}
		return out, nil
	}
	var out []int
	for _, item := range strings.Split(s, ",") {
		n, rep := item, "1"
		if i := strings.Index(item, "(x"); i > 0 && strings.HasSuffix(item, ")") {
			n, rep = item[:i], item[i+2:len(item)-1]
		}
		c, err1 := strconv.Atoi(n)
		r, err2 := strconv.Atoi(rep)
		if err1 != nil || err2 != nil || c < 1 || r < 1 || r > 100000 {
			return nil, fmt.Errorf("SLURM_JOB_CPUS_PER_NODE %q: cannot read %q", s, item)
		}
		for range r {
			out = append(out, c)
		}
	}
	if len(out) != nodes {
		return nil, fmt.Errorf("SLURM_JOB_CPUS_PER_NODE %q counts %d nodes, SLURM_JOB_NODELIST %d", s, len(out), nodes)
	}
	return out, nil
}

// hostsOf is "n0@h1 n1@h2" for messages.
func hostsOf(s *apiv1.JobSpec) string {
	var parts []string
	for _, n := range s.Nodes {
		parts = append(parts, n.Name+"@"+n.Host)
	}
	return strings.Join(parts, " ")
}

// runDirOr is the run directory given, else the default.
func runDirOr(given string) string {
	if given != "" {
		return given
	}
	return (&session{}).runDir("")
}
