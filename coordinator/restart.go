package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/torpor-hpc/torpor/agentapi"
)

// RestartOptions choose where a job comes back.
type RestartOptions struct {
	// Hosts maps job-node names to the hosts they are restored on. Job-nodes
	// not listed come back on the host they were checkpointed on.
	Hosts map[string]string
	// Fallback restarts from the newest checkpoint that verifies when the
	// named one does not (only when a job id, not a handle, was given).
	Fallback bool
	// Allowed, if set, is asked about the hosts the job would come back on
	// before anything is restored; its error refuses the restart.
	Allowed func(hosts []string) error
}

// RestartResult says what a restart did.
type RestartResult struct {
	Job        string
	Checkpoint string
	// Skipped lists newer checkpoints passed over because they failed verification.
	Skipped []string
	// Moved lists files below --keep directories that did not exist at the
	// checkpoint, moved aside (NAME.torpor-after-<seq>).
	Moved []string
	// Bytes is the size of the checkpoint's images: what was verified and
	// restored.
	Bytes int64
	// SetAside lists the copies of a host-local checkpoint that failed
	// verification ("NODE on HOST"): their shims set them aside, and the
	// restart went on from other hosts' copies.
	SetAside []string
}

// Restart brings a job back from a checkpoint: ref is a checkpoint handle
// ("<job>/<seq>") or a job id (its newest checkpoint). The checkpoint is
// verified first. Every job-node is restored in parallel with its network
// locked; only when all are restored is every job-node unlocked, then
// thawed — no job-node can talk to a peer that is not back yet. On any
// failure every restored job-node is destroyed and the job stays restartable.
func (c *Coordinator) Restart(ctx context.Context, ref string, opts RestartOptions) (RestartResult, error) {
	job, _, _ := strings.Cut(ref, "/")
	t := c.tracker(opRestart, job)
	ran := false
	res, err := c.restart(ctx, ref, opts, t, &ran)
	if res.Job != "" {
		job = res.Job
	}
	switch {
	case !ran && (errors.Is(err, agentapi.ErrNotFound) || errors.Is(err, agentapi.ErrState) || errors.Is(err, agentapi.ErrPermission) || errors.Is(err, agentapi.ErrInvalid)):
		c.refuse(opRestart, err)
	default:
		// A verification that fails counts as a failed restart (phase verify).
		c.observe(opRestart, t, err)
	}
	if err != nil {
		c.event(Event{Job: job, Type: EventRestartFailed, Handle: res.Checkpoint, Error: err.Error(), FailedPhase: string(t.lastPhase()), Phases: phaseNanos(t.d)})
		return res, err
	}
	c.event(Event{Job: job, Type: EventRestart, Handle: res.Checkpoint, Bytes: res.Bytes, Phases: phaseNanos(t.d)})
	return res, nil
}

func (c *Coordinator) restart(ctx context.Context, ref string, opts RestartOptions, t *timings, ran *bool) (RestartResult, error) {
	var (
		res RestartResult
		man Manifest
	)
	err := t.run(PhaseVerify, func() error {
		var err error
		res, man, err = c.pickCheckpoint(ctx, ref, opts.Fallback)
		if err == nil {
			for _, n := range man.Nodes {
				res.Bytes += n.Bytes
			}
			if !man.HostLocal {
				// A host-local checkpoint's verify phase reads its job
				// manifest only: the shims verify the images.
				t.setBytes(PhaseVerify, res.Bytes)
			}
		}
		return err
	})
	if err != nil {
		if !errors.Is(err, agentapi.ErrNotFound) {
			*ran = true
		}
		return res, err
	}
	spec := man.Spec
	spec.Nodes = append([]agentapi.NodeSpec(nil), man.Spec.Nodes...)
	// The checkpoint runs as the owner it was taken for, with the groups the
	// database gives that owner now.
	if err := spec.SetUsers(c.lookup); err != nil {
		return res, err
	}
	if j, err := c.Job(spec.ID); err == nil && j.Spec.Owner != spec.Owner {
		return res, fmt.Errorf("%w: checkpoint %s belongs to uid %d, job %s to uid %d", agentapi.ErrPermission, res.Checkpoint, spec.Owner, spec.ID, j.Spec.Owner)
	}
	spec.Nodes, err = placeRestart(spec, opts.Hosts, func(host string) error {
		if why, lost := c.lost(host); lost {
			return fmt.Errorf("%w: %s; place it elsewhere (--host NODE=HOST)", agentapi.ErrUnreachable, why)
		}
		_, err := c.agent(host)
		return err
	})
	if err != nil {
		return res, err
	}
	if opts.Allowed != nil {
		if err := opts.Allowed(specHosts(spec.Nodes)); err != nil {
			return res, err
		}
	}
	if !opts.Fallback && !man.HostLocal && !c.shimsVerify(spec.Nodes) {
		// A shim that does not verify images is given only verified ones.
		if err := c.store.Verify(ctx, res.Checkpoint); err != nil {
			return res, fmt.Errorf("checkpoint %s fails verification, refusing to restart from it: %w", res.Checkpoint, err)
		}
	}

	// A job the coordinator lost track of (state directory wiped) is adopted from its manifest.
	c.mu.Lock()
	if _, ok := c.jobs[spec.ID]; !ok {
		now := c.now()
		c.jobs[spec.ID] = &Job{Spec: spec, State: StateSuspended, Created: now, Updated: now, LastCheckpoint: res.Checkpoint}
	}
	c.mu.Unlock()

	_, prev, err := c.begin(spec.ID, []State{StateSuspended, StateFailed}, StateRestoring)
	if err != nil {
		return res, fmt.Errorf("%w (only a suspended or failed job can be restarted; checkpoint it with --stop or `torpor suspend` first)", err)
	}
	*ran = true
	log := c.log.With("job", spec.ID, "ckpt", res.Checkpoint)
	c.fences.forget(spec.ID)
	// The application's files go back on every job-node before any is
	// restored: a file several of them hold must be whole when the first
	// task opens it again.
	sent := placed(spec)
	for round := 1; ; round++ {
		err = c.restoreAll(ctx, man, spec, sent, t, &res)
		if err == nil || !man.HostLocal || round > maxCopiesSetAside {
			break
		}
		// A host's copy of a host-local checkpoint failed verification at
		// the restore: its shim set it aside, and the next round fetches
		// another host's copy. Any other failure ends the restart.
		var pe *PhaseError
		aside := 0
		if errors.As(err, &pe) {
			for _, ne := range pe.Nodes {
				if agentapi.CopySetAside(ne.Err) {
					c.setAside(&res, spec.ID, ne.Node, ne.Host, ne.Err)
					aside++
				}
			}
		}
		if aside == 0 || aside < len(pe.Nodes) {
			break
		}
		log.Warn("restoring again with other hosts' copies", "round", round+1)
		c.destroyAll(ctx, spec, log)
	}
	if err == nil {
		err = c.resume(ctx, spec.ID, spec.Nodes, t)
	}
	if err != nil {
		log.Error("restart failed, destroying restored job-nodes", "err", err, "timings", t.String())
		c.destroyAll(ctx, spec, log)
		back := StateSuspended
		if prev == StateFailed {
			back = StateFailed
		}
		c.end(spec.ID, back, func(j *Job) { j.Reason = "restart from " + res.Checkpoint + " failed: " + err.Error() })
		if len(res.Moved) > 0 {
			// An error reply carries no result: say here what was moved.
			err = fmt.Errorf("%w (files that came after the checkpoint were moved aside, not deleted: %s)", err, strings.Join(res.Moved, ", "))
		}
		if errors.Is(err, agentapi.ErrCorrupt) {
			return res, fmt.Errorf("restart of %s from %s failed, nothing is left running: the checkpoint fails verification, restart from an older one (`torpor ls %s`): %w", spec.ID, res.Checkpoint, spec.ID, err)
		}
		return res, fmt.Errorf("restart of %s from %s failed, nothing is left running; the checkpoint is intact: %w", spec.ID, res.Checkpoint, err)
	}
	c.end(spec.ID, StateRunning, func(j *Job) {
		j.Spec = spec
		j.Reason = ""
		j.ExitCode = 0
		j.LastCheckpoint = res.Checkpoint
	})
	log.Info("job restarted", "timings", t.String())
	if m := c.metricsOf(); m != nil {
		m.Read(opRestart, string(PhaseVerify), res.Bytes)
		m.Read(opRestart, string(PhaseRestore), res.Bytes)
	}
	return res, nil
}

// maxCopiesSetAside bounds the rounds of a host-local restart that find a
// host's copy corrupt and go on with another host's.
const maxCopiesSetAside = 2

// setAside records that host's copy of node's images of a host-local
// checkpoint failed verification (its shim set it aside): in the
// restart's result, as an event and in the log.
func (c *Coordinator) setAside(res *RestartResult, job, node, host string, err error) {
	res.SetAside = append(res.SetAside, node+" on "+host)
	c.copySetAside(job, res.Checkpoint, node, host, err.Error())
}

// copySetAside records that host's shim set its copy of node of checkpoint
// handle aside, as it failed verification (why): an event and a log line.
func (c *Coordinator) copySetAside(job, handle, node, host, why string) {
	c.event(Event{Job: job, Type: EventCopySetAside, Handle: handle, Node: node, FromHost: host, Error: why})
	c.log.Warn("a host's copy of a checkpoint failed verification and was set aside", "job", job,
		"ckpt", handle, "node", node, "host", host, "err", why)
}

// restoreAll is a restart's work on the shims up to the unlock: a
// host-local checkpoint's images fetched where they lack, the
// application's files put back on every job-node before any is restored,
// then every job-node restored, locked.
func (c *Coordinator) restoreAll(ctx context.Context, man Manifest, spec JobSpec, sent []agentapi.NodeSpec, t *timings, res *RestartResult) error {
	var err error
	if man.HostLocal {
		// Each destination copies the images it lacks into its own store
		// first, verified as they arrive.
		var mu sync.Mutex
		err = t.run(PhaseFetch, func() error {
			return c.fetchAll(ctx, man, sent, func(node, host string, err error) {
				mu.Lock()
				defer mu.Unlock()
				c.setAside(res, spec.ID, node, host, err)
			})
		})
	}
	if err == nil {
		err = t.run(PhaseFiles, func() error {
			var mu sync.Mutex
			return c.fanout(ctx, PhaseFiles, sent, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
				req, err := c.restoreRequest(man, n.Name)
				if err != nil {
					return err
				}
				fr, err := a.RestoreFiles(ctx, spec.ID, n, req)
				mu.Lock()
				for _, m := range fr.Moved {
					if !slices.Contains(res.Moved, m) {
						res.Moved = append(res.Moved, m)
					}
				}
				mu.Unlock()
				return err
			})
		})
	}
	if err == nil {
		err = t.run(PhaseRestore, func() error {
			t.setBytes(PhaseRestore, res.Bytes)
			return c.fanout(ctx, PhaseRestore, sent, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
				req, err := c.restoreRequest(man, n.Name)
				if err != nil {
					return err
				}
				return a.Restore(ctx, spec.ID, n, req)
			})
		})
	}
	return err
}

// shimsVerify says whether the shim of every job-node's host verifies a
// restart's images itself (agentapi.ImageVerifier).
func (c *Coordinator) shimsVerify(nodes []agentapi.NodeSpec) bool {
	for _, n := range nodes {
		a, err := c.agent(n.Host)
		if err != nil {
			return false
		}
		if v, ok := a.(agentapi.ImageVerifier); !ok || !v.VerifiesImages() {
			return false
		}
	}
	return true
}

// restoreRequest is what a shim needs to restore one job-node of a
// committed checkpoint: the images' directory and the digest of their node
// manifest, which the shim verifies the images against.
//
// A host-local checkpoint's images are in the shim's own store (fetchAll
// put them there).
func (c *Coordinator) restoreRequest(man Manifest, node string) (agentapi.RestoreRequest, error) {
	handle := man.Handle
	if man.HostLocal {
		r, ok := man.Nodes[node]
		if !ok {
			return agentapi.RestoreRequest{}, fmt.Errorf("%w: checkpoint %s has no job-node %s", agentapi.ErrNotFound, handle, node)
		}
		return agentapi.RestoreRequest{Stored: true, Checkpoint: handle, NodeManifestSHA256: r.NodeManifestSHA256}, nil
	}
	dir, err := c.store.NodeDir(handle, node)
	if err != nil {
		return agentapi.RestoreRequest{}, err
	}
	sum, err := c.store.NodeManifestSHA256(handle, node)
	if err != nil {
		return agentapi.RestoreRequest{}, err
	}
	return agentapi.RestoreRequest{Dir: dir, Checkpoint: handle, NodeManifestSHA256: sum}, nil
}

// pickCheckpoint resolves ref to a checkpoint whose signature, node
// manifests and files' sizes verify; the shims verify the files' content as
// they restore (see Restart in docs/protocol.md). With fallback the content
// is verified here too, before anything is restored: an older checkpoint is
// chosen only for a newer one that fails.
func (c *Coordinator) pickCheckpoint(ctx context.Context, ref string, fallback bool) (RestartResult, Manifest, error) {
	var res RestartResult
	if strings.Contains(ref, "/") {
		res.Checkpoint = ref
		if err := c.verifyLayout(ctx, ref); err != nil {
			return res, Manifest{}, fmt.Errorf("checkpoint %s fails verification, refusing to restart from it: %w", ref, err)
		}
		man, err := c.store.Load(ref)
		if err != nil {
			return res, Manifest{}, err
		}
		res.Job = man.Spec.ID
		return res, man, nil
	}
	res.Job = ref
	handle, err := c.store.Latest(ref)
	if err != nil {
		return res, Manifest{}, fmt.Errorf("job %s has no checkpoint to restart from: %w", ref, err)
	}
	verify := c.verifyLayout
	if fallback {
		verify = func(ctx context.Context, handle string) error {
			if err := c.store.Verify(ctx, handle); err != nil {
				return err
			}
			return c.checkHeld(ctx, handle)
		}
	}
	for {
		verr := verify(ctx, handle)
		if verr == nil {
			break
		}
		if !fallback {
			return res, Manifest{}, fmt.Errorf("checkpoint %s fails verification, refusing to restart from it (`torpor restart %s --fallback` takes the newest one that verifies): %w", handle, ref, verr)
		}
		res.Skipped = append(res.Skipped, handle)
		c.log.Warn("checkpoint fails verification, falling back to an older one", "job", ref, "ckpt", handle, "err", verr)
		prev, err := c.previous(ref, handle)
		if err != nil {
			return res, Manifest{}, fmt.Errorf("no checkpoint of job %s verifies (skipped %s): %w", ref, strings.Join(res.Skipped, ", "), verr)
		}
		handle = prev
	}
	res.Checkpoint = handle
	man, err := c.store.Load(handle)
	return res, man, err
}

// verifyLayout is the store's VerifyLayout, and for a host-local
// checkpoint a check that every job-node's images are on a host that
// answers.
func (c *Coordinator) verifyLayout(ctx context.Context, handle string) error {
	if err := c.store.VerifyLayout(ctx, handle); err != nil {
		return err
	}
	return c.checkHeld(ctx, handle)
}

// Lister is implemented by stores that can list a job's committed checkpoints.
type Lister interface {
	List(job string) ([]string, error) // oldest first
}

func (c *Coordinator) previous(job, handle string) (string, error) {
	l, ok := c.store.(Lister)
	if !ok {
		return "", errors.New("the store cannot list checkpoints")
	}
	all, err := l.List(job)
	if err != nil {
		return "", err
	}
	for i := len(all) - 1; i > 0; i-- {
		if all[i] == handle {
			return all[i-1], nil
		}
	}
	return "", fmt.Errorf("%w: no checkpoint of %s older than %s", agentapi.ErrNotFound, job, handle)
}

// Migrate moves one job-node to another host while the rest of the job stays
// in memory: every job-node is prepared, frozen, drained and locked; the
// moving one is dumped (leave-running) and restored on the new host, still
// locked; only then is the old copy destroyed and every job-node unlocked and
// thawed. Until the old copy is destroyed any failure rolls back completely.
// It chooses stop-and-copy or post-copy automatically: MigrateDetails.
func (c *Coordinator) Migrate(ctx context.Context, id, node, to string) error {
	_, err := c.MigrateDetails(ctx, id, node, to, MigrateOptions{})
	return err
}

// MigrateDetails is Migrate with options, returning how it went. A post-copy
// migration (docs/protocol.md, "Post-copy migration") thaws the job as soon
// as the job-node is restored on its new host, without its private memory,
// which the destination then pulls from the source's page server; it
// returns once every page has arrived and the source's copy is destroyed.
func (c *Coordinator) MigrateDetails(ctx context.Context, id, node, to string, opts MigrateOptions) (MigrateResult, error) {
	t := c.tracker(opMigration, id)
	res, ran, err := c.migrate(ctx, id, node, to, opts, t)
	if !ran {
		c.refuse(opMigration, err)
	} else {
		c.observe(opMigration, t, err)
	}
	res.Phases = t.d
	if err != nil {
		c.event(Event{Job: id, Type: EventMigrationFailed, Node: node, FromHost: res.From, ToHost: to, Error: err.Error(), FailedPhase: string(t.lastPhase()), Phases: phaseNanos(t.d),
			Mode: res.Mode})
		return res, err
	}
	c.event(Event{Job: id, Type: EventMigration, Node: node, FromHost: res.From, ToHost: to, Bytes: t.bytes[PhaseDump], Phases: phaseNanos(t.d),
		Mode: res.Mode, DowntimeNS: int64(res.Downtime), LastPageNS: int64(res.LastPage)})
	return res, nil
}

// migrate is MigrateDetails; it says whether the operation ran (else it was
// refused, and nothing was touched).
func (c *Coordinator) migrate(ctx context.Context, id, node, to string, opts MigrateOptions, t *timings) (MigrateResult, bool, error) {
	res, err := c.doMigrate(ctx, id, node, to, opts, t)
	var r *refusal
	if errors.As(err, &r) {
		return res, false, r.err
	}
	return res, true, err
}

// migrationDest returns spec's job-node node and the copy of it that a
// migration to host to restores there, or why node cannot move there.
func migrationDest(spec JobSpec, node, to string) (*agentapi.NodeSpec, agentapi.NodeSpec, error) {
	moving, err := spec.Node(node)
	if err != nil {
		return nil, agentapi.NodeSpec{}, err
	}
	if moving.Host == to {
		return nil, agentapi.NodeSpec{}, fmt.Errorf("%w: job-node %s of %s already runs on %s", agentapi.ErrInvalid, node, spec.ID, to)
	}
	dest, err := placedNode(spec, node)
	if err != nil {
		return nil, agentapi.NodeSpec{}, err
	}
	dest.Host = to
	return moving, dest, nil
}

// refusal marks an error of an operation refused before anything was touched.
type refusal struct{ err error }

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

func (c *Coordinator) doMigrate(ctx context.Context, id, node, to string, opts MigrateOptions, t *timings) (MigrateResult, error) {
	var res MigrateResult
	mode, err := ParsePostCopy(string(opts.PostCopy))
	if err != nil {
		return res, &refusal{err}
	}
	if _, err := c.agent(to); err != nil {
		return res, &refusal{err}
	}
	if err := c.requireShims(id); err != nil {
		return res, &refusal{err}
	}
	// The copy to restore on the new host is recorded with the state
	// (Job.Arriving), so that a coordinator that dies before the point of
	// no return destroys it when it comes back. Nothing is recorded for a
	// request refused below.
	spec, _, err := c.beginSet(id, []State{StateRunning}, StateMigrating, func(j *Job) {
		if _, d, err := migrationDest(j.Spec, node, to); err == nil {
			j.Arriving = &d
		}
	})
	if err != nil {
		return res, &refusal{err}
	}
	moving, dest, err := migrationDest(spec, node, to)
	if err != nil {
		c.end(id, StateRunning, nil)
		return res, &refusal{err}
	}
	from := *moving
	res.From = from.Host
	log := c.log.With("job", id, "node", node, "from", from.Host, "to", to)
	above, why := c.postCopyAbove(mode, from.Host, to)
	if above == 0 && mode == PostCopyAlways {
		log.Warn("post-copy asked for, migrating with stop-and-copy", "why", why)
	}

	// Both shims with image directories of their own: the images go from
	// shim to shim, not through the checkpoint directory.
	source := c.imagesFrom(from.Host, to)
	res.Streamed = source != ""

	pend, err := c.store.Begin(id)
	if err != nil {
		c.end(id, StateRunning, func(j *Job) { j.Reason = err.Error() })
		return res, fmt.Errorf("begin migration images: %w", err)
	}
	// The migration images are scratch: they never become a checkpoint.
	defer func() {
		if err := pend.Abort(); err != nil {
			log.Warn("delete migration images", "err", err)
		}
	}()
	// The images' directory and the shared one, made below (not when the
	// images are streamed).
	var dumpDir, sharedDir string
	// Set by the restore's goroutine, which a phase deadline may leave
	// running: read after the phase, so atomic.
	var restored atomic.Bool
	var dumped agentapi.DumpResult // written by the dump's goroutine, read after the phase
	var dumpedMu sync.Mutex
	restoreDest := func(ctx context.Context) error {
		return c.fanout(ctx, PhaseRestore, []agentapi.NodeSpec{dest}, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
			// No RestoreFiles: the job has been frozen since the dump, so
			// its files are as captured, and the job-nodes that stay hold
			// them open (replacing one would split a shared file in two).
			restored.Store(true)
			dumpedMu.Lock()
			req := agentapi.RestoreRequest{Dir: dumpDir, Checkpoint: pend.Handle(), PageServer: dumped.PageServer}
			if source != "" {
				req.From, req.NodeManifestSHA256 = source, dumped.NodeManifestSHA256
			}
			dumpedMu.Unlock()
			err := a.Restore(ctx, id, n, req)
			if errors.Is(err, agentapi.ErrExists) {
				// A copy of the job-node left on the destination (a
				// rollback's destroy that did not reach it): the job-node
				// runs on its old host, so that copy is a stray, which the
				// shim refused before it consumed anything.
				if err = c.clearStray(ctx, a, id, n, "it was in the way of the migration from "+from.Host); err == nil {
					err = a.Restore(ctx, id, n, req)
				}
			}
			return err
		})
	}
	// A streamed stop-and-copy migration restores while the source dumps:
	// the destination fetches the memory images as CRIU writes them, and
	// verifies them against the node manifest digest the source sends last.
	var early chan error
	earlyCtx, cancelEarly := context.WithCancel(ctx)
	defer cancelEarly()
	// The images' directories are made before the job is frozen, as a
	// checkpoint's: a mkdir is a disk read when the file system's metadata
	// is cold (0.6 ms here).
	if source == "" {
		if dumpDir, err = pend.NodeDir(from.Name); err == nil {
			sharedDir, err = pend.SharedDir()
		}
	}
	if err == nil {
		err = c.quiesce(ctx, id, spec.Nodes, pend.Handle(), t)
	}
	if err == nil {
		if source != "" && above == 0 {
			early = make(chan error, 1)
			go func() { early <- restoreDest(earlyCtx) }()
		}
		var dirs []string
		if dumpDir != "" {
			dirs = append(dirs, dumpDir)
		}
		stopWatch := c.watchBytes(opMigration, id, PhaseDump, dirs)
		err = t.run(PhaseDump, func() error {
			err := c.fanout(ctx, PhaseDump, []agentapi.NodeSpec{from}, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
				req := agentapi.DumpRequest{Dir: dumpDir, Shared: sharedDir, LeaveRunning: true, Checkpoint: pend.Handle(), PostCopyAbove: above}
				if source != "" {
					req.Local = true
				}
				res, err := a.Dump(ctx, agentapi.NodeRef{Job: id, Node: n.Name}, req)
				dumpedMu.Lock()
				dumped = res
				dumpedMu.Unlock()
				return err
			})
			dumpedMu.Lock()
			t.setBytes(PhaseDump, dumped.Bytes)
			dumpedMu.Unlock()
			return err
		})
		stopWatch()
	}
	dumpedMu.Lock()
	postCopy := dumped.PageServer != ""
	res.Bytes, res.Memory = dumped.Bytes, dumped.Memory
	dumpedMu.Unlock()
	res.Mode, res.ModeReason = ModeStopCopy, why
	switch {
	case postCopy && why == "":
		res.Mode, res.ModeReason = ModePostCopy, fmt.Sprintf("%s holds %s of private memory, at least the post-copy threshold of %s", node, mib(res.Memory), mib(above))
	case postCopy:
		res.Mode = ModePostCopy
	case above > 0 && why == "":
		res.ModeReason = fmt.Sprintf("%s holds %s of private memory, below the post-copy threshold of %s", node, mib(res.Memory), mib(above))
	}
	switch {
	case err == nil && early != nil:
		log.Info("migrating", "mode", res.Mode, "why", res.ModeReason, "streamed", "during the dump")
		err = t.run(PhaseRestore, func() error {
			t.setBytes(PhaseRestore, res.Bytes)
			return <-early
		})
	case err == nil:
		log.Info("migrating", "mode", res.Mode, "why", res.ModeReason, "page_server", dumped.PageServer)
		err = t.run(PhaseRestore, func() error {
			t.setBytes(PhaseRestore, res.Bytes)
			return restoreDest(ctx)
		})
	case early != nil:
		// The dump failed: the destination's restore ends with its fetch
		// (and is stopped if it still waits for the dump to begin).
		cancelEarly()
		<-early
	}
	if err == nil && c.faults.AfterRestore != nil {
		err = c.faults.AfterRestore(id, node)
	}
	if err != nil {
		log.Warn("migration failed, rolling back", "err", err, "timings", t.String())
		if restored.Load() {
			c.destroyNodes(ctx, id, []agentapi.NodeSpec{dest}, log)
		}
		// A post-copy source stops serving its pages as it is unlocked.
		rbErr := c.rollback(ctx, spec, log)
		if rbErr != nil && unreachableOnly(rbErr) {
			return res, c.awaitShims(id, StateMigrating, "migration of "+node, err, rbErr)
		}
		if rbErr != nil {
			c.end(id, StateFailed, func(j *Job) { j.Reason = rbErr.Error() })
			return res, fmt.Errorf("migration of %s aborted: %w; rollback failed too, job is failed: %v", node, err, rbErr)
		}
		c.end(id, StateRunning, func(j *Job) { j.Reason = "migration of " + node + " aborted: " + err.Error() })
		return res, fmt.Errorf("migration of %s to %s aborted, job %s keeps running on its old hosts: %w", node, to, id, err)
	}
	// Point of no return: the new copy takes over. The old one stays
	// frozen and locked, out of the job, until it is destroyed: once the
	// job runs again (destroying took 48-128 ms in B4, 16 MiB to 1 GiB,
	// which the job no longer waits for), with post-copy once the new copy
	// has every page from it. The new placement and the old copy are saved first
	// (Job.Leaving): a coordinator that dies from here on destroys the old
	// copy when it comes back, where the placement before the move would
	// have had it thaw the old copy beside the new one.
	*moving = dest
	c.leave(id, spec, from)
	if c.faults.PastNoReturn != nil {
		c.faults.PastNoReturn(id, node)
	}
	if err := c.resume(ctx, id, spec.Nodes, t); err != nil {
		c.destroyNodes(ctx, id, []agentapi.NodeSpec{from}, log)
		c.stopJob(ctx, spec, log, "resume after migration", err, StateFailed, func(j *Job) {
			j.Spec = spec
			j.Leaving = nil
			j.Reason = "resume after migration failed: " + err.Error()
		})
		return res, fmt.Errorf("job-node %s moved to %s but the job could not resume and was stopped; restart it from its last checkpoint: %w", node, to, err)
	}
	res.Downtime = t.frozen(PhaseThaw)
	if !postCopy {
		c.destroyNodes(ctx, id, []agentapi.NodeSpec{from}, log)
	} else {
		log.Info("job running again, pages still arriving", "downtime", res.Downtime)
		err := t.run(PhasePages, func() error {
			return c.fanout(ctx, PhasePages, []agentapi.NodeSpec{dest}, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
				return a.Pages(ctx, agentapi.NodeRef{Job: id, Node: n.Name})
			})
		})
		c.destroyNodes(ctx, id, []agentapi.NodeSpec{from}, log)
		if err != nil {
			reason := fmt.Sprintf("post-copy migration of %s from %s to %s lost its pages in flight (%v): the job-node cannot run on without them; "+
				"restart the job from its last checkpoint with `torpor restart %s`", node, from.Host, to, err, id)
			c.stopJob(ctx, spec, log, "post-copy migration", err, StateFailed, func(j *Job) {
				j.Spec = spec
				j.Leaving = nil
				j.Reason = reason
				j.ExitCode = 1
			})
			return res, errors.New(reason)
		}
		res.LastPage = t.frozen(PhasePages)
	}
	if m := c.metricsOf(); m != nil {
		m.Written(opMigration, dumped.Bytes)
		m.Read(opMigration, string(PhaseRestore), dumped.Bytes)
		m.CRIUDump(opMigration, dumped.CRIUTime)
		m.Frozen(opMigration, res.Downtime)
	}
	c.end(id, StateRunning, func(j *Job) { j.Spec = spec; j.Leaving = nil; j.Reason = "" })
	log.Info("job-node migrated", "mode", res.Mode, "streamed", res.Streamed, "downtime", res.Downtime, "last_page", res.LastPage, "timings", t.String())
	return res, nil
}

// pollOnce asks for the job-nodes of running jobs and ends a job when its
// job-nodes exit: finished when all exit 0, failed (and the rest destroyed)
// as soon as one fails or its shim no longer has it. A shim that does not
// answer changes nothing.
func (c *Coordinator) pollOnce(ctx context.Context) { c.poll(ctx, true) }

// poll is pollOnce for every running job (all), or for those whose shims
// do not all tell of their exits (toldOfExits).
func (c *Coordinator) poll(ctx context.Context, all bool) {
	for _, j := range c.Jobs() {
		if j.State != StateRunning || (!all && c.toldOfExits(j.Spec)) {
			continue
		}
		c.mu.Lock()
		busy := c.busy[j.Spec.ID]
		c.mu.Unlock()
		if busy {
			continue
		}
		var (
			mu       sync.Mutex
			exited   int
			failed   *agentapi.NodeStatus
			failNode string
			gone     []string
		)
		_ = c.fanout(ctx, PhaseStart, j.Spec.Nodes, func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error {
			st, err := a.Status(ctx, agentapi.NodeRef{Job: j.Spec.ID, Node: n.Name})
			mu.Lock()
			defer mu.Unlock()
			if errors.Is(err, agentapi.ErrNotFound) {
				// Its shim answers and does not have it: the job-node died
				// with a process that held it and could not be adopted.
				gone = append(gone, n.Name+"@"+n.Host)
			}
			if err != nil && !errors.Is(err, agentapi.ErrNotFound) {
				// Its shim does not answer, and has not registered for
				// long: the host is lost, with the job-node.
				if why, lost := c.lost(n.Host); lost {
					gone = append(gone, n.Name+"@"+n.Host+" ("+why+")")
				}
			}
			if err != nil {
				return err
			}
			if st.Exited {
				exited++
				if st.ExitCode != 0 && failed == nil {
					failed, failNode = &st, n.Name
				}
			}
			return nil
		})
		switch {
		case len(gone) > 0:
			sort.Strings(gone)
			c.finish(ctx, j.Spec, StateFailed, 0, fmt.Sprintf("job-node %s no longer exists (the process or host that held it ended); "+
				"restart the job from its last checkpoint with `torpor restart %s`", strings.Join(gone, ", "), j.Spec.ID))
		case failed != nil:
			c.finish(ctx, j.Spec, StateFailed, failed.ExitCode, fmt.Sprintf("job-node %s exited with status %d: %s", failNode, failed.ExitCode, failed.Message))
		case exited == len(j.Spec.Nodes):
			c.finish(ctx, j.Spec, StateFinished, 0, "")
		}
	}
}

func (c *Coordinator) finish(ctx context.Context, spec JobSpec, to State, code int, reason string) {
	c.mu.Lock()
	j, ok := c.jobs[spec.ID]
	if !ok || c.busy[spec.ID] || j.State != StateRunning {
		c.mu.Unlock()
		return
	}
	c.busy[spec.ID] = true
	c.mu.Unlock()
	log := c.log.With("job", spec.ID)
	log.Info("job ended", "state", to, "exit", code, "reason", reason)
	c.destroyAll(ctx, spec, log)
	c.end(spec.ID, to, func(j *Job) { j.ExitCode = code; j.Reason = reason })
}
