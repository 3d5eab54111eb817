package agent

import (
	"context"
	"sync"

	"github.com/torpor-hpc/torpor/agentapi"
)

// exitQueue is how many exits a watcher (WatchExits) may be behind by. An
// exit that finds its queue full is not passed on: the coordinator's
// periodic poll of Status finds it.
const exitQueue = 64

// exitHub passes the exits of job-nodes' trees to the watchers.
type exitHub struct {
	mu   sync.Mutex
	subs map[chan agentapi.NodeRef]struct{}
}

func (h *exitHub) publish(ref agentapi.NodeRef) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- ref:
		default:
		}
	}
}

func (h *exitHub) subscribe() (<-chan agentapi.NodeRef, func()) {
	ch := make(chan agentapi.NodeRef, exitQueue)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[chan agentapi.NodeRef]struct{}{}
	}
	h.subs[ch] = struct{}{}
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.subs, ch)
	}
}

// onExit is the sandbox's OnExit for job-node job/node.
func (a *Agent) onExit(job, node string) func() {
	return func() { a.exits.publish(agentapi.NodeRef{Job: job, Node: node}) }
}

// WatchExits implements agentapi.ExitNotifier.
func (a *Agent) WatchExits(ctx context.Context, live func(), exited func(agentapi.NodeRef)) error {
	ch, cancel := a.exits.subscribe()
	defer cancel()
	live()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ref := <-ch:
			exited(ref)
		}
	}
}

var _ agentapi.ExitNotifier = (*Agent)(nil)
