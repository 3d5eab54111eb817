package harness

import (
	"context"
	"fmt"
	"time"

	"github.com/torpor-hpc/torpor/coordinator"
)

// ReplicationPoint is B9 at one size: a CPU-bound job's progress rate
// before a host-local checkpoint, while the coordinator copies its images
// to a replica host in the background, and after.
type ReplicationPoint struct {
	MiB  int   `json:"mib"`  // per job-node
	Rate int64 `json:"rate"` // --replica-rate, bytes/s per copy
	// Progress rates: memhog iterations per second, summed over the
	// job-nodes (each memhog runs without pause: -every 0).
	Before float64 `json:"before_per_s"`
	During float64 `json:"during_per_s"`
	After  float64 `json:"after_per_s"`
	// DuringOverBefore is During/Before: 1 means replication did not slow
	// the job.
	DuringOverBefore float64       `json:"during_over_before"`
	Checkpoint       time.Duration `json:"checkpoint_ns"`
	// Replication is the time from the commit until the replicated event;
	// Bytes what it copied.
	Replication time.Duration `json:"replication_ns"`
	Bytes       int64         `json:"bytes"`
	Err         string        `json:"error,omitempty"`
}

// b9Window is how long each progress rate is measured over.
const b9Window = 3 * time.Second

// runReplication measures B9 at one size on a routed Env with host-local
// checkpoints: a 2-job-node busy ring on h1 and h2 (replicas on h2 and h3).
func runReplication(ctx context.Context, e *Env, mib int, rate int64, logf func(string, ...any)) ReplicationPoint {
	p := ReplicationPoint{MiB: mib, Rate: rate}
	j, err := e.StartJob(ctx, fmt.Sprintf("b9-%dm", mib), []string{"h1", "h2"}, Workload{MiB: mib, Ring: true, ReadRate: "4M", Busy: true})
	if err != nil {
		p.Err = err.Error()
		return p
	}
	defer j.Stop(context.WithoutCancel(ctx))
	rateOver := func(d time.Duration) (float64, error) {
		a, err := j.memCounters()
		if err != nil {
			return 0, err
		}
		start := time.Now()
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(d):
		}
		b, err := j.memCounters()
		if err != nil {
			return 0, err
		}
		var n uint64
		for i := range a {
			n += b[i] - a[i]
		}
		return float64(n) / time.Since(start).Seconds(), nil
	}
	if p.Before, err = rateOver(b9Window); err != nil {
		p.Err = err.Error()
		return p
	}
	_, after := e.Coord.History(coordinator.EventFilter{Job: j.ID})
	done := make(chan coordinator.Event, 1)
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_ = e.Coord.Follow(fctx, after, coordinator.EventFilter{Job: j.ID}, func(ev coordinator.Event) error {
			if ev.Type == coordinator.EventReplicated || ev.Type == coordinator.EventReplicationFailed {
				done <- ev
				return context.Canceled
			}
			return nil
		})
	}()
	s, _, err := j.Checkpoint(ctx, false)
	if err != nil {
		p.Err = err.Error()
		return p
	}
	committed := time.Now()
	p.Checkpoint = s.Wall
	// The rate while the copies run: over the window, or until they end.
	a, err := j.memCounters()
	if err != nil {
		p.Err = err.Error()
		return p
	}
	var ev coordinator.Event
	select {
	case ev = <-done:
	case <-time.After(10 * time.Minute):
		p.Err = "no replicated event within 10 minutes"
		return p
	}
	p.Replication = time.Since(committed)
	b, err := j.memCounters()
	if err != nil {
		p.Err = err.Error()
		return p
	}
	var n uint64
	for i := range a {
		n += b[i] - a[i]
	}
	p.During = float64(n) / p.Replication.Seconds()
	if ev.Type != coordinator.EventReplicated {
		p.Err = "replication failed: " + ev.Error
		return p
	}
	p.Bytes = ev.Bytes
	if p.After, err = rateOver(b9Window); err != nil {
		p.Err = err.Error()
		return p
	}
	if p.Before > 0 {
		p.DuringOverBefore = p.During / p.Before
	}
	logf("B9 %d MiB: progress %.0f/s before, %.0f/s during replication (%.2fx; %v, %d MiB at %d MiB/s per copy), %.0f/s after",
		mib, p.Before, p.During, p.DuringOverBefore, p.Replication.Round(time.Millisecond), p.Bytes>>20, rate>>20, p.After)
	return p
}
