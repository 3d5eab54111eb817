package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
)

// Start creates every job-node's sandbox and starts the job. On any failure
// every job-node already started is destroyed and the job is failed.
func (c *Coordinator) Start(ctx context.Context, spec JobSpec) error {
	c.mu.Lock()
	err := c.assignAddresses(&spec)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := spec.Validate(); err != nil {
		return err
	}
	if err := spec.SetUsers(c.lookup); err != nil {
		return err
	}
	// Shims started a moment ago may not have registered yet: wait a little.
	for _, n := range spec.Nodes {
		if err := c.waitAgent(ctx, n.Host, shimGrace); err != nil {
			return fmt.Errorf("job-node %s: %w", n.Name, err)
		}
	}
	c.mu.Lock()
	if old, exists := c.jobs[spec.ID]; exists {
		// A job that ended may give its name to a new one; its checkpoints stay
		// in the catalog and the new job's continue their numbering.
		if old.State != StateFinished && old.State != StateFailed || c.busy[spec.ID] {
			c.mu.Unlock()
			return fmt.Errorf("%w: a job called %s exists already and is %s; choose another --name", agentapi.ErrInvalid, spec.ID, old.State)
		}
		// Its checkpoints go with the name: only their owner may take it.
		if old.Spec.Owner != spec.Owner {
			c.mu.Unlock()
			return fmt.Errorf("%w: the name %s belongs to another user's job; choose another --name", agentapi.ErrPermission, spec.ID)
		}
	}
	now := c.now()
	c.jobs[spec.ID] = &Job{Spec: spec, State: StateStarting, Created: now, Updated: now}
	c.busy[spec.ID] = true
	err = c.saveLocked()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	log := c.log.With("job", spec.ID)
	if err := c.fanout(ctx, PhaseStart, placed(spec), func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
		return a.Start(ctx, spec.ID, n)
	}); err != nil {
		log.Error("start failed, destroying job-nodes", "err", err)
		c.destroyAll(ctx, spec, log)
		c.end(spec.ID, StateFailed, func(j *Job) { j.Reason = err.Error(); j.ExitCode = 1 })
		return err
	}
	c.end(spec.ID, StateRunning, nil)
	log.Info("job started", "nodes", len(spec.Nodes))
	return nil
}

// CheckpointOptions choose what a checkpoint does to the job.
type CheckpointOptions struct {
	// Stop ends the job's processes once the checkpoint is committed
	// (suspend): the job becomes suspended and its hosts are free.
	Stop bool
	// Compress overrides the job's image compression (JobSpec.Compress)
	// for this checkpoint: "none", "lz4" or "zstd"; "" keeps the job's.
	Compress string
}

// CheckpointResult says what a committed checkpoint holds.
type CheckpointResult struct {
	Handle string
	Kind   string // checkpoint, or suspend (Stop)
	Bytes  int64  // size of every job-node's images
	Phases map[Phase]time.Duration
}

// Checkpoint runs prepare, freeze, drain, lock, dump and commit on every
// job-node, then resumes the job (or stops it, with Stop). It returns the
// handle of the committed checkpoint. Any failure before the commit rolls
// back: every job-node is unlocked and thawed, the partial checkpoint is
// deleted and the job keeps running.
func (c *Coordinator) Checkpoint(ctx context.Context, id string, opts CheckpointOptions) (string, error) {
	res, err := c.CheckpointDetails(ctx, id, opts)
	return res.Handle, err
}

// CheckpointDetails is Checkpoint, returning what the checkpoint holds.
// The result's Handle is set whenever the checkpoint was committed, even
// when the job could not resume afterwards (and the error says so).
func (c *Coordinator) CheckpointDetails(ctx context.Context, id string, opts CheckpointOptions) (CheckpointResult, error) {
	if _, err := catalog.ParseCodec(opts.Compress); err != nil {
		err = fmt.Errorf("%w: checkpoint %s: --compress: %w", agentapi.ErrInvalid, id, err)
		c.refuse(opCheckpoint, err)
		return CheckpointResult{}, err
	}
	if err := c.requireShims(id); err != nil {
		c.refuse(opCheckpoint, err)
		return CheckpointResult{}, err
	}
	if c.localCkpts {
		if err := c.requireHolders(id); err != nil {
			c.refuse(opCheckpoint, err)
			return CheckpointResult{}, err
		}
	}
	spec, _, err := c.begin(id, []State{StateRunning}, StateCheckpointing)
	if err != nil {
		c.refuse(opCheckpoint, err)
		return CheckpointResult{}, err
	}
	t := c.tracker(opCheckpoint, id)
	res, err := c.checkpoint(ctx, id, spec, opts, t)
	c.observe(opCheckpoint, t, err)
	if res.Handle != "" {
		res.Phases = t.d
	}
	if err != nil {
		c.event(Event{Job: id, Type: EventCheckpointFailed, Handle: res.Handle, Error: err.Error(), FailedPhase: string(t.lastPhase()), Phases: phaseNanos(t.d)})
	} else {
		c.event(Event{Job: id, Type: EventCheckpoint, Handle: res.Handle, Bytes: res.Bytes, Phases: phaseNanos(t.d)})
	}
	if res.Handle != "" && c.localCkpts {
		// Committed: its images are on one host each until copied.
		c.inBackground(ctx, func(ctx context.Context) { c.replicate(ctx, res.Handle) })
	}
	return res, err
}

func (c *Coordinator) checkpoint(ctx context.Context, id string, spec JobSpec, opts CheckpointOptions, t *timings) (CheckpointResult, error) {
	log := c.log.With("job", id)
	pend, err := c.store.Begin(id)
	if err != nil {
		c.end(id, StateRunning, func(j *Job) { j.Reason = err.Error() })
		return CheckpointResult{}, fmt.Errorf("begin checkpoint: %w", err)
	}
	handle := pend.Handle()
	log = log.With("ckpt", handle)
	// Validate checked both names.
	codec, _ := catalog.ParseCodec(spec.Compress)
	if opts.Compress != "" {
		codec, _ = catalog.ParseCodec(opts.Compress)
	}
	kind := "checkpoint"
	if opts.Stop {
		kind = "suspend"
	}
	var (
		mu      sync.Mutex
		results = map[string]agentapi.DumpResult{}
		total   int64
	)
	// The directories are made before the job is frozen: on this machine's
	// disk, with its metadata blocks cold, a mkdir took 0.6 ms (perf trace,
	// bench/README.md), about 150 ms at 256 job-nodes that the job spent
	// frozen while they were made after the lock. One after the other:
	// made by every job-node's call at once, they contend for their common
	// parent (a file system locks a directory to add an entry). One that
	// cannot be made fails the checkpoint before anything is frozen. A
	// host-local checkpoint's images go to the shims' own stores.
	nodeDirs, dirs := map[string]string{}, []string(nil)
	var shared string
	if !c.localCkpts {
		for _, n := range spec.Nodes {
			var d string
			if d, err = pend.NodeDir(n.Name); err != nil {
				break
			}
			nodeDirs[n.Name], dirs = d, append(dirs, d)
		}
		if err == nil {
			shared, err = pend.SharedDir()
		}
	}
	if err == nil {
		err = c.quiesce(ctx, id, spec.Nodes, handle, t)
	}
	if err == nil {
		stopWatch := c.watchBytes(opCheckpoint, id, PhaseDump, dirs)
		err = t.run(PhaseDump, func() error {
			err := c.fanout(ctx, PhaseDump, spec.Nodes, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
				dir := nodeDirs[n.Name]
				// Always leave running: a stopping checkpoint kills the
				// trees only after the commit, so no failure can lose the job.
				res, err := a.Dump(ctx, agentapi.NodeRef{Job: id, Node: n.Name}, agentapi.DumpRequest{Dir: dir, Shared: shared, LeaveRunning: true, Checkpoint: handle, Compress: codec,
					Store: c.localCkpts})
				if err != nil {
					return err
				}
				mu.Lock()
				results[n.Name] = res
				total += res.Bytes
				mu.Unlock()
				return nil
			})
			mu.Lock()
			t.setBytes(PhaseDump, total)
			mu.Unlock()
			return err
		})
		stopWatch()
	}
	if err == nil && c.faults.BeforeCommit != nil {
		err = c.faults.BeforeCommit(id)
	}
	if err == nil {
		err = t.run(PhaseCommit, func() error {
			return c.commit(ctx, pend, Manifest{
				Handle: handle, Spec: spec, Kind: kind, LeaveRunning: !opts.Stop,
				Nodes: results, Phases: t.d, Created: c.now(), HostLocal: c.localCkpts,
			})
		})
	}
	if err != nil {
		log.Warn("checkpoint failed, rolling back", "err", err, "timings", t.String())
		rbErr := c.rollback(ctx, spec, log)
		if abErr := pend.Abort(); abErr != nil {
			log.Error("delete partial checkpoint", "err", abErr)
		}
		if c.localCkpts {
			c.dropStored(context.WithoutCancel(ctx), []string{handle}, log)
		}
		if rbErr != nil && unreachableOnly(rbErr) {
			return CheckpointResult{}, c.awaitShims(id, StateCheckpointing, "checkpoint "+handle, err, rbErr)
		}
		if rbErr != nil {
			c.end(id, StateFailed, func(j *Job) { j.Reason = rbErr.Error() })
			return CheckpointResult{}, fmt.Errorf("checkpoint %s aborted: %w; rollback failed too, job is failed: %v", handle, err, rbErr)
		}
		c.end(id, StateRunning, func(j *Job) { j.Reason = "checkpoint " + handle + " aborted: " + err.Error() })
		return CheckpointResult{}, fmt.Errorf("checkpoint %s aborted, job %s keeps running: %w", handle, id, err)
	}
	log.Info("checkpoint committed", "timings", t.String())
	res := CheckpointResult{Handle: handle, Kind: kind, Bytes: total}
	if m := c.metricsOf(); m != nil {
		m.Written(opCheckpoint, total)
		for _, r := range results {
			m.CRIUDump(opCheckpoint, r.CRIUTime)
		}
	}
	// Old checkpoints are pruned once the job runs again (or is stopped):
	// deleting them is no reason to keep it frozen.
	if opts.Stop {
		c.metricsOf().Frozen(opCheckpoint, t.frozen(PhaseCommit))
		c.destroyAll(ctx, spec, log)
		c.pruneOnceSynced(ctx, id, handle, spec.Nodes, log)
		c.end(id, StateSuspended, func(j *Job) { j.LastCheckpoint = handle; j.Reason = "" })
		return res, nil
	}
	if err := c.resume(ctx, id, spec.Nodes, t); err != nil {
		// The checkpoint is good, but the job could not be resumed
		// everywhere: never leave it half frozen. Stop it; it can be
		// restarted from the checkpoint just committed.
		c.stopJob(ctx, spec, log, "resume after checkpoint", err, StateSuspended, func(j *Job) {
			j.LastCheckpoint = handle
			j.Reason = "resume failed after checkpoint: " + err.Error()
		})
		c.pruneOnceSynced(ctx, id, handle, spec.Nodes, log)
		return res, fmt.Errorf("checkpoint %s committed, but job %s could not resume and was suspended (restart it with `torpor restart %s`): %w", handle, id, handle, err)
	}
	c.metricsOf().Frozen(opCheckpoint, t.frozen(PhaseThaw))
	c.pruneOnceSynced(ctx, id, handle, spec.Nodes, log)
	c.end(id, StateRunning, func(j *Job) { j.LastCheckpoint = handle; j.Reason = "" })
	return res, nil
}

// quiesce runs prepare, freeze, drain and lock on nodes, in that order, each
// a barrier across all of them.
func (c *Coordinator) quiesce(ctx context.Context, job string, nodes []agentapi.NodeSpec, handle string, t *timings) error {
	steps := []struct {
		phase Phase
		fn    func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec, ref agentapi.NodeRef) error
	}{
		{PhasePrepare, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec, ref agentapi.NodeRef) error {
			return a.Prepare(ctx, ref, handle)
		}},
		{PhaseFreeze, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec, ref agentapi.NodeRef) error {
			return a.Freeze(ctx, ref)
		}},
		{PhaseDrain, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec, ref agentapi.NodeRef) error {
			_, err := a.Drain(ctx, ref)
			return err
		}},
		{PhaseLock, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec, ref agentapi.NodeRef) error {
			return a.Lock(ctx, ref)
		}},
	}
	for _, s := range steps {
		err := t.run(s.phase, func() error {
			return c.fanout(ctx, s.phase, nodes, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
				return s.fn(ctx, a, n, agentapi.NodeRef{Job: job, Node: n.Name})
			})
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// resume unlocks every job-node, then thaws every job-node: packets flow
// before any task runs, so every peer is reachable before anyone sends.
func (c *Coordinator) resume(ctx context.Context, job string, nodes []agentapi.NodeSpec, t *timings) error {
	return c.unlockThawJob(ctx, job, nodes, t)
}

// rollback undoes a failed operation: unlock and thaw every job-node. It runs
// even when the caller's context is cancelled. It fails only when a job-node
// cannot be unlocked or thawed, which leaves the job unusable.
func (c *Coordinator) rollback(ctx context.Context, spec JobSpec, log *slog.Logger) error {
	ctx = context.WithoutCancel(ctx)
	var t timings
	err := c.unlockThawJob(ctx, spec.ID, spec.Nodes, &t)
	if err != nil {
		log.Error("rollback failed", "err", err)
	}
	return err
}

func (c *Coordinator) unlockThawJob(ctx context.Context, job string, nodes []agentapi.NodeSpec, t *timings) error {
	err := t.run(PhaseUnlock, func() error {
		return c.fanout(ctx, PhaseUnlock, nodes, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
			return a.Unlock(ctx, agentapi.NodeRef{Job: job, Node: n.Name})
		})
	})
	// Thaw even if an unlock failed: a frozen job-node is worse than a locked one.
	thawErr := t.run(PhaseThaw, func() error {
		return c.fanout(ctx, PhaseThaw, nodes, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
			return a.Thaw(ctx, agentapi.NodeRef{Job: job, Node: n.Name})
		})
	})
	return errors.Join(err, thawErr)
}

// awaitShims ends an operation whose rollback could not reach some shims.
// Their job-nodes may still be frozen and locked, so the job stays in its
// transient state st: settle finishes the rollback once those shims answer
// again (a restarted shim adopts its job-nodes), or fails the job after
// settleTimeout. The job-nodes of the shims that answered run again at once.
func (c *Coordinator) awaitShims(id string, st State, what string, err, rbErr error) error {
	why := fmt.Sprintf("%s aborted: %v; the job-nodes whose shims answered run again; waiting up to %s for the others to answer, to thaw theirs (else the job fails): %v", what, err, settleTimeout, rbErr)
	c.end(id, st, func(j *Job) { j.Reason = why })
	return errors.New(why)
}

// unreachableOnly says whether every job-node that failed in err (a
// *PhaseError, or several joined) failed because its shim did not answer:
// it is down, cut off, or hung past the phase's deadline.
func unreachableOnly(err error) bool {
	if pe, ok := err.(*PhaseError); ok {
		for _, n := range pe.Nodes {
			if !errors.Is(n.Err, agentapi.ErrUnreachable) && !errors.Is(n.Err, context.DeadlineExceeded) {
				return false
			}
		}
		return len(pe.Nodes) > 0
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		some := false
		for _, e := range j.Unwrap() {
			if e == nil {
				continue
			}
			if !unreachableOnly(e) {
				return false
			}
			some = true
		}
		return some
	}
	return false
}

// destroyAll kills every job-node of a job, best effort, logging failures.
// stopJob ends a job that could not resume after an operation that already
// changed it (a committed checkpoint, a moved job-node): every job-node is
// destroyed, and the job ends in state to, set recording why.
func (c *Coordinator) stopJob(ctx context.Context, spec JobSpec, log *slog.Logger, what string, err error, to State, set func(*Job)) {
	log.Error(what+" failed, stopping the job", "err", err)
	c.destroyAll(ctx, spec, log)
	c.end(spec.ID, to, set)
}

func (c *Coordinator) destroyAll(ctx context.Context, spec JobSpec, log *slog.Logger) {
	c.destroyNodes(ctx, spec.ID, spec.Nodes, log)
}

func (c *Coordinator) destroyNodes(ctx context.Context, job string, nodes []agentapi.NodeSpec, log *slog.Logger) {
	ctx = context.WithoutCancel(ctx)
	if err := c.fanout(ctx, PhaseDestroy, nodes, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
		return a.Destroy(ctx, agentapi.NodeRef{Job: job, Node: n.Name})
	}); err != nil {
		log.Error("destroy job-nodes", "err", err)
	}
}

func (c *Coordinator) commit(ctx context.Context, pend Pending, m Manifest) error {
	ctx, cancel := context.WithTimeout(ctx, c.deadlines.of(PhaseCommit))
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- pend.Commit(m) }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		return nil
	case <-ctx.Done():
		// The commit may still land after we give up; Abort removes it.
		return fmt.Errorf("commit: %w", ctx.Err())
	}
}

// pruneOnceSynced prunes job's checkpoints older than the newest keep up
// to handle (just committed), once every job-node's images of handle are on
// disk (Agent.Sync on each job-node's shim). Until then a host's crash
// could take handle's images with its page cache, and an older checkpoint
// would be all the job had. It runs in the background: the job runs on and
// the operation returns meanwhile. When a shim cannot say (down, restarted
// since the dump, a disk error) the older checkpoints stay, with a
// warning; the next checkpoint's prune removes them.
func (c *Coordinator) pruneOnceSynced(ctx context.Context, job, handle string, nodes []agentapi.NodeSpec, log *slog.Logger) {
	if c.keep <= 0 {
		return
	}
	c.inBackground(ctx, func(ctx context.Context) {
		start := time.Now()
		err := c.fanout(ctx, PhaseSync, nodes, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
			return a.Sync(ctx, agentapi.NodeRef{Job: job, Node: n.Name}, handle)
		})
		if err != nil {
			log.Warn("older checkpoints kept: the new checkpoint's images are not known to be on disk", "err", err)
			return
		}
		log.Info("checkpoint images on disk", "took", time.Since(start).Round(time.Millisecond))
		c.prune(job, handle, log)
	})
}

// prune deletes job's checkpoints older than the newest keep up to upTo.
func (c *Coordinator) prune(job, upTo string, log *slog.Logger) {
	gone, err := c.store.Prune(job, c.keep, upTo)
	if err != nil {
		log.Warn("prune old checkpoints", "err", err)
		return
	}
	for _, h := range gone {
		log.Info("pruned old checkpoint", "ckpt", h)
	}
	if len(gone) == 0 {
		return
	}
	// Gone from the catalog already; their files are removed in the
	// background (256 job-nodes' directories took 80 ms here, a large
	// checkpoint's on a parallel file system far longer), and so are their
	// copies in the shims' stores (host-local checkpoints): a host that is
	// down answers late or never.
	c.inBackground(context.Background(), func(context.Context) {
		if err := c.store.Sweep(job); err != nil {
			log.Warn("remove pruned checkpoints' files", "err", err)
		}
	})
	c.inBackground(context.Background(), func(ctx context.Context) { c.dropStored(ctx, gone, log) })
}

// placeVars are the environment variables that tell a job-node where it is
// in its job: TORPOR_JOB, TORPOR_NODE, TORPOR_NODE_INDEX, TORPOR_NODES and
// TORPOR_NODE_IPS (every job-node's address, space-separated, in job-node
// order).
var placeVars = []string{"TORPOR_JOB=", "TORPOR_NODE=", "TORPOR_NODE_INDEX=", "TORPOR_NODES=", "TORPOR_NODE_IPS="}

// placed returns the job-nodes of spec as their shims get them (Start,
// RestoreFiles, Restore): each with the placeVars appended to its
// environment. The job's spec, as the registry and the checkpoints' job
// manifests keep it, does not hold them: TORPOR_NODE_IPS names every
// job-node, so every job-node holding it made the spec grow with the square
// of the number of job-nodes (1 MB at 256 job-nodes, encoded and written at
// every state change and checkpoint). Entries of these names already in a
// job-node's environment (a spec kept by an older torpor, which stored
// them) are replaced, so a job-node never sees one twice. spec is not
// changed.
func placed(spec JobSpec) []agentapi.NodeSpec {
	ips := make([]string, len(spec.Nodes))
	for i, n := range spec.Nodes {
		ip, _, _ := strings.Cut(n.IP, "/")
		ips[i] = ip
	}
	// One string that every job-node's environment shares.
	all := "TORPOR_NODE_IPS=" + strings.Join(ips, " ")
	count := "TORPOR_NODES=" + strconv.Itoa(len(spec.Nodes))
	out := make([]agentapi.NodeSpec, len(spec.Nodes))
	for i, n := range spec.Nodes {
		env := make([]string, 0, len(n.Env)+len(placeVars))
		for _, e := range n.Env {
			if !isPlaceVar(e) {
				env = append(env, e)
			}
		}
		n.Env = append(env,
			"TORPOR_JOB="+spec.ID,
			"TORPOR_NODE="+n.Name,
			"TORPOR_NODE_INDEX="+strconv.Itoa(i),
			count,
			all,
		)
		out[i] = n
	}
	return out
}

func isPlaceVar(e string) bool {
	for _, v := range placeVars {
		if strings.HasPrefix(e, v) {
			return true
		}
	}
	return false
}

// placedNode is placed's job-node called name.
func placedNode(spec JobSpec, name string) (agentapi.NodeSpec, error) {
	for _, n := range placed(spec) {
		if n.Name == name {
			return n, nil
		}
	}
	return agentapi.NodeSpec{}, fmt.Errorf("%w: job %s has no job-node %q", agentapi.ErrNotFound, spec.ID, name)
}

// requireShims refuses, before anything is touched, an operation on a job
// whose hosts are not all served by a registered shim (e.g. right after a
// coordinator restart, before the shims registered again).
func (c *Coordinator) requireShims(id string) error {
	j, err := c.Job(id)
	if err != nil {
		return err
	}
	for _, n := range j.Spec.Nodes {
		if _, err := c.agent(n.Host); err != nil {
			return fmt.Errorf("job %s: job-node %s: %w; nothing was done — wait for the shim to register and try again", id, n.Name, err)
		}
	}
	return nil
}

// shimGrace is how long Start waits for the shim of a host to register.
const shimGrace = 10 * time.Second

// waitAgent waits until host has a registered shim, at most grace.
func (c *Coordinator) waitAgent(ctx context.Context, host string, grace time.Duration) error {
	deadline := time.Now().Add(grace)
	for {
		_, err := c.agent(host)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Cancel ends a job: every job-node is destroyed and the job is failed with
// exit status 130. Its checkpoints stay; it can be restarted from them.
func (c *Coordinator) Cancel(ctx context.Context, id string) error {
	// The job reads as cancelled from the start: a supervisor that looks
	// while its job-nodes are destroyed knows why it failed.
	cancelled := func(j *Job) { j.ExitCode = 130; j.Reason = "cancelled" }
	spec, _, err := c.beginSet(id, []State{StateRunning, StateSuspended}, StateFailed, cancelled)
	if err != nil {
		return err
	}
	log := c.log.With("job", id)
	log.Info("job cancelled")
	c.destroyAll(ctx, spec, log)
	c.end(id, StateFailed, cancelled)
	return nil
}

// NodeOutput is what Output read of one job-node's output file.
type NodeOutput struct {
	Node string
	Data []byte
	Size int64 // the file's size now
}

// outputTimeout bounds one shim's answer to Output.
const outputTimeout = 5 * time.Second

// Output reads job id's job-nodes' output files from the offsets given
// (job-node name -> offset), each from the shim of the host the job-node
// runs on now, in parallel: for a client that cannot read the shims' run
// directory. A job-node whose shim does not answer is left out; one that
// is not a job-node of the job is an error.
func (c *Coordinator) Output(ctx context.Context, id string, offsets map[string]int64) ([]NodeOutput, error) {
	j, err := c.Job(id)
	if err != nil {
		return nil, err
	}
	hosts := map[string]string{}
	for _, n := range j.Spec.Nodes {
		hosts[n.Name] = n.Host
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		out []NodeOutput
	)
	for node, off := range offsets {
		host, ok := hosts[node]
		if !ok {
			return nil, fmt.Errorf("%w: job %s has no job-node %q", agentapi.ErrNotFound, id, node)
		}
		a, err := c.agent(host)
		if err != nil {
			continue
		}
		r, ok := a.(agentapi.OutputReader)
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, outputTimeout)
			defer cancel()
			data, size, err := r.ReadOutput(ctx, agentapi.NodeRef{Job: id, Node: node}, off, 0)
			if err != nil {
				c.log.Debug("read job-node output", "job", id, "node", node, "host", host, "err", err)
				return
			}
			mu.Lock()
			out = append(out, NodeOutput{Node: node, Data: data, Size: size})
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out, nil
}
