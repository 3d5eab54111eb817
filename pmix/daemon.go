package pmix

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torpor-hpc/torpor/pmix/libpmix"
)

// Daemon is one pmixd: the PMIx server host of one job-node. It implements
// libpmix.Host.
type Daemon struct {
	spec JobSpec
	up   Upstream
	log  *slog.Logger
	srv  *libpmix.Server

	fences atomic.Uint64 // fences routed through the upstream
	modex  atomic.Uint64 // direct-modex requests sent upstream

	mu        sync.Mutex
	ranks     map[int]*rank // local ranks by global rank
	connected map[int]bool
	finalized map[int]bool
	aborts    map[int]*abortInfo
	events    chan struct{} // wakes the supervisor: an abort, or Terminate

	// prepare returns a rank's extra environment and the files it inherits
	// from fd 3 on; the daemon closes the files once the rank is started.
	prepare   func(ctx context.Context, rank int) ([]string, []*os.File, error)
	stopCause error // set by Terminate

	bg sync.WaitGroup // failure reports still being sent upstream

	// Checkpoint events (ckpt.go); ckptMu is taken before mu, never after.
	ckptMu      sync.Mutex
	eventsUp    bool         // the PMIx server is up and listens for answers
	optedIn     map[int]bool // ranks that asked to be waited for at prepare
	ckptWait    *prepareWait // the running prepare, if any
	lastPrepare string       // the id of the last prepare that ended
}

// New prepares a pmixd for spec; Run starts it.
func New(spec JobSpec, up Upstream, log *slog.Logger) (*Daemon, error) {
	if err := validate(spec); err != nil {
		return nil, err
	}
	if up == nil {
		up = LocalUpstream{}
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if spec.KillGrace <= 0 {
		spec.KillGrace = 2 * time.Second
	}
	d := &Daemon{
		spec:      spec,
		up:        up,
		log:       log.With("job", spec.Job, "node", spec.NodeIndex),
		ranks:     map[int]*rank{},
		connected: map[int]bool{},
		finalized: map[int]bool{},
		aborts:    map[int]*abortInfo{},
		events:    make(chan struct{}, 1),
		optedIn:   map[int]bool{},
	}
	d.srv = libpmix.NewServer(d)
	return d, nil
}

// Run hosts the job-node until every local rank has ended and returns the
// job-node's exit code: 0, the MPI_Abort error code, a failed rank's exit
// status, or 128+signal. A non-zero code comes with a *JobError naming the rank.
func Run(ctx context.Context, spec JobSpec, up Upstream, log *slog.Logger) (int, error) {
	d, err := New(spec, up, log)
	if err != nil {
		return 1, err
	}
	return d.Run(ctx)
}

// FenceCount is the number of fences this daemon routed through its upstream.
func (d *Daemon) FenceCount() uint64 { return d.fences.Load() }

// PIDs maps the local ranks that are still running to their process ids.
func (d *Daemon) PIDs() map[int]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[int]int{}
	for r, rk := range d.ranks {
		if !rk.reaped.Load() {
			out[r] = rk.pid
		}
	}
	return out
}

// Terminate ends the local ranks because of cause (e.g. another job-node failed).
func (d *Daemon) Terminate(cause error) {
	d.mu.Lock()
	if d.stopCause == nil {
		d.stopCause = cause
	}
	d.mu.Unlock()
	d.wake()
}

func (d *Daemon) wake() {
	select {
	case d.events <- struct{}{}:
	default:
	}
}

// ServeDirectModex answers another node's direct-modex request for a local rank.
func (d *Daemon) ServeDirectModex(ctx context.Context, rank int) ([]byte, error) {
	if d.spec.NodeOf(rank) != d.spec.NodeIndex {
		return nil, fmt.Errorf("serve direct modex for rank %d: rank is not on node %d", rank, d.spec.NodeIndex)
	}
	return d.srv.DirectModexRequest(ctx, libpmix.Proc{Nspace: d.spec.Job, Rank: libpmix.Rank(rank)})
}

// Run: see the package-level Run.
func (d *Daemon) Run(ctx context.Context) (code int, err error) {
	if err := d.prepareDirs(); err != nil {
		return 1, err
	}
	if d.spec.Wire == WirePMI1 {
		return d.runPMI1(ctx)
	}
	host := d.spec.Nodes[d.spec.NodeIndex].Hostname
	if err := d.srv.Init(libpmix.Options{
		TmpDir:   d.spec.ServerTmpDir(),
		Nspace:   "torpor-pmixd-" + d.spec.Job,
		Rank:     libpmix.Rank(d.spec.NodeIndex),
		Hostname: host,
		Logger:   d.log,
	}); err != nil {
		return 1, fmt.Errorf("start pmix server for job %s: %w", d.spec.Job, err)
	}
	defer func() {
		d.ckptMu.Lock()
		d.eventsUp = false
		d.ckptMu.Unlock()
		if ferr := d.srv.Finalize(); ferr != nil && err == nil {
			code, err = 1, ferr
		}
	}()
	regCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := d.srv.RegisterNamespace(regCtx, jobMap(d.spec)); err != nil {
		return 1, fmt.Errorf("job %s: %w", d.spec.Job, err)
	}
	if err := d.startEvents(regCtx); err != nil {
		return 1, fmt.Errorf("job %s: %w", d.spec.Job, err)
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		if derr := d.srv.DeregisterNamespace(dctx, d.spec.Job); derr != nil {
			d.log.Warn("deregister namespace", "err", derr)
		}
	}()
	d.prepare = d.preparePMIx
	return d.supervise(ctx, regCtx)
}

// preparePMIx registers a rank with the PMIx server and returns its
// setup_fork environment.
func (d *Daemon) preparePMIx(ctx context.Context, r int) ([]string, []*os.File, error) {
	p := libpmix.Proc{Nspace: d.spec.Job, Rank: libpmix.Rank(r)}
	if err := d.srv.RegisterClient(ctx, p); err != nil {
		return nil, nil, err
	}
	env, err := d.srv.SetupFork(p)
	if err != nil {
		return nil, nil, err
	}
	env = append(env, ompiDirectLaunch(d.spec.Job)...)
	return append(env, EnvCheckpointEvents+"=1"), nil, nil
}

func (d *Daemon) prepareDirs() error {
	for _, dir := range []string{d.spec.ServerTmpDir(), d.spec.NsDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create pmixd directory: %w", err)
		}
	}
	return nil
}

// reportFailure tells the upstream that this node is ending the job.
func (d *Daemon) reportFailure(ctx context.Context, je *JobError) {
	d.log.Error("ending job", "rank", je.Rank, "code", je.Code, "reason", je.Reason)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := d.up.Failed(rctx, Failure{Job: d.spec.Job, Node: d.spec.NodeIndex, Rank: je.Rank, Code: je.Code, Err: je}); err != nil {
		d.log.Warn("report failure upstream", "err", err)
	}
}

// libpmix.Host

// Fence routes a fence through the upstream.
func (d *Daemon) Fence(ctx context.Context, req libpmix.FenceRequest) ([]byte, error) {
	d.fences.Add(1)
	nodes := d.nodesOf(req.Procs)
	out, err := d.up.Fence(ctx, FenceRequest{
		Job: d.spec.Job, Node: d.spec.NodeIndex, Nodes: nodes,
		Signature: req.Signature, Seq: req.Seq, Collect: req.Collect, Data: req.Data,
	})
	if err != nil {
		return nil, fmt.Errorf("fence %s#%d: %w", req.Signature, req.Seq, err)
	}
	return out, nil
}

// nodesOf lists the job-nodes hosting any of procs, ascending.
func (d *Daemon) nodesOf(procs []libpmix.Proc) []int {
	in := make([]bool, len(d.spec.Nodes))
	for _, p := range procs {
		if p.Nspace != d.spec.Job {
			continue
		}
		if p.Rank == libpmix.RankWildcard {
			for i := range in {
				in[i] = true
			}
			break
		}
		if n := d.spec.NodeOf(int(p.Rank)); n >= 0 {
			in[n] = true
		}
	}
	in[d.spec.NodeIndex] = true
	var out []int
	for i, ok := range in {
		if ok {
			out = append(out, i)
		}
	}
	return out
}

// DirectModex fetches a remote rank's modex blob through the upstream.
func (d *Daemon) DirectModex(ctx context.Context, p libpmix.Proc, _ []libpmix.Info) ([]byte, error) {
	if p.Nspace != d.spec.Job {
		return nil, fmt.Errorf("direct modex for %s: unknown namespace", p)
	}
	owner := d.spec.NodeOf(int(p.Rank))
	if owner < 0 {
		return nil, fmt.Errorf("direct modex for %s: no such rank", p)
	}
	d.modex.Add(1)
	return d.up.DirectModex(ctx, ModexRequest{Job: d.spec.Job, Rank: int(p.Rank), Node: owner, From: d.spec.NodeIndex})
}

// ClientConnected records that a rank called PMIx_Init.
func (d *Daemon) ClientConnected(p libpmix.Proc) {
	d.log.Debug("rank connected", "rank", int(p.Rank))
	d.mu.Lock()
	d.connected[int(p.Rank)] = true
	d.mu.Unlock()
}

// ClientFinalized records that a rank called PMIx_Finalize.
func (d *Daemon) ClientFinalized(p libpmix.Proc) {
	d.log.Debug("rank finalized", "rank", int(p.Rank))
	d.mu.Lock()
	d.finalized[int(p.Rank)] = true
	d.mu.Unlock()
}

// Abort records a rank's PMIx_Abort; the supervisor then ends the job.
func (d *Daemon) Abort(p libpmix.Proc, status int, msg string, _ []libpmix.Proc) {
	d.log.Warn("rank aborted", "rank", int(p.Rank), "status", status, "msg", msg)
	d.mu.Lock()
	if _, seen := d.aborts[int(p.Rank)]; !seen {
		d.aborts[int(p.Rank)] = &abortInfo{status: status, msg: msg}
	}
	d.mu.Unlock()
	d.wake()
}

// Notify takes events raised by ranks towards the host (the notify_event
// upcall): checkpoint answers are recorded, anything else is logged.
func (d *Daemon) Notify(ev libpmix.Event) {
	if ev.Code == EventCheckpointComplete {
		go d.onRankEvent(ev) // never block the progress thread
		return
	}
	d.log.Info("event from rank", "rank", int(ev.Source.Rank), "code", int32(ev.Code))
}

var _ libpmix.Host = (*Daemon)(nil)
