package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
)

// Phase names one step of the protocol.
type Phase string

const (
	PhasePrepare Phase = "prepare"
	PhaseFreeze  Phase = "freeze"
	PhaseDrain   Phase = "drain"
	PhaseLock    Phase = "lock"
	PhaseDump    Phase = "dump"
	PhaseCommit  Phase = "commit"
	PhaseUnlock  Phase = "unlock"
	PhaseThaw    Phase = "thaw"
	PhaseDestroy Phase = "destroy"
	PhaseVerify  Phase = "verify"
	PhaseFiles   Phase = "files" // the application's files put back, before any restore
	PhaseRestore Phase = "restore"
	PhaseStart   Phase = "start"
	// PhaseSync: after a commit, until every job-node's images are on disk
	// (Agent.Sync); older checkpoints are pruned only then.
	PhaseSync Phase = "sync"
)

// Deadlines bounds every phase. A phase that is not listed gets DefaultDeadlines' value.
type Deadlines map[Phase]time.Duration

// DefaultDeadlines are generous enough for GiB-sized job-nodes on a local disk.
var DefaultDeadlines = Deadlines{
	PhasePrepare: 10 * time.Second,
	PhaseFreeze:  10 * time.Second,
	PhaseDrain:   10 * time.Second,
	PhaseLock:    5 * time.Second,
	PhaseDump:    5 * time.Minute,
	PhaseCommit:  2 * time.Minute,
	PhaseUnlock:  10 * time.Second,
	PhaseThaw:    10 * time.Second,
	PhaseDestroy: 30 * time.Second,
	PhaseVerify:  5 * time.Minute,
	PhaseFiles:   5 * time.Minute,
	PhaseRestore: 5 * time.Minute,
	PhaseStart:   30 * time.Second,
	PhaseFetch:   10 * time.Minute,
	// The writeback of a checkpoint's images: a disk's write rate at worst.
	PhaseSync: 10 * time.Minute,
	// Until a post-copy destination has every page: minutes per GiB at
	// worst over a slow link.
	PhasePages: 30 * time.Minute,
}

func (d Deadlines) of(p Phase) time.Duration {
	if v, ok := d[p]; ok && v > 0 {
		return v
	}
	return DefaultDeadlines[p]
}

// NodeError is the failure of one job-node in one phase.
type NodeError struct {
	Node string
	Host string
	Err  error
}

func (e NodeError) Error() string { return fmt.Sprintf("%s on %s: %v", e.Node, e.Host, e.Err) }
func (e NodeError) Unwrap() error { return e.Err }

// PhaseError is the failure of a phase on one or more job-nodes.
type PhaseError struct {
	Phase Phase
	Nodes []NodeError
}

func (e *PhaseError) Error() string {
	parts := make([]string, len(e.Nodes))
	for i, n := range e.Nodes {
		parts[i] = n.Error()
	}
	return fmt.Sprintf("%s failed: %s", e.Phase, strings.Join(parts, "; "))
}

// Unwrap lets errors.Is find the causes, e.g. context.DeadlineExceeded.
func (e *PhaseError) Unwrap() []error {
	errs := make([]error, len(e.Nodes))
	for i, n := range e.Nodes {
		errs[i] = n
	}
	return errs
}

// fanout runs fn for every job-node in parallel under the phase's deadline
// and waits for all of them: a barrier. It returns a *PhaseError naming every
// job-node that failed, or nil.
func (c *Coordinator) fanout(ctx context.Context, phase Phase, nodes []agentapi.NodeSpec, fn func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.deadlines.of(phase))
	defer cancel()
	var (
		mu   sync.Mutex
		errs []NodeError
		wg   sync.WaitGroup
	)
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.callNode(ctx, n, fn)
			if err != nil {
				mu.Lock()
				errs = append(errs, NodeError{Node: n.Name, Host: n.Host, Err: err})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) == 0 {
		return nil
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Node < errs[j].Node })
	return &PhaseError{Phase: phase, Nodes: errs}
}

// callNode runs fn against the agent of n's host, and gives up when the
// context ends even if the agent does not return (a hung shim must not hang
// the protocol: the phase fails and the operation rolls back).
func (c *Coordinator) callNode(ctx context.Context, n agentapi.NodeSpec, fn func(ctx context.Context, a agentapi.Agent, n agentapi.NodeSpec) error) error {
	a, err := c.agent(n.Host)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- fn(ctx, a, n) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer from shim %s: %w", n.Host, ctx.Err())
	}
}

// timings records how long each phase of one operation took, when the
// first began and the last ended, and tells progress (if set) as each phase
// begins and ends.
type timings struct {
	order []Phase
	d     map[Phase]time.Duration
	first map[Phase]time.Time // when the phase first began
	last  map[Phase]time.Time // when it last ended
	// bytes are what a phase moved, when the operation knows it (dump:
	// images written; verify, restore: images read).
	bytes map[Phase]int64
	// progress, if set, hears every phase's begin (done false) and end.
	progress func(p Phase, done bool, elapsed time.Duration, bytes int64)
}

func (t *timings) run(phase Phase, fn func() error) error {
	start := time.Now()
	if t.d == nil {
		t.d, t.first, t.last, t.bytes = map[Phase]time.Duration{}, map[Phase]time.Time{}, map[Phase]time.Time{}, map[Phase]int64{}
	}
	if _, ok := t.first[phase]; !ok {
		t.first[phase] = start
	}
	if t.progress != nil {
		t.progress(phase, false, 0, 0)
	}
	err := fn()
	t.order = append(t.order, phase)
	t.d[phase] += time.Since(start)
	t.last[phase] = time.Now()
	if t.progress != nil {
		t.progress(phase, true, time.Since(start), t.bytes[phase])
	}
	return err
}

// setBytes records what a phase moved; call it inside the phase's run.
func (t *timings) setBytes(p Phase, n int64) {
	if t.bytes == nil {
		t.bytes = map[Phase]int64{}
	}
	t.bytes[p] = n
}

// lastPhase is the phase that ran last: where a failed operation failed.
func (t *timings) lastPhase() Phase {
	if len(t.order) == 0 {
		return ""
	}
	return t.order[len(t.order)-1]
}

// frozen is how long the job was frozen: from the first freeze to the end
// of until (0 if either did not run).
func (t *timings) frozen(until Phase) time.Duration {
	f, ok1 := t.first[PhaseFreeze]
	e, ok2 := t.last[until]
	if !ok1 || !ok2 {
		return 0
	}
	return e.Sub(f)
}

func (t *timings) String() string {
	parts := make([]string, 0, len(t.order))
	for _, p := range t.order {
		parts = append(parts, fmt.Sprintf("%s=%s", p, t.d[p].Round(time.Millisecond)))
	}
	return strings.Join(parts, " ")
}

// isTimeout reports whether err comes from a phase deadline.
func isTimeout(err error) bool { return errors.Is(err, context.DeadlineExceeded) }
