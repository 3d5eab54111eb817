package agent

import (
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/shim/sandbox"
)

// selfKill ends the shim abruptly for fault.ShimExitInDump. Tests replace it.
var selfKill = func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }

// killCRIU kills the dumping CRIU for fault.CRIUKillInDump.
var killCRIU = func(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// faultPoll is how often the images directory is looked at while a fault
// point waits for CRIU to be dumping.
const faultPoll = 2 * time.Millisecond

// strikeFile starts the name of the image whose appearance means "CRIU is
// dumping" to the dump fault points; "" means the first *.img file. See TestCRIUKillInDump
// for why the kill waits for this one.
var strikeFile = sandbox.DumpGuardFile

// dumpWatch runs a dump's fault points: it waits, from CRIU's start to the
// dump's end, until CRIU is really dumping, then strikes.
type dumpWatch struct {
	a   *Agent
	ref coordinator.NodeRef
	dir string
	// guarded, if set, says whether the sandbox's dump guard froze the tree
	// again (see sandbox.dumpGuard): a fault strikes after it did.
	guarded func() bool
	done    chan struct{}
	wg      sync.WaitGroup

	mu     sync.Mutex
	struck fault.Point // the point that struck, "" while none did
}

// watchDump returns the watch of one dump, or nil when nothing watches.
func (a *Agent) watchDump(ref coordinator.NodeRef, dir string, guarded func() bool) *dumpWatch {
	if !a.cfg.Faults.Has(fault.ShimExitInDump) && !a.cfg.Faults.Has(fault.CRIUKillInDump) && a.criuStarted == nil {
		return nil
	}
	return &dumpWatch{a: a, ref: ref, dir: dir, guarded: guarded, done: make(chan struct{})}
}

// started is criu.Options.Started.
func (w *dumpWatch) started(pid int) {
	if w.a.criuStarted != nil {
		w.a.criuStarted("dump", pid)
	}
	if w.a.cfg.Faults.Has(fault.ShimExitInDump) || w.a.cfg.Faults.Has(fault.CRIUKillInDump) {
		w.wg.Add(1)
		go w.poll(pid)
	}
}

// stop ends the watch once the dump returned.
func (w *dumpWatch) stop() {
	close(w.done)
	w.wg.Wait()
}

// Struck is the point that struck during the dump ("" if none).
func (w *dumpWatch) Struck() fault.Point {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.struck
}

func (w *dumpWatch) poll(pid int) {
	defer w.wg.Done()
	t := time.NewTicker(faultPoll)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			w.a.log.Warn("fault injection: the dump ended before CRIU was seen dumping; nothing injected",
				"job", w.ref.Job, "node", w.ref.Node)
			return
		case <-t.C:
		}
		if !dumping(w.dir) || w.guarded != nil && !w.guarded() {
			continue
		}
		log := w.a.log.With("job", w.ref.Job, "node", w.ref.Node, "criu_pid", pid)
		if w.a.cfg.Faults.Has(fault.ShimExitInDump) {
			w.mu.Lock()
			w.struck = fault.ShimExitInDump
			w.mu.Unlock()
			log.Error("FAULT INJECTION: " + string(fault.ShimExitInDump) + ": the shim kills itself (SIGKILL) while CRIU dumps")
			selfKill()
			return
		}
		log.Error("FAULT INJECTION: " + string(fault.CRIUKillInDump) + ": killing CRIU (SIGKILL) while it dumps")
		w.mu.Lock()
		w.struck = fault.CRIUKillInDump
		w.mu.Unlock()
		if err := killCRIU(pid); err != nil {
			log.Error("fault injection: kill CRIU", "err", err)
		}
		return
	}
}

// dumping says whether CRIU has written the image that marks the strike: a
// file whose name starts with strikeFile, or any *.img when it is "".
func dumping(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if strikeFile == "" && strings.HasSuffix(e.Name(), ".img") || strikeFile != "" && strings.HasPrefix(e.Name(), strikeFile) {
			return true
		}
	}
	return false
}
