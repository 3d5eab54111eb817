package pmix

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/torpor-hpc/torpor/pmix/pmi1"
)

// pmi1Events feeds the PMI-1 server's reports into the daemon's rank state.
type pmi1Events struct{ d *Daemon }

func (e pmi1Events) Connected(rank int) {
	e.d.mu.Lock()
	e.d.connected[rank] = true
	e.d.mu.Unlock()
}

func (e pmi1Events) Finalized(rank int) {
	e.d.mu.Lock()
	e.d.finalized[rank] = true
	e.d.mu.Unlock()
}

func (e pmi1Events) Aborted(rank, code int, msg string) {
	e.d.log.Warn("rank aborted", "rank", rank, "status", code, "msg", msg)
	e.d.mu.Lock()
	if _, seen := e.d.aborts[rank]; !seen {
		e.d.aborts[rank] = &abortInfo{status: code, msg: msg}
	}
	e.d.mu.Unlock()
	e.d.wake()
}

// runPMI1 hosts MPICH ranks over PMI-1: every barrier is a job-wide fence
// through the upstream carrying the puts made since the previous one.
func (d *Daemon) runPMI1(ctx context.Context) (int, error) {
	all := make([]int, len(d.spec.Nodes))
	layout := make([][]int, len(d.spec.Nodes))
	for i, nd := range d.spec.Nodes {
		all[i] = i
		layout[i] = nd.Ranks
	}
	var seq atomic.Uint64
	srv, err := pmi1.NewServer(pmi1.Config{
		KVSName:    d.spec.Job,
		Size:       d.spec.Size(),
		LocalRanks: d.spec.LocalRanks(),
		Mapping:    pmi1.Mapping(layout),
		Events:     pmi1Events{d},
		Logger:     d.log,
		Exchange: func(ctx context.Context, data []byte) ([]byte, error) {
			d.fences.Add(1)
			return d.up.Fence(ctx, FenceRequest{
				Job: d.spec.Job, Node: d.spec.NodeIndex, Nodes: all,
				Signature: "pmi1:" + d.spec.Job, Seq: seq.Add(1) - 1, Collect: true, Data: data,
			})
		},
	})
	if err != nil {
		return 1, fmt.Errorf("job %s: %w", d.spec.Job, err)
	}
	defer srv.Close()
	size := d.spec.Size()
	d.prepare = func(_ context.Context, r int) ([]string, []*os.File, error) {
		f, err := srv.Attach(r)
		if err != nil {
			return nil, nil, err
		}
		return pmi1.Env(r, size, 3), []*os.File{f}, nil // ExtraFiles[0] is fd 3
	}
	return d.supervise(ctx, ctx)
}
