package coordinator

import (
	"context"
	"errors"
	"fmt"

	"github.com/torpor-hpc/torpor/agentapi"
)

// A stray is a copy of a job-node that a shim holds where the registry
// says none may be: the copy a migration's rollback restored and could not
// destroy (its shim did not answer then), or any job-node of a job that
// ended (finished, failed, suspended) while its host was cut off. Left
// alone it stays frozen and locked, holding its memory, and a restore of
// that job-node on that host is refused while it is there. Shims tell what
// they hold at every registration; DestroyStrays destroys the strays.

// stray says why the copy of job/node a shim of host holds must not be
// there ("" when it may be, or when that is not known now); c.mu is held.
// Only a job the registry knows, that no operation holds and that is not
// left in the middle of one (settle decides about those) is judged: a
// running job's job-node belongs on the host its spec names, a job at rest
// has no job-node anywhere. A job-node name the job does not have, or a job
// the registry does not know, is left alone: nothing here says it is not
// someone's.
func (c *Coordinator) strayLocked(host string, ref agentapi.NodeRef) string {
	j, ok := c.jobs[ref.Job]
	if !ok || c.busy[ref.Job] || j.State.Transient() || j.Leaving != nil || j.Arriving != nil {
		return ""
	}
	n, err := j.Spec.Node(ref.Node)
	if err != nil {
		return ""
	}
	switch j.State {
	case StateRunning:
		if n.Host != host {
			return fmt.Sprintf("the job runs it on %s", n.Host)
		}
	case StateFinished, StateFailed, StateSuspended:
		return fmt.Sprintf("the job is %s", j.State)
	}
	return ""
}

// DestroyStrays destroys, in the background, the copies among held (the
// job-nodes host's shim said it holds as it registered) that the registry
// says must not be there. Each job is held busy while its copy is judged
// and destroyed, so that no operation on it places a job-node there
// meanwhile; a job an operation holds is judged at a later registration.
// One host's strays are destroyed one pass at a time: a registration that
// finds a pass still running starts none.
func (c *Coordinator) DestroyStrays(host string, held []agentapi.NodeRef) {
	c.mu.Lock()
	var strays []agentapi.NodeRef
	for _, ref := range held {
		if c.strayLocked(host, ref) != "" {
			strays = append(strays, ref)
		}
	}
	if len(strays) == 0 || c.straying[host] {
		c.mu.Unlock()
		return
	}
	c.straying[host] = true
	c.mu.Unlock()
	c.inBackground(context.Background(), func(ctx context.Context) {
		defer func() {
			c.mu.Lock()
			delete(c.straying, host)
			c.mu.Unlock()
		}()
		for _, ref := range strays {
			c.destroyStray(ctx, host, ref)
		}
	})
}

// destroyStray judges host's copy of ref again, now, and destroys it if it
// is a stray, with the job held busy throughout.
func (c *Coordinator) destroyStray(ctx context.Context, host string, ref agentapi.NodeRef) {
	c.mu.Lock()
	why := c.strayLocked(host, ref)
	a, registered := c.agents[host]
	if why == "" || !registered {
		c.mu.Unlock()
		return
	}
	c.busy[ref.Job] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.busy, ref.Job)
		c.mu.Unlock()
	}()
	err := c.destroyCopy(ctx, a, host, ref, why)
	switch {
	case err == nil:
	case errors.Is(err, agentapi.ErrNotFound):
		// Gone since the shim said it held it.
	default:
		c.log.Error("destroy a stray copy of a job-node: it stays until the shim's next registration", "job", ref.Job, "node", ref.Node, "host", host, "why", why, "err", err)
	}
}

// clearStray destroys the copy of job-node n that its host's shim would not
// restore over (agentapi.ErrExists), for an operation that holds the job and
// places n there: the registry has no copy of n on that host, so the one
// there is a stray that the shim's next registration would have destroyed
// (destroyStray). The caller asks again once it is gone.
func (c *Coordinator) clearStray(ctx context.Context, a agentapi.Agent, job string, n agentapi.NodeSpec, why string) error {
	if err := c.destroyCopy(ctx, a, n.Host, agentapi.NodeRef{Job: job, Node: n.Name}, why); err != nil {
		c.log.Error("destroy a stray copy of a job-node in the way", "job", job, "node", n.Name, "host", n.Host, "why", why, "err", err)
		return fmt.Errorf("a copy of job-node %s is already on %s and could not be destroyed: %w", n.Name, n.Host, err)
	}
	return nil
}

// destroyCopy destroys host's copy of ref, a stray for why, within the
// destroy phase's deadline; once it is gone it logs and records that
// (event stray-destroyed; the job's owner filled in from the registry).
func (c *Coordinator) destroyCopy(ctx context.Context, a agentapi.Agent, host string, ref agentapi.NodeRef, why string) error {
	dctx, cancel := context.WithTimeout(ctx, c.deadlines.of(PhaseDestroy))
	err := a.Destroy(dctx, ref)
	cancel()
	if err != nil {
		return err
	}
	c.log.Warn("destroyed a stray copy of a job-node", "job", ref.Job, "node", ref.Node, "host", host, "why", why)
	c.event(Event{Job: ref.Job, Type: EventStrayDestroyed, Node: ref.Node, FromHost: host, Reason: why})
	return nil
}
