package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
)

// fenceKey names one fence of one job.
type fenceKey struct {
	job, sig string
	seq      uint64
}

type fence struct {
	want    map[int]bool
	got     map[int][]byte
	done    chan struct{}
	result  []byte
	created time.Time
}

// fences collects fence contributions until every participant is in, then
// answers every contributor with all contributions concatenated (in node
// order; PMIx unpacks them in any order). A contribution sent again (pmixd
// re-sends calls that were in flight when its link dropped, e.g. around a
// checkpoint) counts once and gets the same answer, also after the fence
// completed.
type fences struct {
	mu sync.Mutex
	m  map[fenceKey]*fence
}

// fenceKeep is how long a completed fence is remembered for repeated calls.
const fenceKeep = 10 * time.Minute

// Fence adds a contribution and waits for the fence to complete.
func (c *Coordinator) Fence(ctx context.Context, req agentapi.FenceRequest) ([]byte, error) {
	j, err := c.Job(req.Job)
	if err != nil {
		return nil, err
	}
	if req.Node < 0 || req.Node >= len(j.Spec.Nodes) {
		return nil, fmt.Errorf("%w: fence of %s from job-node %d, which the job does not have", agentapi.ErrInvalid, req.Job, req.Node)
	}
	f, completed := c.fences.join(req, c.now())
	if completed {
		c.metricsOf().Fence(c.now().Sub(f.created))
	}
	select {
	case <-f.done:
		return f.result, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// join adds a contribution; completed says this one completed the fence.
func (fs *fences) join(req agentapi.FenceRequest, now time.Time) (f *fence, completed bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m == nil {
		fs.m = map[fenceKey]*fence{}
	}
	for k, f := range fs.m {
		select {
		case <-f.done:
			if now.Sub(f.created) > fenceKeep {
				delete(fs.m, k)
			}
		default:
		}
	}
	k := fenceKey{req.Job, req.Signature, req.Seq}
	f, ok := fs.m[k]
	if !ok {
		f = &fence{want: map[int]bool{}, got: map[int][]byte{}, done: make(chan struct{}), created: now}
		for _, n := range req.Nodes {
			f.want[n] = true
		}
		f.want[req.Node] = true
		fs.m[k] = f
	}
	select {
	case <-f.done:
		return f, false
	default:
	}
	if _, dup := f.got[req.Node]; !dup {
		f.got[req.Node] = append([]byte(nil), req.Data...)
	}
	if len(f.got) >= len(f.want) {
		nodes := make([]int, 0, len(f.got))
		for n := range f.got {
			nodes = append(nodes, n)
		}
		sort.Ints(nodes)
		var buf bytes.Buffer
		for _, n := range nodes {
			buf.Write(f.got[n])
		}
		f.result = buf.Bytes()
		close(f.done)
		return f, true
	}
	return f, false
}

// forget drops every fence of a job: a restarted job replays its fences
// from the checkpoint on, and must not get answers from a lost future.
func (fs *fences) forget(job string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for k := range fs.m {
		if k.job == job {
			delete(fs.m, k)
		}
	}
}
