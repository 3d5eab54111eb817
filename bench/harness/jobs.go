package harness

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/netquiesce"
	"github.com/torpor-hpc/torpor/shim/cgroup"
)

// Job is a benchmark job run by the coordinator: n job-nodes running a Workload.
type Job struct {
	e     *Env
	ID    string
	Spec  coordinator.JobSpec
	Files []nodeFiles
	W     Workload
}

// StartJob starts job id with one job-node per entry of hosts and waits
// until its workload runs.
func (e *Env) StartJob(ctx context.Context, id string, hosts []string, w Workload) (*Job, error) {
	j := &Job{e: e, ID: id, Spec: coordinator.JobSpec{ID: id}, W: w}
	for i, h := range hosts {
		n, f, err := jobNode(e.Dir, id, i, len(hosts), h, w, e.Bins)
		if err != nil {
			return nil, err
		}
		j.Spec.Nodes = append(j.Spec.Nodes, n)
		j.Files = append(j.Files, f)
	}
	return e.startJob(ctx, j)
}

// startJob starts j, whose Spec and Files are set, and waits until every
// job-node's status file says its workload runs.
func (e *Env) startJob(ctx context.Context, j *Job) (*Job, error) {
	id := j.ID
	if err := e.Coord.Start(ctx, j.Spec); err != nil {
		return nil, fmt.Errorf("start job %s: %w", id, err)
	}
	if err := waitReady(ctx, j.Files, 60*time.Second); err != nil {
		j.Stop(ctx)
		return nil, fmt.Errorf("job %s: %w", id, err)
	}
	return j, nil
}

// Stop suspends the job (its processes end) if it still runs, best effort.
func (j *Job) Stop(ctx context.Context) {
	if jj, err := j.e.Coord.Job(j.ID); err == nil && jj.State == coordinator.StateRunning {
		if _, err := j.e.Coord.Checkpoint(ctx, j.ID, coordinator.CheckpointOptions{Stop: true}); err == nil {
			return
		}
	}
	// Whatever state it is in: destroy its job-nodes directly.
	for _, n := range j.Spec.Nodes {
		if a, ok := j.e.Agents[n.Host]; ok {
			_ = a.Destroy(context.WithoutCancel(ctx), agentapi.NodeRef{Job: j.ID, Node: n.Name})
		}
	}
}

// CkptSample is one coordinated checkpoint.
type CkptSample struct {
	Wall    time.Duration            `json:"wall_ns"`
	Phases  map[string]time.Duration `json:"phases_ns"`
	CRIU    map[string]time.Duration `json:"criu_ns"` // per job-node, inside CRIU
	Bytes   map[string]int64         `json:"bytes"`   // per job-node image bytes
	CRIUSum time.Duration            `json:"criu_sum_ns"`
	CRIUMax time.Duration            `json:"criu_max_ns"`
	// Frozen: from the first freeze to the end of the last thaw (a
	// leave-running checkpoint).
	Frozen time.Duration `json:"frozen_ns,omitempty"`
	Total  int64         `json:"total_bytes"`
}

// ckptPhases names the phases of a checkpoint, in order. "open" is the
// coordinator's own work before its first call to a shim (the job marked
// busy in its registry, the checkpoint begun in the catalog); "commit" is
// the time between the last dump and the first unlock (catalog commit,
// prune); "resume" is unlock then thaw; "close" is from the end of the last
// call to a shim until Checkpoint returned (the registry written again).
var ckptPhases = []string{"open", "prepare", "freeze", "drain", "lock", "dump", "commit", "resume", "close"}

// Checkpoint takes one leave-running (or, with stop, suspending) checkpoint.
func (j *Job) Checkpoint(ctx context.Context, stop bool) (CkptSample, string, error) {
	j.e.settle()
	mark := j.e.Rec.Mark()
	start := time.Now()
	h, err := j.e.Coord.Checkpoint(ctx, j.ID, coordinator.CheckpointOptions{Stop: stop})
	wall := time.Since(start)
	if err != nil {
		return CkptSample{}, "", err
	}
	return sampleOf(j.e.Rec.Since(mark), start, wall, stop), h, nil
}

// sampleOf is one checkpoint's sample from the shim calls recorded while it
// ran: its phases, the time inside CRIU and the bytes of every job-node.
func sampleOf(calls []call, start time.Time, wall time.Duration, stop bool) CkptSample {
	s := CkptSample{Wall: wall, Phases: map[string]time.Duration{}, CRIU: map[string]time.Duration{}, Bytes: map[string]int64{}}
	for _, p := range []string{"prepare", "freeze", "drain", "lock", "dump"} {
		s.Phases[p] = spanDur(calls, p)
	}
	if stop {
		s.Phases["commit"] = gap(calls, "dump", "destroy")
		s.Phases["destroy"] = spanDur(calls, "destroy")
	} else {
		s.Phases["commit"] = gap(calls, "dump", "unlock")
		s.Phases["resume"] = spanDur(calls, "unlock") + gap(calls, "unlock", "thaw") + spanDur(calls, "thaw")
		s.Frozen = frozenFor(calls)
	}
	if len(calls) > 0 {
		first, last := calls[0].Start, calls[0].End
		for _, c := range calls {
			if c.Start.Before(first) {
				first = c.Start
			}
			if c.End.After(last) {
				last = c.End
			}
		}
		s.Phases["open"], s.Phases["close"] = first.Sub(start), start.Add(wall).Sub(last)
	}
	for n, d := range dumps(calls) {
		s.CRIU[n], s.Bytes[n] = d.CRIUTime, d.Bytes
		s.CRIUSum += d.CRIUTime
		s.CRIUMax = max(s.CRIUMax, d.CRIUTime)
		s.Total += d.Bytes
	}
	return s
}

// RestartSample is one coordinated restart.
type RestartSample struct {
	Wall     time.Duration            `json:"wall_ns"`
	Phases   map[string]time.Duration `json:"phases_ns"` // verify, restore, unlock, thaw
	Progress Progress                 `json:"progress"`  // from the end of the unlock
	// AfterThaw is from the end of the last thaw until Restart returned
	// (the coordinator's state written): the job runs meanwhile.
	AfterThaw time.Duration `json:"after_thaw_ns"`
}

// nodeCgroup is where the agent puts a job-node's cgroup.
func (j *Job) nodeCgroup(mount string, n agentapi.NodeSpec) string {
	return filepath.Join(mount, j.e.CgParent, n.Host, j.ID, n.Name)
}

// probe reads every job-node's TCP segment counter.
func (j *Job) probe(mount string, spec coordinator.JobSpec) segProbe {
	return func() ([]uint64, error) {
		out := make([]uint64, len(spec.Nodes))
		for i, n := range spec.Nodes {
			pid, err := cgroupPid(j.nodeCgroup(mount, n))
			if err != nil {
				return nil, err
			}
			if out[i], err = netquiesce.TCPInSegs(pid); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
}

// memCounters reads every memhog counter.
func (j *Job) memCounters() ([]uint64, error) {
	c, err := readAll(j.Files)
	return c.mem, err
}

// watchUnlock records each job-node's segment counter just before its
// unlock, and the memhog counters at the first unlock (the whole job is
// frozen then). It returns both (in spec order) once the operation is done.
func (j *Job) watchUnlock(mount string, spec coordinator.JobSpec) func() (seg, mem []uint64) {
	var mu sync.Mutex
	var once sync.Once
	var memBase []uint64
	base := map[string]uint64{}
	j.e.Rec.BeforeUnlock(func(host string, ref agentapi.NodeRef) {
		if ref.Job != j.ID {
			return
		}
		once.Do(func() { memBase, _ = j.memCounters() })
		n, err := spec.Node(ref.Node)
		if err != nil {
			return
		}
		nn := *n
		nn.Host = host
		pid, err := cgroupPid(j.nodeCgroup(mount, nn))
		if err != nil {
			return
		}
		v, err := netquiesce.TCPInSegs(pid)
		if err != nil {
			return
		}
		mu.Lock()
		base[ref.Node] = v
		mu.Unlock()
	})
	return func() ([]uint64, []uint64) {
		j.e.Rec.BeforeUnlock(nil)
		mu.Lock()
		defer mu.Unlock()
		out := make([]uint64, len(spec.Nodes))
		for i, n := range spec.Nodes {
			out[i] = base[n.Name]
		}
		if memBase == nil {
			memBase = make([]uint64, len(spec.Nodes))
		}
		return out, memBase
	}
}

// SuspendRestart suspends the job and restarts it from that checkpoint on
// the same hosts, and measures how soon it makes progress after the unlock.
func (j *Job) SuspendRestart(ctx context.Context) (CkptSample, RestartSample, error) {
	cs, h, err := j.Checkpoint(ctx, true)
	if err != nil {
		return cs, RestartSample{}, fmt.Errorf("suspend: %w", err)
	}
	mount, err := cgroup.Mountpoint()
	if err != nil {
		return cs, RestartSample{}, err
	}
	j.e.settle()
	w, err := j.watched(ctx, mount, j.Spec, j.Spec, func() error {
		_, err := j.e.Coord.Restart(ctx, h, coordinator.RestartOptions{})
		return err
	})
	if err != nil {
		return cs, RestartSample{}, fmt.Errorf("restart: %w", err)
	}
	rs := RestartSample{Wall: w.wall, Phases: map[string]time.Duration{}, Progress: w.progress}
	first, _, _ := span(w.calls, "restore")
	rs.Phases["verify"] = first.Sub(w.start)
	rs.Phases["restore"] = spanDur(w.calls, "restore")
	rs.Phases["unlock"] = spanDur(w.calls, "unlock")
	rs.Phases["thaw"] = spanDur(w.calls, "thaw")
	if _, thawed, ok := span(w.calls, "thaw"); ok {
		rs.AfterThaw = w.start.Add(w.wall).Sub(thawed)
	}
	return cs, rs, w.progressErr
}

// watchedOp is an operation that unlocks and thaws a job, and the job's
// progress after it.
type watchedOp struct {
	start       time.Time
	wall        time.Duration // the whole operation
	calls       []call        // the agent calls it made
	progress    Progress      // from the end of the last unlock
	progressErr error
}

// watched runs op, which unlocks and thaws every job-node of the job whose
// spec is before (after: where its job-nodes are once op is done), and
// measures the job's progress from the end of the last unlock. The counters
// are watched from the moment every job-node has thawed, while op still
// does what comes after (the coordinator's state, a post-copy's pages): the
// job runs from the thaw, whenever the call returns. op's error is
// returned; the progress' error is in the result.
func (j *Job) watched(ctx context.Context, mount string, before, after coordinator.JobSpec, op func() error) (watchedOp, error) {
	bases := j.watchUnlock(mount, before)
	resumed := j.e.Rec.AfterThaws(j.ID, len(before.Nodes))
	defer j.e.Rec.AfterThaws("", 0)
	mark := j.e.Rec.Mark()
	w := watchedOp{start: time.Now()}
	ended := make(chan error, 1)
	go func() { ended <- op() }()
	select {
	case <-resumed:
	case err := <-ended:
		if err != nil {
			bases()
			return w, err
		}
		ended <- nil
	}
	segBase, memBase := bases()
	var probe segProbe
	if j.W.Ring {
		probe = j.probe(mount, after)
	} else {
		segBase = nil
	}
	_, unlocked, _ := span(j.e.Rec.Since(mark), "unlock")
	progDone := make(chan struct{})
	go func() {
		defer close(progDone)
		// Memhog counters of job-nodes that stayed frozen in memory move too.
		w.progress, w.progressErr = waitProgress(ctx, j.Files, memBase, probe, segBase, unlocked, 30*time.Second)
	}()
	err := <-ended
	w.wall = time.Since(w.start)
	<-progDone
	w.calls = j.e.Rec.Since(mark)
	return w, err
}

// MigrateSample is one migration of one job-node.
type MigrateSample struct {
	Mode string `json:"mode"` // coordinator.ModeStopCopy or ModePostCopy, as it ran
	// Downtime is the coordinator's: the job frozen, from the first freeze
	// to the end of the thaw.
	Downtime time.Duration `json:"downtime_ns"`
	// LastPage is, for post-copy, the time from the first freeze until the
	// destination had every page.
	LastPage time.Duration `json:"last_page_ns,omitempty"`
	// Wall is the whole Migrate call (post-copy: until the last page and
	// the source's copy destroyed).
	Wall     time.Duration            `json:"wall_ns"`
	Phases   map[string]time.Duration `json:"phases_ns"`
	Bytes    int64                    `json:"bytes"`
	Memory   int64                    `json:"memory_bytes"`
	Progress Progress                 `json:"progress"`
	// Streamed: the images went from shim to shim (B8).
	Streamed bool `json:"streamed,omitempty"`
}

// Migrate moves job-node node to host to, with stop-and-copy or post-copy
// forced by mode. The job's progress after the thaw is watched while a
// post-copy migration still moves pages.
func (j *Job) Migrate(ctx context.Context, node, to string, mode coordinator.PostCopy) (MigrateSample, error) {
	mount, err := cgroup.Mountpoint()
	if err != nil {
		return MigrateSample{}, err
	}
	jj, err := j.e.Coord.Job(j.ID)
	if err != nil {
		return MigrateSample{}, err
	}
	spec := jj.Spec
	// The moved job-node lives on `to` once it is thawed (if the migration
	// fails, the progress is not looked at).
	moved := spec
	moved.Nodes = append([]agentapi.NodeSpec(nil), spec.Nodes...)
	for i := range moved.Nodes {
		if moved.Nodes[i].Name == node {
			moved.Nodes[i].Host = to
		}
	}
	var res coordinator.MigrateResult
	j.e.settle()
	w, err := j.watched(ctx, mount, spec, moved, func() error {
		var err error
		res, err = j.e.Coord.MigrateDetails(ctx, j.ID, node, to, coordinator.MigrateOptions{PostCopy: mode})
		return err
	})
	if err != nil {
		return MigrateSample{}, err
	}
	ms := MigrateSample{Mode: res.Mode, Downtime: res.Downtime, LastPage: res.LastPage, Wall: w.wall,
		Memory: res.Memory, Phases: map[string]time.Duration{}, Progress: w.progress, Streamed: res.Streamed}
	for _, p := range []string{"prepare", "freeze", "drain", "lock", "dump", "restore", "destroy", "unlock", "thaw", "pages"} {
		ms.Phases[p] = spanDur(w.calls, p)
	}
	for _, d := range dumps(w.calls) {
		ms.Bytes += d.Bytes
		// CRIU's share of the dump phase (a post-copy's: until its images
		// were written and it served the pages).
		ms.Phases["criu_dump"] += d.CRIUTime
	}
	j.Spec = moved
	return ms, w.progressErr
}

// sortedKeys lists a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
