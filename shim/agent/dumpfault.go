package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/internal/nsrun"
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

// pageStall is fault.StallPagesInFlight on the destination of a post-copy
// restore: a relay, in this host's namespace, between CRIU's lazy-pages
// daemon and the source's page server. It passes everything until hold
// (at CRIU's post-restore notification: the daemon has fetched only the
// pages the restore touched, and begins fetching the rest just after),
// then passes nothing more, either way: the pages asked for from then on
// are in flight, and stay so. When the source closes its end, the relay
// drops what it held and closes the daemon's connection, as a dead link
// would.
type pageStall struct {
	a        *Agent
	log      *slog.Logger
	ln       net.Listener
	upstream string

	mu     sync.Mutex
	held   bool
	closed bool
	conns  []net.Conn
}

// stallPages starts the relay of fault.StallPagesInFlight to the page
// server at upstream (host:port), in the shim's first post-copy restore
// only; nil when the point is off or has struck already.
func (a *Agent) stallPages(job, node, upstream string) *pageStall {
	if !a.cfg.Faults.Has(fault.StallPagesInFlight) || !a.stalled.CompareAndSwap(false, true) {
		return nil
	}
	log := a.log.With("job", job, "node", node, "page_server", upstream)
	var ln net.Listener
	err := nsrun.InNetNSPath(a.hostNetNSPath(), func() error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	})
	if err != nil {
		log.Error("fault injection: "+string(fault.StallPagesInFlight)+": nothing injected", "err", err)
		return nil
	}
	st := &pageStall{a: a, log: log, ln: ln, upstream: upstream}
	go st.accept()
	return st
}

// Addr is where the lazy-pages daemon connects instead of the page server.
func (st *pageStall) Addr() string { return st.ln.Addr().String() }

func (st *pageStall) accept() {
	for {
		down, err := st.ln.Accept()
		if err != nil {
			return
		}
		var up net.Conn
		err = nsrun.InNetNSPath(st.a.hostNetNSPath(), func() error {
			var err error
			up, err = net.Dial("tcp4", st.upstream)
			return err
		})
		if err != nil {
			st.log.Error("fault injection: reach the page server", "err", err)
			down.Close()
			continue
		}
		if !st.track(down, up) {
			return
		}
		go st.pass(up, down, false)
		go st.pass(down, up, true)
	}
}

func (st *pageStall) track(cs ...net.Conn) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	st.conns = append(st.conns, cs...)
	return true
}

// pass copies src to dst until hold; after it, what src sends is dropped.
// When the source (fromSource) ends its side, the daemon's connection is
// closed.
func (st *pageStall) pass(dst, src net.Conn, fromSource bool) {
	buf := make([]byte, 64<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 && !st.isHeld() {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			if fromSource && st.isHeld() {
				st.log.Error("FAULT INJECTION: "+string(fault.StallPagesInFlight)+": the source closed the page server connection; dropping the pages in flight and closing the lazy-pages daemon's connection", "err", err)
			}
			if fromSource || st.isHeld() {
				st.close()
			} else if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
	}
}

func (st *pageStall) isHeld() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.held
}

// hold stops the traffic both ways.
func (st *pageStall) hold() {
	st.mu.Lock()
	st.held = true
	st.mu.Unlock()
	st.log.Error("FAULT INJECTION: " + string(fault.StallPagesInFlight) + ": holding every page request and page from now on, until the source closes its page server connection")
}

// close ends the relay and its connections.
func (st *pageStall) close() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.closed = true
	st.ln.Close()
	for _, c := range st.conns {
		c.Close()
	}
}

// thawedStalled logs, for fault.StallPagesInFlight, that n runs while its
// pages are held: the moment for a test to kill the source's page server.
func (a *Agent) thawedStalled(n *node) {
	n.mu.Lock()
	stalled := n.stalled
	n.mu.Unlock()
	if stalled {
		a.log.Error("FAULT INJECTION: "+string(fault.StallPagesInFlight)+": job-node thawed with its pages held", "job", n.job, "node", n.spec.Name)
	}
}
