package coordinator

import (
	"context"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
)

// fullPollEvery is how many of Watch's ticks pass between two polls of the
// jobs whose every shim tells of its job-nodes' exits (exit watches): 5 s
// at the default 0.5 s. The other jobs are polled at every tick.
const fullPollEvery = 10

// exitRetry is how long a shim whose exits could not be watched is polled
// before a watch is tried again.
const exitRetry = 5 * time.Second

// exitWatches is the coordinator's watches of its shims' exits (c.mu).
type exitWatches struct {
	running map[string]bool      // host -> a watch runs
	live    map[string]bool      // host -> its shim listens: exits come as they happen
	retry   map[string]time.Time // host -> no new watch before then
	kick    chan struct{}        // an exit came, or a watch became live: poll now
}

// kickPoll has Watch poll at once.
func (c *Coordinator) kickPoll() {
	select {
	case c.exits.kick <- struct{}{}:
	default:
	}
}

// watchExits starts a watch, ending with ctx, of every shim that tells of
// its job-nodes' exits (agentapi.ExitNotifier) and has none.
func (c *Coordinator) watchExits(ctx context.Context, wg *sync.WaitGroup) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now() // not c.now: a test's clock may stand still
	for host, a := range c.agents {
		en, ok := a.(agentapi.ExitNotifier)
		if !ok || c.exits.running[host] || now.Before(c.exits.retry[host]) {
			continue
		}
		c.exits.running[host] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			wasLive := false
			err := en.WatchExits(ctx, func() {
				c.mu.Lock()
				c.exits.live[host], wasLive = true, true
				c.mu.Unlock()
				c.log.Info("a shim tells of its job-nodes' exits as they happen", "host", host)
				c.kickPoll() // an exit may have come before the watch
			}, func(r agentapi.NodeRef) {
				c.log.Info("a shim told of a job-node's exit", "host", host, "job", r.Job, "node", r.Node)
				c.kickPoll()
			})
			c.mu.Lock()
			delete(c.exits.running, host)
			delete(c.exits.live, host)
			c.exits.retry[host] = time.Now().Add(exitRetry)
			c.mu.Unlock()
			switch {
			case ctx.Err() != nil:
			case wasLive:
				c.log.Info("the exits of a shim's job-nodes are polled until its shim answers again", "host", host, "err", err)
			default:
				c.log.Debug("a shim does not tell of its job-nodes' exits: they are polled", "host", host, "err", err)
			}
		}()
	}
}

// toldOfExits says whether every shim of spec's job-nodes tells of their
// exits as they happen.
func (c *Coordinator) toldOfExits(spec JobSpec) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range spec.Nodes {
		if !c.exits.live[n.Host] {
			return false
		}
	}
	return true
}
