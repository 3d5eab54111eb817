package pmix

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/torpor-hpc/torpor/pmix/libpmix"
)

// The PMIx events of torpor's checkpoint protocol (see the package doc).
const (
	// EventCheckpoint (PMIX_JCTRL_CHECKPOINT) goes to the ranks at prepare;
	// KeyCheckpoint carries the checkpoint id.
	EventCheckpoint = libpmix.JctrlCheckpoint
	// EventCheckpointComplete (PMIX_JCTRL_CHECKPOINT_COMPLETE) comes from a
	// rank: once with KeyRegistered=true to opt in, then once per checkpoint
	// with KeyCheckpoint=id when it is ready.
	EventCheckpointComplete = libpmix.JctrlCheckpointComplete
	// EventRestored (PMIX_ERR_PROC_RESTART) goes to the ranks after the
	// job-node was restored from a checkpoint; KeyCheckpoint carries its id.
	EventRestored = libpmix.ErrProcRestart
	// KeyCheckpoint is PMIX_JOB_CTRL_CHECKPOINT (a string).
	KeyCheckpoint = libpmix.KeyJobCtrlCheckpoint
	// KeyRegistered (bool) marks a rank's opt-in EventCheckpointComplete.
	KeyRegistered = "torpor.ckpt.registered"
	// EnvCheckpointEvents=1 is in every PMIx rank's environment: a rank
	// should opt in only when it is set (another resource manager, e.g.
	// mpirun's orted, may never complete the opt-in notification).
	EnvCheckpointEvents = "TORPOR_CKPT_EVENTS"
)

// DefaultPrepareTimeout bounds the wait for the ranks when the caller gives none.
const DefaultPrepareTimeout = 8 * time.Second

// ErrPrepareBusy is returned when a prepare is asked for while one runs.
var ErrPrepareBusy = errors.New("a checkpoint prepare is already running on this job-node")

// prepareWait is one running prepare.
type prepareWait struct {
	id   string
	want map[int]bool // ranks waited for
	got  map[int]bool // ranks that answered (waited for or not)
	done chan struct{}
}

func (w *prepareWait) complete() bool {
	for r := range w.want {
		if !w.got[r] {
			return false
		}
	}
	return true
}

// startEvents registers the daemon's handler for the ranks' checkpoint
// answers. Called once the PMIx server is up, before any rank starts.
func (d *Daemon) startEvents(ctx context.Context) error {
	if _, err := d.srv.RegisterEventHandler(ctx, []libpmix.Status{EventCheckpointComplete}, nil, d.onRankEvent); err != nil {
		return fmt.Errorf("listen for checkpoint answers: %w", err)
	}
	d.ckptMu.Lock()
	d.eventsUp = true
	d.ckptMu.Unlock()
	return nil
}

// onRankEvent records an opt-in or an answer. It may see the same event twice
// (the registered handler and the notify_event upcall): both are idempotent.
func (d *Daemon) onRankEvent(ev libpmix.Event) {
	if ev.Code != EventCheckpointComplete || ev.Source.Nspace != d.spec.Job {
		return
	}
	r := int(ev.Source.Rank)
	if v, ok := libpmix.Lookup(ev.Info, KeyRegistered); ok && v == true {
		d.ckptMu.Lock()
		seen := d.optedIn[r]
		d.optedIn[r] = true
		d.ckptMu.Unlock()
		if !seen {
			d.log.Info("rank opted in to checkpoint events", "rank", r)
		}
		return
	}
	id, _ := libpmix.Lookup(ev.Info, KeyCheckpoint)
	ids, _ := id.(string)
	d.ckptMu.Lock()
	defer d.ckptMu.Unlock()
	w := d.ckptWait
	if w == nil && ids != "" && ids == d.lastPrepare {
		return // the second delivery of an answer that came in time
	}
	if w == nil || (ids != "" && ids != w.id) {
		d.log.Warn("checkpoint answer for no running prepare", "rank", r, "checkpoint", ids)
		return
	}
	if w.got[r] {
		return
	}
	w.got[r] = true
	d.log.Info("rank ready for checkpoint", "rank", r, "checkpoint", w.id)
	if w.complete() {
		select {
		case <-w.done:
		default:
			close(w.done)
		}
	}
}

// Prepare runs the prepare phase of checkpoint id on this job-node: it raises
// EventCheckpoint to the local ranks and waits, at most timeout, for an answer
// from every rank that opted in and is still running. Ranks that did not opt
// in are not waited for; a rank that does not answer in time is listed in
// Laggards (not an error: the caller decides). With the PMI-1 wire, or before
// the PMIx server is up, there is nobody to tell and it returns at once.
func (d *Daemon) Prepare(ctx context.Context, id string, timeout time.Duration) (PrepareResult, error) {
	start := time.Now()
	res := PrepareResult{Checkpoint: id}
	if timeout <= 0 {
		timeout = DefaultPrepareTimeout
	}
	d.ckptMu.Lock()
	if !d.eventsUp {
		d.ckptMu.Unlock()
		d.log.Info("prepare: no PMIx event service on this job-node", "checkpoint", id)
		return res, nil
	}
	if d.ckptWait != nil {
		d.ckptMu.Unlock()
		return res, fmt.Errorf("prepare checkpoint %s: %w (%s)", id, ErrPrepareBusy, d.ckptWait.id)
	}
	w := &prepareWait{id: id, want: map[int]bool{}, got: map[int]bool{}, done: make(chan struct{})}
	d.mu.Lock()
	for r := range d.optedIn {
		rk := d.ranks[r]
		if rk == nil || rk.reaped.Load() || d.finalized[r] {
			continue
		}
		w.want[r] = true
	}
	d.mu.Unlock()
	d.ckptWait = w
	if w.complete() {
		close(w.done)
	}
	d.ckptMu.Unlock()
	defer func() {
		d.ckptMu.Lock()
		d.ckptWait = nil
		d.lastPrepare = id
		d.ckptMu.Unlock()
	}()

	d.log.Info("prepare: raising checkpoint event", "checkpoint", id, "waiting_for", len(w.want), "timeout", timeout)
	nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := d.srv.NotifyEvent(nctx, EventCheckpoint, libpmix.RangeLocal, eventInfo(id))
	cancel()
	if err != nil {
		return res, fmt.Errorf("prepare checkpoint %s: raise event to the ranks: %w", id, err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-w.done:
	case <-timer.C:
	case <-ctx.Done():
		return res, fmt.Errorf("prepare checkpoint %s: %w", id, ctx.Err())
	}
	d.ckptMu.Lock()
	res.Registered = len(w.want)
	for r := range w.want {
		if w.got[r] {
			res.Completed++
		} else {
			res.Laggards = append(res.Laggards, r)
		}
	}
	d.ckptMu.Unlock()
	slices.Sort(res.Laggards)
	res.Elapsed = time.Since(start)
	if len(res.Laggards) > 0 {
		d.log.Warn("prepare: ranks did not answer in time", "checkpoint", id, "ranks", res.Laggards, "timeout", timeout)
	}
	return res, nil
}

// Restored tells the local ranks that the job-node was restored from
// checkpoint id (EventRestored). Without PMIx events it does nothing.
func (d *Daemon) Restored(ctx context.Context, id string) error {
	d.ckptMu.Lock()
	up := d.eventsUp
	d.ckptMu.Unlock()
	if !up {
		return nil
	}
	d.log.Info("raising restored event", "checkpoint", id)
	nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := d.srv.NotifyEvent(nctx, EventRestored, libpmix.RangeLocal, eventInfo(id)); err != nil {
		return fmt.Errorf("tell the ranks about the restore from %s: %w", id, err)
	}
	return nil
}

// eventInfo is what torpor's events carry: never to Open MPI's default
// handler (it would abort), never cached for later registrations.
func eventInfo(id string) []libpmix.Info {
	return []libpmix.Info{
		{Key: libpmix.KeyEventNonDefault, Value: true},
		{Key: libpmix.KeyEventDoNotCache, Value: true},
		{Key: KeyCheckpoint, Value: id},
	}
}
