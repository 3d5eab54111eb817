package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/internal/atomicfile"
	"github.com/torpor-hpc/torpor/metrics"
)

// Options configure a Coordinator.
type Options struct {
	// StateDir holds jobs.json, the coordinator's persisted registry.
	StateDir string
	Store    Store
	Agents   map[string]agentapi.Agent // host name -> its shim
	Log      *slog.Logger
	// Deadlines override DefaultDeadlines per phase.
	Deadlines Deadlines
	// Keep is how many committed checkpoints per job are retained (0: all).
	Keep int
	// PostCopyThreshold is the private memory (bytes) of a job-node from
	// which an automatic migration (--postcopy=auto) is post-copy: 0 means
	// DefaultPostCopyThreshold, a negative value never.
	PostCopyThreshold int64
	// Now is time.Now unless a test replaces it.
	Now func() time.Time
	// NodeNet is the range job-node addresses are assigned from, and
	// NodeBits the prefix length they carry; DefaultNodeNet and
	// DefaultNodeBits when zero.
	NodeNet  netip.Prefix
	NodeBits int
	// Faults injects failures at named points (fault-injection tests only).
	Faults Faults
	// LookupCreds finds the credentials of a job's owner; LookupCreds (the
	// host's user and group database) when nil.
	LookupCreds func(uid int) (*agentapi.Creds, error)
	// LocalCheckpoints keeps every checkpoint's images on the hosts that
	// dumped them, in their shims' checkpoint stores, with Replicas copies
	// on other hosts (DefaultReplicas when 0, none when negative), made at
	// most ReplicaRate bytes/s each (DefaultReplicaRate when 0). See
	// hostlocal.go.
	LocalCheckpoints bool
	Replicas         int
	ReplicaRate      int64
	// HostLostAfter is how long a shim that registered may stay silent
	// (its shim registers every few seconds) and unreachable before its
	// host counts as lost: its job-nodes are gone, and no restart is
	// placed there. DefaultHostLostAfter when 0.
	HostLostAfter time.Duration
	// RecoverCatalog brings back, from each shim as it registers, the
	// host-local checkpoints the catalog lacks (their job manifests, kept
	// with the images and signed with this coordinator's key): for a
	// coordinator whose checkpoint directory was lost or that moved.
	RecoverCatalog bool
}

// Faults are hooks called at named points of the protocol. A hook that
// returns an error makes the operation fail there; a hook may also end the
// process, to simulate a crash.
type Faults struct {
	// BeforeCommit runs after every job-node was dumped, before the job manifest is written.
	BeforeCommit func(job string) error
	// AfterRestore runs when a migration's new copy was restored, before
	// the point of no return; an error rolls the migration back.
	AfterRestore func(job, node string) error
	// PastNoReturn runs when a migration saved the job-node's new place and
	// its old copy as leaving, before the job is unlocked and thawed.
	PastNoReturn func(job, node string)
}

// Coordinator owns jobs and runs the protocol. It is safe for concurrent use;
// one operation runs on a job at a time (a second one is refused with
// agentapi.ErrState while the first runs), operations on different jobs run in
// parallel.
type Coordinator struct {
	// background counts the work started after an operation returned:
	// replicas, drops of pruned images, catalog recoveries (WaitBackground).
	// StopBackground cancels bgCtx, which that work's contexts follow.
	background sync.WaitGroup
	bgCtx      context.Context
	bgStop     context.CancelFunc
	stateDir   string
	store      Store
	log        *slog.Logger
	deadlines  Deadlines
	keep       int
	now        func() time.Time
	// postCopyThreshold: see Options.PostCopyThreshold; 0 is off here.
	postCopyThreshold int64
	nodeNet           netip.Prefix
	nodeBits          int
	faults            Faults
	lookup            func(uid int) (*agentapi.Creds, error)
	localCkpts        bool
	recoverCatalog    bool
	hostLostAfter     time.Duration
	replicas          int
	replicaRate       int64

	mu     sync.Mutex
	agents map[string]agentapi.Agent
	seen   map[string]time.Time // host -> its shim's last registration
	jobs   map[string]*Job
	busy   map[string]bool // job id -> an operation runs
	// straying: hosts whose stray copies are being destroyed (DestroyStrays).
	straying map[string]bool
	exits    exitWatches

	fences fences

	events    *eventLog
	lastState map[string]State // job -> its state when last recorded (events)
	metrics   *metrics.Coordinator
}

// New creates a coordinator and loads the jobs it persisted earlier.
func New(opts Options) (*Coordinator, error) {
	if opts.Store == nil {
		return nil, fmt.Errorf("%w: coordinator needs a checkpoint store", agentapi.ErrInvalid)
	}
	c := &Coordinator{
		stateDir:       opts.StateDir,
		store:          opts.Store,
		log:            opts.Log,
		deadlines:      opts.Deadlines,
		keep:           opts.Keep,
		now:            opts.Now,
		nodeNet:        opts.NodeNet,
		nodeBits:       opts.NodeBits,
		faults:         opts.Faults,
		lookup:         opts.LookupCreds,
		localCkpts:     opts.LocalCheckpoints,
		recoverCatalog: opts.RecoverCatalog,
		replicas:       opts.Replicas,
		replicaRate:    opts.ReplicaRate,
		agents:         map[string]agentapi.Agent{},
		seen:           map[string]time.Time{},
		jobs:           map[string]*Job{},
		straying:       map[string]bool{},
		busy:           map[string]bool{},
		exits: exitWatches{running: map[string]bool{}, live: map[string]bool{}, retry: map[string]time.Time{},
			kick: make(chan struct{}, 1)},
	}
	c.bgCtx, c.bgStop = context.WithCancel(context.Background())
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	switch {
	case opts.PostCopyThreshold == 0:
		c.postCopyThreshold = DefaultPostCopyThreshold
	case opts.PostCopyThreshold > 0:
		c.postCopyThreshold = opts.PostCopyThreshold
	}
	switch {
	case c.replicas == 0:
		c.replicas = DefaultReplicas
	case c.replicas < 0:
		c.replicas = 0
	}
	if c.hostLostAfter = opts.HostLostAfter; c.hostLostAfter <= 0 {
		c.hostLostAfter = DefaultHostLostAfter
	}
	if c.replicaRate <= 0 {
		c.replicaRate = DefaultReplicaRate
	}
	if !c.nodeNet.IsValid() {
		c.nodeNet, c.nodeBits = DefaultNodeNet, DefaultNodeBits
	}
	if c.nodeBits == 0 {
		c.nodeBits = c.nodeNet.Bits()
	}
	for h, a := range opts.Agents {
		c.agents[h] = a
	}
	if err := c.load(); err != nil {
		return nil, err
	}
	ev, err := newEventLog(c.stateDir)
	if err != nil {
		return nil, err
	}
	ev.saveFailed = func(err error) { c.log.Error("persist event history", "err", err) }
	c.events = ev
	c.lastState = map[string]State{}
	for id, j := range c.jobs {
		c.lastState[id] = j.State
	}
	return c, nil
}

// AddAgent registers (or replaces, after a shim restarted) the shim of a host.
func (c *Coordinator) AddAgent(host string, a agentapi.Agent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.agents[host] = a
}

// DefaultHostLostAfter is Options.HostLostAfter's default: twelve missed
// registrations.
const DefaultHostLostAfter = time.Minute

// Seen records that host's shim registered now.
func (c *Coordinator) Seen(host string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[host] = c.now()
}

// lost says, with why, whether host's shim registered once and then not
// for c.hostLostAfter: the host is down or cut off. A shim that never
// registers (the embedded coordinator's) is never lost.
func (c *Coordinator) lost(host string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.seen[host]
	if !ok {
		return "", false
	}
	if quiet := c.now().Sub(t); quiet >= c.hostLostAfter {
		return fmt.Sprintf("the shim of %s has not registered for %v: the host is down or cut off", host, quiet.Round(time.Second)), true
	}
	return "", false
}

// Hosts lists the hosts with a registered shim.
func (c *Coordinator) Hosts() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	hosts := make([]string, 0, len(c.agents))
	for h := range c.agents {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	return hosts
}

func (c *Coordinator) agent(host string) (agentapi.Agent, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.agents[host]
	if !ok {
		return nil, fmt.Errorf("%w: no shim registered for host %q", agentapi.ErrNotFound, host)
	}
	return a, nil
}

// Job returns a copy of a job's record.
func (c *Coordinator) Job(id string) (Job, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	j, ok := c.jobs[id]
	if !ok {
		return Job{}, fmt.Errorf("%w: no job %q", agentapi.ErrNotFound, id)
	}
	return *j, nil
}

// Jobs returns copies of every job, oldest first.
func (c *Coordinator) Jobs() []Job {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Job, 0, len(c.jobs))
	for _, j := range c.jobs {
		out = append(out, *j)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Created.Before(out[k].Created) })
	return out
}

// CheckpointDir is where the store keeps checkpoints ("" if it is not a
// directory).
func (c *Coordinator) CheckpointDir() string {
	if cs, ok := c.store.(CatalogStore); ok && cs.S != nil {
		return filepath.Clean(cs.S.Root())
	}
	return ""
}

// Authorize checks that uid may act on a job: root or the job's owner.
func (c *Coordinator) Authorize(id string, uid int) error {
	j, err := c.Job(id)
	if err != nil {
		return err
	}
	if uid != 0 && uid != j.Spec.Owner {
		return fmt.Errorf("%w: job %s belongs to uid %d", agentapi.ErrPermission, id, j.Spec.Owner)
	}
	return nil
}

// begin marks a job busy and moves it to state; end must follow.
func (c *Coordinator) begin(id string, from []State, to State) (JobSpec, State, error) {
	return c.beginSet(id, from, to, nil)
}

// beginSet is begin that also applies set (if not nil) to the job as it
// moves: whoever sees the new state sees what set wrote.
func (c *Coordinator) beginSet(id string, from []State, to State, set func(*Job)) (JobSpec, State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	j, ok := c.jobs[id]
	if !ok {
		return JobSpec{}, "", fmt.Errorf("%w: no job %q", agentapi.ErrNotFound, id)
	}
	if c.busy[id] {
		return JobSpec{}, "", fmt.Errorf("%w: job %s is busy (%s); wait for the running operation to finish", agentapi.ErrBusy, id, j.State)
	}
	allowed := false
	for _, s := range from {
		allowed = allowed || j.State == s
	}
	if !allowed {
		return JobSpec{}, "", fmt.Errorf("%w: job %s is %s", agentapi.ErrState, id, j.State)
	}
	prev, before := j.State, *j
	if err := j.move(to, c.now()); err != nil {
		return JobSpec{}, "", err
	}
	if set != nil {
		set(j)
	}
	c.busy[id] = true
	spec := j.Spec
	spec.Nodes = append([]agentapi.NodeSpec(nil), j.Spec.Nodes...)
	if err := c.saveLocked(); err != nil {
		*j = before
		delete(c.busy, id)
		return JobSpec{}, "", err
	}
	return spec, prev, nil
}

// end records the outcome of an operation and releases the job.
func (c *Coordinator) end(id string, to State, update func(j *Job)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	j := c.jobs[id]
	delete(c.busy, id)
	if j.State != to {
		if err := j.move(to, c.now()); err != nil {
			// A bug, not an operational failure: say so loudly and force it.
			c.log.Error("illegal job transition", "job", id, "err", err)
			j.State = to
		}
	}
	if update != nil {
		update(j)
	}
	if !j.State.Transient() {
		// The operation is over: a migration's restored copy became the
		// job-node's place (leave) or was destroyed by its rollback.
		j.Arriving = nil
	}
	if err := c.saveLocked(); err != nil {
		c.log.Error("persist job registry", "job", id, "err", err)
	}
	if j.State == StateRunning {
		// A job-node that exited during the operation was told of while
		// the job was busy, and not polled then.
		c.kickPoll()
	}
}

// leave records, and saves, that a job-node of job id moved past its
// migration's point of no return: spec places it on its new host, old is
// the copy it left there, frozen and locked, to be destroyed (Job.Leaving).
// The job stays busy and in its state. A registry that cannot be written is
// logged, as by end: the move goes on, but a coordinator dying before end
// would find the job as it was.
func (c *Coordinator) leave(id string, spec JobSpec, old agentapi.NodeSpec) {
	c.mu.Lock()
	defer c.mu.Unlock()
	j := c.jobs[id]
	j.Spec = spec
	j.Spec.Nodes = slices.Clone(spec.Nodes)
	j.Leaving = &old
	j.Arriving = nil
	if err := c.saveLocked(); err != nil {
		c.log.Error("persist job registry", "job", id, "err", err)
	}
}

const jobsFile = "jobs.json"

func (c *Coordinator) saveLocked() error {
	c.noteStatesLocked()
	if c.stateDir == "" {
		return nil
	}
	data, err := json.MarshalIndent(c.jobs, "", "  ")
	if err != nil {
		return fmt.Errorf("encode job registry: %w", err)
	}
	return atomicfile.Write(filepath.Join(c.stateDir, jobsFile), data, 0o600)
}

func (c *Coordinator) load() error {
	if c.stateDir == "" {
		return nil
	}
	if err := os.MkdirAll(c.stateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	data, err := os.ReadFile(filepath.Join(c.stateDir, jobsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read job registry: %w", err)
	}
	if err := json.Unmarshal(data, &c.jobs); err != nil {
		return fmt.Errorf("parse job registry %s: %w (move it away to start with an empty registry)", filepath.Join(c.stateDir, jobsFile), err)
	}
	return nil
}

// Watch polls running jobs until ctx ends, so that a job whose job-nodes
// exit becomes finished or failed: at once when a shim tells of an exit
// (watchExits), every interval the jobs of shims that do not, and every
// fullPollEvery intervals the others.
func (c *Coordinator) Watch(ctx context.Context, interval time.Duration) {
	var watches sync.WaitGroup
	defer watches.Wait()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for n := 1; ; {
		c.watchExits(ctx, &watches)
		select {
		case <-ctx.Done():
			return
		case <-c.exits.kick:
			c.poll(ctx, true)
		case <-tick.C:
			c.settle(ctx)
			c.poll(ctx, n%fullPollEvery == 0)
			n++
		}
	}
}

// Recover runs once when a coordinator starts: it deletes checkpoints whose
// commit never finished, settles the jobs an earlier coordinator left in the
// middle of an operation (see settle), and fails running jobs whose job-nodes
// their shims no longer have (see pollOnce).
func (c *Coordinator) Recover(ctx context.Context) error {
	gone, err := c.store.Recover()
	if err != nil {
		return fmt.Errorf("recover checkpoint store: %w", err)
	}
	for _, h := range gone {
		c.log.Warn("discarded a checkpoint whose commit never finished", "ckpt", h)
	}
	c.settle(ctx)
	// A job recorded running whose job-nodes are gone fails now, not at the
	// first poll: a restart may follow at once. Shims that have not
	// registered yet are asked when they do.
	c.pollOnce(ctx)
	return nil
}

// settleTimeout is how long an interrupted job waits for its shims to
// answer again before it is declared failed.
const settleTimeout = 2 * time.Minute

// settle finishes jobs left in a transient state without an operation
// running: by a coordinator crash, or by an operation whose rollback could not
// reach a shim (it died or was cut off; see awaitShims). Once every shim of
// the job answers, the job is unlocked and thawed everywhere; if every
// job-node still runs (after a checkpoint or a migration) it is running
// again, otherwise its job-nodes are destroyed and it is failed, restartable
// from its last checkpoint. A job whose shims do not answer within
// settleTimeout is failed. A migration's other copy (Job.Leaving, or
// Job.Arriving short of the point of no return) is destroyed first, its
// host waited for as long; past settleTimeout the job goes on without it.
func (c *Coordinator) settle(ctx context.Context) {
	for _, j := range c.Jobs() {
		if !j.State.Transient() {
			continue
		}
		c.mu.Lock()
		busy := c.busy[j.Spec.ID]
		missing, away := "", ""
		for _, n := range j.Spec.Nodes {
			if _, ok := c.agents[n.Host]; !ok {
				missing = n.Host
			}
		}
		// The host of a migration's other copy (Leaving, Arriving) is waited
		// for as long, so that the copy is destroyed before the job thaws;
		// without it the job goes on.
		for _, n := range []*agentapi.NodeSpec{j.Leaving, j.Arriving} {
			if n == nil {
				continue
			}
			if _, ok := c.agents[n.Host]; !ok {
				away = n.Host
			}
		}
		if busy || ((missing != "" || away != "") && c.now().Sub(j.Updated) < settleTimeout) {
			c.mu.Unlock()
			continue
		}
		c.busy[j.Spec.ID] = true
		c.mu.Unlock()

		log := c.log.With("job", j.Spec.ID)
		if j.Leaving != nil {
			c.dropLeaving(ctx, j, log)
		}
		if j.Arriving != nil {
			c.dropArriving(ctx, j, log)
		}
		rbErr := fmt.Errorf("the shim of %s did not register again", missing)
		if missing == "" {
			// Not c.rollback: it logs every failure, and a shim that is
			// still down fails this every poll; the outcome is logged below.
			rbErr = c.unlockThawJob(context.WithoutCancel(ctx), j.Spec.ID, j.Spec.Nodes, &timings{})
		}
		if rbErr != nil && unreachableOnly(rbErr) && c.now().Sub(j.Updated) < settleTimeout {
			// Some shim still does not answer: try again on the next round.
			c.mu.Lock()
			delete(c.busy, j.Spec.ID)
			c.mu.Unlock()
			continue
		}
		log.Warn("settling a job whose operation was interrupted", "state", j.State, "err", rbErr)
		alive := rbErr == nil
		for _, n := range j.Spec.Nodes {
			if !alive {
				break
			}
			a, _ := c.agent(n.Host)
			st, err := a.Status(ctx, agentapi.NodeRef{Job: j.Spec.ID, Node: n.Name})
			alive = err == nil && st.Running
		}
		resumable := j.State == StateCheckpointing || j.State == StateMigrating
		if !alive || !resumable {
			c.destroyAll(ctx, j.Spec, log)
		}
		c.mu.Lock()
		jj := c.jobs[j.Spec.ID]
		jj.Leaving, jj.Arriving = nil, nil
		if alive && resumable {
			jj.State, jj.Reason = StateRunning, fmt.Sprintf("%s interrupted (by a coordinator restart or a shim that did not answer); rolled back, running again", j.State)
		} else {
			jj.State, jj.Reason = StateFailed, fmt.Sprintf("%s interrupted (by a coordinator restart or a shim that did not answer); restart the job from its last checkpoint", j.State)
			if rbErr != nil {
				jj.Reason += ": " + rbErr.Error()
			}
		}
		jj.Updated = c.now()
		delete(c.busy, j.Spec.ID)
		if err := c.saveLocked(); err != nil {
			log.Error("persist job registry", "err", err)
		}
		c.mu.Unlock()
	}
}

// dropLeaving destroys the old copy of j's job-node whose migration was
// past its point of no return when the coordinator died (Job.Leaving),
// before settle unlocks and thaws the job where j.Spec places it. A
// post-copy's new copy may still be fetching its pages from the old one: it
// is given the time it needs (Shim Pages; at once after a stop-and-copy).
// The old copy is destroyed either way; if the pages did not all arrive,
// the new copy dies with them (its shim kills it when its daemon fails)
// and the job fails, restartable from its last checkpoint: here, if the
// kill came before settle asks, else at the next poll. Never are both
// copies running.
func (c *Coordinator) dropLeaving(ctx context.Context, j Job, log *slog.Logger) {
	old := *j.Leaving
	if n, err := j.Spec.Node(old.Name); err == nil {
		if a, err := c.agent(n.Host); err == nil {
			pctx, cancel := context.WithTimeout(ctx, c.deadlines.of(PhasePages))
			err := a.Pages(pctx, agentapi.NodeRef{Job: j.Spec.ID, Node: n.Name})
			cancel()
			if err != nil {
				log.Warn("the moved job-node's pages did not all arrive", "node", n.Name, "host", n.Host, "err", err)
			}
		}
	}
	log.Info("destroying the old copy of a job-node that had moved", "node", old.Name, "host", old.Host)
	c.destroyNodes(ctx, j.Spec.ID, []agentapi.NodeSpec{old}, log)
}

// dropArriving destroys the copy of j's job-node that its migration had
// restored on the new host before the coordinator died, short of the
// point of no return (Job.Arriving): the job-node's place is still its old
// host, whose copy settle thaws next. A copy already gone (the restore had
// not begun or failed, or a rollback destroyed it) is nothing to do. A
// shim that does not answer keeps its copy, frozen and locked, until it
// registers again (DestroyStrays).
func (c *Coordinator) dropArriving(ctx context.Context, j Job, log *slog.Logger) {
	n := *j.Arriving
	if cur, err := j.Spec.Node(n.Name); err == nil && cur.Host == n.Host {
		return // never the job-node's own place
	}
	a, err := c.agent(n.Host)
	if err == nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.deadlines.of(PhaseDestroy))
		err = a.Destroy(dctx, agentapi.NodeRef{Job: j.Spec.ID, Node: n.Name})
		cancel()
	}
	switch {
	case err == nil:
		log.Info("destroyed the copy an interrupted migration had restored", "node", n.Name, "host", n.Host)
	case errors.Is(err, agentapi.ErrNotFound):
	default:
		log.Error("the copy an interrupted migration restored could not be destroyed: it stays frozen and locked on its host, holding its memory, until that host's shim registers again",
			"node", n.Name, "host", n.Host, "err", err)
	}
}

// inBackground runs fn on a goroutine of its own, counted by WaitBackground,
// with a context that keeps ctx's values but not its end (the operation
// that started it has returned) and ends with StopBackground.
func (c *Coordinator) inBackground(ctx context.Context, fn func(ctx context.Context)) {
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	unhook := context.AfterFunc(c.bgCtx, cancel)
	c.background.Add(1)
	go func() {
		defer c.background.Done()
		defer cancel()
		defer unhook()
		fn(bctx)
	}()
}

// StopBackground ends the work the coordinator started in the background
// and waits at most grace for it to return; it says whether it all did.
// Its contexts are cancelled: a copy to a replica stops half-way (the
// checkpoint stays, reported as not fully replicated); a removal of pruned
// checkpoints' files has no context and runs on within grace (what it
// leaves, the next coordinator's Store.Recover removes). The event
// history's last write is waited for too.
func (c *Coordinator) StopBackground(grace time.Duration) bool {
	c.bgStop()
	done := make(chan struct{})
	go func() {
		c.background.Wait()
		c.events.flush()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// WaitBackground waits until the work the coordinator started in the
// background has ended: the copies of host-local checkpoints to their
// replicas, the drops of pruned images from the shims' stores, the catalog
// recoveries, the writes of the event history. Whoever closes the shims or their stores under an embedded
// coordinator (the benchmark) calls it first.
func (c *Coordinator) WaitBackground() {
	c.background.Wait()
	c.events.flush()
}
