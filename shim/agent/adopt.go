package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/shim/sandbox"
)

// Adopt takes over the job-nodes that an earlier shim of this host recorded
// and left behind when it died abruptly (SIGKILL, crash): each sandbox is
// rebuilt around its running tree, its network lock is attached again
// (unlocked), and an MPI job-node's link socket is listened on again so that
// its pmixd reconnects. A frozen job-node stays frozen: the coordinator
// decides when to unlock and thaw it. Records of job-nodes that are gone
// altogether are removed with a warning. Adopt returns how many job-nodes it
// adopted; job-nodes it could not adopt are named in the error and their
// records kept.
func (a *Agent) Adopt(ctx context.Context) (int, error) {
	recs, err := a.loadRecords()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	adopted := 0
	for _, r := range recs {
		ok, err := a.adopt(ctx, r)
		if err != nil {
			errs = append(errs, fmt.Errorf("adopt job-node %s/%s: %w", r.Job, r.Spec.Name, err))
		}
		if ok {
			adopted++
		}
	}
	return adopted, errors.Join(errs...)
}

func (a *Agent) adopt(ctx context.Context, r nodeRecord) (bool, error) {
	if err := checkNames(r.Job, r.Spec.Name); err != nil {
		return false, err
	}
	k := key(r.Job, r.Spec.Name)
	a.mu.Lock()
	if _, exists := a.nodes[k]; exists {
		a.mu.Unlock()
		return false, fmt.Errorf("%w: this shim already has it", agentapi.ErrState)
	}
	a.nodes[k] = nil // reserve
	a.mu.Unlock()
	ok := false
	defer func() {
		if !ok {
			a.mu.Lock()
			delete(a.nodes, k)
			a.mu.Unlock()
		}
	}()
	sb, err := sandbox.Adopt(ctx, sandbox.Config{
		Name:         k,
		NetNS:        r.NetNS,
		Hostname:     r.Spec.Hostname,
		Address:      r.Spec.IP,
		HostNetNS:    a.cfg.HostNetNS,
		Bridge:       a.cfg.Bridge,
		HostVeth:     r.HostVeth,
		Cgroup:       r.Cgroup,
		CgroupParent: a.cfg.CgroupParent,
		Log:          a.log,
		OnExit:       a.onExit(r.Job, r.Spec.Name),
	}, r.ExitFile)
	if errors.Is(err, sandbox.ErrGone) {
		a.log.Warn("job-node of a previous shim is gone; forgetting it", "job", r.Job, "node", r.Spec.Name, "err", err)
		a.removeRecord(r.Job, r.Spec.Name)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	n := &node{spec: r.Spec, job: r.Job, sb: sb, veth: r.HostVeth, netns: r.NetNS, cgroup: r.Cgroup,
		exitFile: r.ExitFile, moved: r.Moved, restoredFrom: r.RestoredFrom}
	if r.PostCopy != "" {
		// Neither side can go on alone: the source's copy is stale once the
		// destination ran, and the destination may lack pages for good.
		a.log.Warn("destroying a job-node left by a post-copy migration", "job", r.Job, "node", r.Spec.Name, "side", r.PostCopy, "why", errPostCopyLeft)
		err := sb.Destroy(ctx)
		a.removeRecord(r.Job, r.Spec.Name)
		return false, err
	}
	if err := a.attachLock(n); err != nil {
		sb.Release()
		return false, err
	}
	if r.Link != "" && (sb.State() == sandbox.Running || sb.State() == sandbox.Frozen) {
		if err := a.listenLink(n); err != nil {
			n.lock.Close()
			sb.Release()
			return false, err
		}
		if n.moved && n.restoredFrom != "" {
			n.link.SetRestoredFrom(n.restoredFrom)
		}
	}
	a.mu.Lock()
	a.nodes[k] = n
	a.mu.Unlock()
	ok = true
	a.log.Info("adopted job-node", "job", r.Job, "node", r.Spec.Name, "pid", sb.Pid(), "state", sb.State(), "moved", n.moved)
	return true, nil
}

// Release forgets every job-node without touching it, as an abrupt death of
// the shim would: their network locks and link sockets close, and the
// sandboxes, their records and their trees live on for the next Agent of
// this host to Adopt. An embedded coordinator's host process releases its
// job-nodes when it exits while they still run.
func (a *Agent) Release() {
	a.mu.Lock()
	all := a.nodes
	a.nodes = map[string]*node{}
	a.mu.Unlock()
	for _, n := range all {
		if n == nil {
			continue
		}
		n.dropCRIU()
		if n.link != nil {
			n.link.Close()
		}
		if n.lock != nil {
			_ = n.lock.Close()
		}
		n.sb.Release()
	}
}

// Nodes is how many job-nodes the agent holds.
func (a *Agent) Nodes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.nodes)
}
