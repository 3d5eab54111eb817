package agent

import (
	"context"
	"fmt"
	"os"

	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// A restore from images on this host (a restart, a stop-copy migration) can
// leave the tree's private anonymous memory, nearly all of a job's, to a
// lazy-pages daemon that reads it from the same images: CRIU restores the
// tree without it, and once CRIU's post-restore notification is answered
// (the memory images verified, as always) the daemon copies every page in
// with UFFDIO_COPY. An eager restore instead reads the pages into memory
// that is not there yet and takes a page fault for every 4 KiB page; where a
// fault is dear that is most of the restore. On the VM of `make bench` (a
// page fault costs 11-15 us there, a MADV_POPULATE_WRITE 1 us per page)
// `criu restore` of a C program holding 256 MiB took 0.84-0.88 s; lazily,
// 0.03-0.04 s and then 0.07-0.11 s until the daemon had filled every page
// (bench/README.md).
//
// Restore returns only once the daemon has filled every page and exited:
// a job-node is never reported restored with memory still missing, and a
// daemon that fails takes the restored tree with it (a task that faulted on
// a page a dead daemon never filled would read zeros). The checkpoint is
// untouched either way.

// DefaultLazyRestoreFrom is Config.LazyRestoreFrom's default: below it the
// daemon's start (it reads the tree's images) outweighs the faults saved.
const DefaultLazyRestoreFrom = 8 << 20

// fillLazily says whether a restore from the images in dir has a local
// lazy-pages daemon fill its memory: they hold at least LazyRestoreFrom
// bytes of memory pages, and CRIU can restore lazily on this kernel.
func (a *Agent) fillLazily(ctx context.Context, dir string, imgs *catalog.NodeImages) bool {
	from := a.cfg.LazyRestoreFrom
	if from == 0 {
		from = DefaultLazyRestoreFrom
	}
	if from < 0 || (imgs != nil && len(imgs.Compressed()) > 0) {
		return false
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	var total int64
	for _, e := range ents {
		if !e.Type().IsRegular() || !criu.IsPages(e.Name()) {
			continue
		}
		if fi, err := e.Info(); err == nil {
			total += fi.Size()
		}
	}
	if total < from {
		return false
	}
	ok, err := a.drv.LazyPagesSupported(ctx)
	if err != nil {
		a.log.Warn("cannot tell whether CRIU restores lazily here; restores read their memory themselves", "err", err)
	}
	return ok
}

// startFillAsync starts, in the background, the lazy-pages daemon that
// fills a local restore's memory from images (its work directory is the
// restore's, where CRIU hands it the tasks' userfaultfds).
func (a *Agent) startFillAsync(ctx context.Context, images, work string) *pendingPull {
	p := &pendingPull{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.lp, p.err = a.drv.StartLazyPages(ctx, criu.LazyPagesOptions{ImagesDir: images, WorkDir: work})
		if p.err == nil && a.criuStarted != nil {
			a.criuStarted("fill", p.lp.Pid())
		}
	}()
	return p
}

// endWithDaemon is ctx, also cancelled when the lazy-pages daemon lp fails
// (it is killed, or cannot read an image): a restore that handed it the
// tasks' userfaultfds would otherwise wait for it forever. A daemon that
// ended well (every page filled) cancels nothing. Call stop when the
// restore is over.
func endWithDaemon(ctx context.Context, lp *criu.LazyPages) (_ context.Context, stop func()) {
	rctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-lp.Done():
			if err := lp.Err(); err != nil {
				cancel(fmt.Errorf("the lazy-pages daemon filling its memory failed: %w", err))
			}
		case <-rctx.Done():
		}
	}()
	return rctx, func() { cancel(nil) }
}
