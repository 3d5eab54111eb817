package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// VerifiesImages implements agentapi.ImageVerifier: Restore and
// RestoreFiles verify the images against RestoreRequest.NodeManifestSHA256.
func (a *Agent) VerifiesImages() bool { return true }

// pagesCheck verifies a restart's memory images (pages-*.img) against the
// node manifest while the restore goes on; the restore's post-restore
// notification waits for its verdict. Compressed ones it expands into the
// restore's scratch directory, verifying them as it reads them: then the
// restore waits for the verdict before CRIU starts, which needs them.
type pagesCheck struct {
	cancel    context.CancelFunc
	done      chan struct{}
	err       error // set before done closes
	mu        sync.Mutex
	checked   bool          // wait returned the verdict nil
	waitedFor time.Duration // how long wait waited
}

func startPagesCheck(ctx context.Context, imgs *catalog.NodeImages, scratch string) (*pagesCheck, error) {
	var dst *os.Root
	if scratch != "" {
		var err error
		if dst, err = os.OpenRoot(scratch); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &pagesCheck{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		if dst != nil {
			defer dst.Close()
			for _, f := range imgs.Compressed() {
				if p.err = imgs.Expand(ctx, f, dst); p.err != nil {
					return
				}
			}
		}
		p.err = imgs.Verify(ctx, func(name string) bool { return criu.IsPages(name) && !imgs.IsCompressed(name) })
	}()
	return p, nil
}

// wait returns the verdict once the memory images are verified, or ctx's
// error first.
func (p *pagesCheck) wait(ctx context.Context) error {
	start := time.Now()
	defer func() {
		p.mu.Lock()
		p.waitedFor += time.Since(start)
		p.mu.Unlock()
	}()
	select {
	case <-p.done:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if p.err != nil {
		return p.err
	}
	p.mu.Lock()
	p.checked = true
	p.mu.Unlock()
	return nil
}

// passed says a wait returned a nil verdict: the tree CRIU resumes is the
// one the images describe.
func (p *pagesCheck) passed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checked
}

// waited is how long the restore waited for the verdict (nil: none asked).
func (p *pagesCheck) waited() time.Duration {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitedFor
}

// stop ends the verification, if it still runs, and waits for it.
func (p *pagesCheck) stop() {
	p.cancel()
	<-p.done
}

// corrupt marks a verification failure with agentapi.ErrCorrupt, which
// survives the trip to the coordinator.
func corrupt(err error) error {
	if errors.Is(err, catalog.ErrCorrupt) {
		return fmt.Errorf("%w: %w", agentapi.ErrCorrupt, err)
	}
	return err
}
