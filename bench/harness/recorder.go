package harness

import (
	"context"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
)

// call is one Agent call as the recorder saw it.
type call struct {
	Op    string
	Host  string
	Node  string
	Start time.Time
	End   time.Time
	Err   error
	Dump  agentapi.DumpResult
}

// Recorder wraps shims' Agents and records when each call started and ended,
// so that the phases of one coordinator operation can be measured from the
// outside, per job-node, without changing the coordinator.
type Recorder struct {
	mu    sync.Mutex
	calls []call
	// beforeUnlock, when set, runs just before every Unlock reaches the shim.
	beforeUnlock func(host string, ref agentapi.NodeRef)
	// thawJob, thawsLeft and thawed: AfterThaws.
	thawJob   string
	thawsLeft int
	thawed    chan struct{}
}

// BeforeUnlock sets (or clears, with nil) a hook run before every Unlock.
func (r *Recorder) BeforeUnlock(fn func(host string, ref agentapi.NodeRef)) {
	r.mu.Lock()
	r.beforeUnlock = fn
	r.mu.Unlock()
}

// AfterThaws returns a channel closed once n Thaw calls of job have ended
// (a resume: one per job-node); job "" stops watching.
func (r *Recorder) AfterThaws(job string, n int) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.thawJob, r.thawsLeft, r.thawed = job, n, make(chan struct{})
	return r.thawed
}

func (r *Recorder) thawEnded(job string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if job == "" || job != r.thawJob || r.thawsLeft <= 0 {
		return
	}
	r.thawsLeft--
	if r.thawsLeft == 0 {
		close(r.thawed)
	}
}

// Wrap returns an Agent that records every call to a.
func (r *Recorder) Wrap(host string, a agentapi.Agent) agentapi.Agent {
	return &recorded{r: r, host: host, a: a}
}

// WrapStreaming is Wrap for an agent whose images other shims fetch from
// the address images returns ("": none now; agentapi.ImageStreamer).
func (r *Recorder) WrapStreaming(host string, a agentapi.Agent, images func() string) agentapi.Agent {
	return &recorded{r: r, host: host, a: a, images: images}
}

// Mark is the position to collect calls from (see Since).
func (r *Recorder) Mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// Since returns the calls recorded after mark and forgets everything before.
func (r *Recorder) Since(mark int) []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]call(nil), r.calls[min(mark, len(r.calls)):]...)
	return out
}

// Reset forgets every recorded call.
func (r *Recorder) Reset() {
	r.mu.Lock()
	r.calls = nil
	r.mu.Unlock()
}

func (r *Recorder) add(c call) {
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}

type recorded struct {
	r      *Recorder
	host   string
	a      agentapi.Agent
	images func() string
}

// ImagesAddress implements agentapi.ImageStreamer.
func (w *recorded) ImagesAddress() string {
	if w.images == nil {
		return ""
	}
	return w.images()
}

// Holds, Fetch, Held, Drop, KeepManifest and Manifests pass on the wrapped agent's checkpoint store
// (agentapi.CheckpointHolder), when it streams images.
func (w *recorded) Holds() bool {
	h, ok := w.a.(agentapi.CheckpointHolder)
	return ok && w.images != nil && h.Holds()
}

func (w *recorded) Fetch(ctx context.Context, handle, node, from, sum string, rate int64) (int64, error) {
	return w.a.(agentapi.CheckpointHolder).Fetch(ctx, handle, node, from, sum, rate)
}

func (w *recorded) Held(ctx context.Context, job string, verify bool) ([]agentapi.HeldImages, error) {
	return w.a.(agentapi.CheckpointHolder).Held(ctx, job, verify)
}

func (w *recorded) Drop(ctx context.Context, handle string) error {
	return w.a.(agentapi.CheckpointHolder).Drop(ctx, handle)
}

func (w *recorded) KeepManifest(ctx context.Context, handle string, manifest []byte) error {
	return w.a.(agentapi.CheckpointHolder).KeepManifest(ctx, handle, manifest)
}

func (w *recorded) Manifests(ctx context.Context) (map[string][]byte, error) {
	return w.a.(agentapi.CheckpointHolder).Manifests(ctx)
}

// VerifiesImages passes on whether the wrapped agent verifies a restart's
// images itself (agentapi.ImageVerifier), as the coordinator asks.
func (w *recorded) VerifiesImages() bool {
	v, ok := w.a.(agentapi.ImageVerifier)
	return ok && v.VerifiesImages()
}

// PostCopy passes on whether the wrapped agent can take part in a
// post-copy migration (agentapi.PostCopier).
func (w *recorded) PostCopy() bool {
	p, ok := w.a.(agentapi.PostCopier)
	return ok && p.PostCopy()
}

func (w *recorded) Pages(ctx context.Context, ref agentapi.NodeRef) error {
	return w.rec("pages", ref.Node, func() error { return w.a.Pages(ctx, ref) })
}

func (w *recorded) Sync(ctx context.Context, ref agentapi.NodeRef, ckpt string) error {
	return w.rec("sync", ref.Node, func() error { return w.a.Sync(ctx, ref, ckpt) })
}

func (w *recorded) rec(op, node string, fn func() error) error {
	c := call{Op: op, Host: w.host, Node: node, Start: time.Now()}
	c.Err = fn()
	c.End = time.Now()
	w.r.add(c)
	return c.Err
}

func (w *recorded) Start(ctx context.Context, job string, n agentapi.NodeSpec) error {
	return w.rec("start", n.Name, func() error { return w.a.Start(ctx, job, n) })
}
func (w *recorded) Prepare(ctx context.Context, ref agentapi.NodeRef, ckpt string) error {
	return w.rec("prepare", ref.Node, func() error { return w.a.Prepare(ctx, ref, ckpt) })
}
func (w *recorded) Freeze(ctx context.Context, ref agentapi.NodeRef) error {
	return w.rec("freeze", ref.Node, func() error { return w.a.Freeze(ctx, ref) })
}
func (w *recorded) Drain(ctx context.Context, ref agentapi.NodeRef) (agentapi.DrainResult, error) {
	var res agentapi.DrainResult
	err := w.rec("drain", ref.Node, func() (err error) { res, err = w.a.Drain(ctx, ref); return err })
	return res, err
}
func (w *recorded) Lock(ctx context.Context, ref agentapi.NodeRef) error {
	return w.rec("lock", ref.Node, func() error { return w.a.Lock(ctx, ref) })
}
func (w *recorded) Dump(ctx context.Context, ref agentapi.NodeRef, req agentapi.DumpRequest) (agentapi.DumpResult, error) {
	c := call{Op: "dump", Host: w.host, Node: ref.Node, Start: time.Now()}
	res, err := w.a.Dump(ctx, ref, req)
	c.End, c.Err, c.Dump = time.Now(), err, res
	w.r.add(c)
	return res, err
}
func (w *recorded) Unlock(ctx context.Context, ref agentapi.NodeRef) error {
	w.r.mu.Lock()
	hook := w.r.beforeUnlock
	w.r.mu.Unlock()
	if hook != nil {
		hook(w.host, ref)
	}
	return w.rec("unlock", ref.Node, func() error { return w.a.Unlock(ctx, ref) })
}
func (w *recorded) Thaw(ctx context.Context, ref agentapi.NodeRef) error {
	err := w.rec("thaw", ref.Node, func() error { return w.a.Thaw(ctx, ref) })
	if err == nil {
		w.r.thawEnded(ref.Job)
	}
	return err
}
func (w *recorded) RestoreFiles(ctx context.Context, job string, n agentapi.NodeSpec, req agentapi.RestoreRequest) (res agentapi.RestoreFilesResult, err error) {
	err = w.rec("files", n.Name, func() error { res, err = w.a.RestoreFiles(ctx, job, n, req); return err })
	return res, err
}

func (w *recorded) Restore(ctx context.Context, job string, n agentapi.NodeSpec, req agentapi.RestoreRequest) error {
	return w.rec("restore", n.Name, func() error { return w.a.Restore(ctx, job, n, req) })
}
func (w *recorded) Destroy(ctx context.Context, ref agentapi.NodeRef) error {
	return w.rec("destroy", ref.Node, func() error { return w.a.Destroy(ctx, ref) })
}
func (w *recorded) Status(ctx context.Context, ref agentapi.NodeRef) (agentapi.NodeStatus, error) {
	return w.a.Status(ctx, ref) // polled, not a phase: not recorded
}

// span is the time from the first start to the last end of op's calls:
// the phase as a barrier across job-nodes sees it.
func span(calls []call, op string) (first, last time.Time, ok bool) {
	for _, c := range calls {
		if c.Op != op {
			continue
		}
		if !ok || c.Start.Before(first) {
			first = c.Start
		}
		if !ok || c.End.After(last) {
			last = c.End
		}
		ok = true
	}
	return first, last, ok
}

// spanDur is span's length, 0 when op was not called.
func spanDur(calls []call, op string) time.Duration {
	f, l, ok := span(calls, op)
	if !ok {
		return 0
	}
	return l.Sub(f)
}

// frozenFor is how long the job stood frozen: from the first freeze's start
// to the last thaw's end (0 when either was not called).
func frozenFor(calls []call) time.Duration {
	f, _, ok1 := span(calls, "freeze")
	_, l, ok2 := span(calls, "thaw")
	if !ok1 || !ok2 {
		return 0
	}
	return l.Sub(f)
}

// gap is the time between the last end of op a and the first start of op b.
func gap(calls []call, a, b string) time.Duration {
	_, aEnd, ok1 := span(calls, a)
	bStart, _, ok2 := span(calls, b)
	if !ok1 || !ok2 {
		return 0
	}
	return bStart.Sub(aEnd)
}

// dumps returns the DumpResults recorded, per job-node.
func dumps(calls []call) map[string]agentapi.DumpResult {
	out := map[string]agentapi.DumpResult{}
	for _, c := range calls {
		if c.Op == "dump" && c.Err == nil {
			out[c.Node] = c.Dump
		}
	}
	return out
}
