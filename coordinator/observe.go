package coordinator

import (
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/metrics"
)

// Operation names, as metrics and events give them.
const (
	opCheckpoint = "checkpoint"
	opRestart    = "restart"
	opMigration  = "migration"
)

// AllStates are every job state, in the order of the state machine.
var AllStates = []State{StateStarting, StateRunning, StateCheckpointing, StateMigrating, StateSuspended, StateRestoring, StateFinished, StateFailed}

// EnableMetrics creates the coordinator's metrics; shims, if not nil,
// counts the registered and reachable shims at each scrape.
func (c *Coordinator) EnableMetrics(shims func() (registered, reachable int)) *metrics.Coordinator {
	states := make([]string, len(AllStates))
	for i, s := range AllStates {
		states[i] = string(s)
	}
	m := metrics.NewCoordinator(metrics.Sources{
		Jobs: func() map[string]int {
			n := map[string]int{}
			for _, j := range c.Jobs() {
				n[string(j.State)]++
			}
			return n
		},
		States: states,
		Shims:  shims,
	})
	c.mu.Lock()
	c.metrics = m
	c.mu.Unlock()
	c.events.mu.Lock()
	c.events.onEvent = m.Event
	c.events.mu.Unlock()
	return m
}

// tracker returns the timings of one operation on job, which tell every
// phase's begin and end to the job's followers (progress events).
func (c *Coordinator) tracker(op, job string) *timings {
	return &timings{progress: func(p Phase, done bool, elapsed time.Duration, bytes int64) {
		c.event(Event{Job: job, Type: EventProgress, Operation: op, Phase: string(p), Done: done, ElapsedNS: int64(elapsed), Bytes: bytes})
	}}
}

// watchBytes tells the job's followers, every progressEvery, how many
// bytes the directories hold (a dump in progress), until stop is called.
func (c *Coordinator) watchBytes(op, job string, phase Phase, dirs []string) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(exited)
		tick := time.NewTicker(progressEvery)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				var n int64
				for _, d := range dirs {
					n += dirBytes(d)
				}
				c.event(Event{Job: job, Type: EventProgress, Operation: op, Phase: string(phase), ElapsedNS: int64(time.Since(start)), Bytes: n})
			}
		}
	}()
	return func() { close(done); <-exited }
}

// progressEvery is how often a running dump's bytes are told.
const progressEvery = 250 * time.Millisecond

// dirBytes is the size of the regular files below dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			n += info.Size()
		}
		return nil
	})
	return n
}

// observe records the end of an operation that ran (its job was busy):
// its result, with the phase it failed in as the reason, and its phases.
func (c *Coordinator) observe(op string, t *timings, err error) {
	m := c.metricsOf()
	if m == nil {
		return
	}
	phases := make(map[string]time.Duration, len(t.d))
	for p, d := range t.d {
		phases[string(p)] = d
	}
	m.Phases(op, phases)
	if err == nil {
		m.Operation(op, metrics.ResultOK, metrics.ReasonNone)
		return
	}
	reason := string(t.lastPhase())
	if reason == "" {
		reason = "begin"
	}
	m.Operation(op, metrics.ResultFailed, reason)
}

// refuse records an operation refused before anything was touched.
func (c *Coordinator) refuse(op string, err error) {
	c.metricsOf().Operation(op, metrics.ResultRefused, errClass(err))
}

func (c *Coordinator) metricsOf() *metrics.Coordinator {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.metrics
}

// errClass names the kind of a refusal: a bounded label value.
func errClass(err error) string {
	switch {
	case errors.Is(err, agentapi.ErrState):
		return "state"
	case errors.Is(err, agentapi.ErrNotFound):
		return "not_found"
	case errors.Is(err, agentapi.ErrInvalid):
		return "invalid"
	case errors.Is(err, agentapi.ErrPermission):
		return "permission"
	case errors.Is(err, agentapi.ErrUnreachable):
		return "unreachable"
	}
	return "other"
}
