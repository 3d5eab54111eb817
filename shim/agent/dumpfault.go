package agent

import (
	"context"
	"errors"
	"os"
	"sync"
	"syscall"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// killSelf ends the shim abruptly: fault.ShimExitInDump's strike.
func killSelf() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }

// killPID kills the dumping CRIU: fault.CRIUKillInDump's strike.
func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// strikeEvent is the CRIU notification at which the dump fault points
// strike. At post-dump every image is written and every parasite removed,
// CRIU holds the seized tree until it is answered, and the sandbox's dump
// guard has frozen the tree again (it acts on the same notification, first):
// the moment a real shim or CRIU death hurts most, reached in every dump.
const strikeEvent = criu.EventPostDump

// errShimKilled answers CRIU when the Agent's selfKill returned (a test's): a real shim is
// dead by then, and its CRIU sees its socket close and rolls back.
var errShimKilled = errors.New("fault injection: the shim killed itself")

// dumpWatch runs a dump's fault points and the tests' CRIU hooks.
type dumpWatch struct {
	a   *Agent
	ref agentapi.NodeRef

	mu     sync.Mutex
	pid    int         // CRIU's PID, 0 before it started
	struck fault.Point // the point that struck, "" while none did
}

// watchDump returns the watch of one dump, or nil when nothing watches.
func (a *Agent) watchDump(ref agentapi.NodeRef) *dumpWatch {
	if !a.cfg.Faults.Has(fault.ShimExitInDump) && !a.cfg.Faults.Has(fault.CRIUKillInDump) && a.criuStarted == nil && a.criuEvent == nil {
		return nil
	}
	return &dumpWatch{a: a, ref: ref}
}

// arm hooks the watch into a dump's options.
func (w *dumpWatch) arm(opts *criu.Options) {
	opts.Started = w.started
	opts.Notify = w.notify
}

// started is criu.Options.Started.
func (w *dumpWatch) started(pid int) {
	w.mu.Lock()
	w.pid = pid
	w.mu.Unlock()
	if w.a.criuStarted != nil {
		w.a.criuStarted("dump", pid)
	}
}

// Struck is the point that struck during the dump ("" if none).
func (w *dumpWatch) Struck() fault.Point {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.struck
}

// notify is criu.Options.Notify: CRIU waits while it runs.
func (w *dumpWatch) notify(ev criu.Event) error {
	if w.a.criuEvent != nil {
		w.a.criuEvent("dump", ev)
	}
	if ev != strikeEvent {
		return nil
	}
	w.mu.Lock()
	pid := w.pid
	w.mu.Unlock()
	log := w.a.log.With("job", w.ref.Job, "node", w.ref.Node, "criu_pid", pid)
	switch {
	case w.a.cfg.Faults.Has(fault.ShimExitInDump):
		w.strike(fault.ShimExitInDump)
		log.Error("FAULT INJECTION: " + string(fault.ShimExitInDump) + ": the shim kills itself (SIGKILL) while CRIU holds the dumped tree")
		w.a.selfKill()
		return errShimKilled
	case w.a.cfg.Faults.Has(fault.CRIUKillInDump):
		w.strike(fault.CRIUKillInDump)
		log.Error("FAULT INJECTION: " + string(fault.CRIUKillInDump) + ": killing CRIU (SIGKILL) while it holds the dumped tree")
		if pid <= 0 {
			return errors.New("fault injection: CRIU's PID is unknown")
		}
		if err := w.a.killCRIU(pid); err != nil {
			log.Error("fault injection: kill CRIU", "err", err)
			return err
		}
	}
	return nil
}

func (w *dumpWatch) strike(p fault.Point) {
	w.mu.Lock()
	w.struck = p
	w.mu.Unlock()
}

// restoreEvent is a restore's criu.Options.Notify: the tests' hook and
// fault.HoldInRestore, which keeps CRIU waiting at post-restore until ctx
// ends, in the shim's first restore only (the next one shows the job
// restarting once the network healed).
func (a *Agent) restoreEvent(ctx context.Context, ref agentapi.NodeRef, ev criu.Event) error {
	if a.criuEvent != nil {
		a.criuEvent("restore", ev)
	}
	if ev != criu.EventPostRestore || !a.cfg.Faults.Has(fault.HoldInRestore) || !a.held.CompareAndSwap(false, true) {
		return nil
	}
	a.log.Error("FAULT INJECTION: "+string(fault.HoldInRestore)+": holding the restored tree until the restore request is cancelled",
		"job", ref.Job, "node", ref.Node)
	<-ctx.Done()
	return context.Cause(ctx)
}

// finish logs loudly when a fault point was armed and the dump ended without
// reaching its moment: nothing was injected.
func (w *dumpWatch) finish() {
	armed := w.a.cfg.Faults.Has(fault.ShimExitInDump) || w.a.cfg.Faults.Has(fault.CRIUKillInDump)
	if armed && w.Struck() == "" {
		w.a.log.Error("fault injection: the dump ended before CRIU's "+string(strikeEvent)+" notification; nothing injected",
			"job", w.ref.Job, "node", w.ref.Node)
	}
}
