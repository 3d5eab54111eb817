package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/torpor-hpc/torpor/coordinator"
	"github.com/torpor-hpc/torpor/coordinator/catalog"
)

// fakeAgent is a shim without processes or CRIU (the shape of the
// coordinator's test fake): every call returns at once, Dump writes a
// one-page image and its node manifest. A checkpoint through it costs only
// the coordinator's protocol and the catalog: pure coordination overhead.
type fakeAgent struct {
	mu    sync.Mutex
	nodes map[string]bool
}

func newFakeAgent() *fakeAgent { return &fakeAgent{nodes: map[string]bool{}} }

func (f *fakeAgent) has(ref coordinator.NodeRef) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.nodes[ref.Job+"/"+ref.Node] {
		return fmt.Errorf("%w: fake job-node %s/%s", coordinator.ErrNotFound, ref.Job, ref.Node)
	}
	return nil
}

func (f *fakeAgent) Start(_ context.Context, job string, n coordinator.NodeSpec) error {
	f.mu.Lock()
	f.nodes[job+"/"+n.Name] = true
	f.mu.Unlock()
	return nil
}
func (f *fakeAgent) Prepare(_ context.Context, ref coordinator.NodeRef, _ string) error {
	return f.has(ref)
}
func (f *fakeAgent) Freeze(_ context.Context, ref coordinator.NodeRef) error { return f.has(ref) }
func (f *fakeAgent) Drain(_ context.Context, ref coordinator.NodeRef) (coordinator.DrainResult, error) {
	return coordinator.DrainResult{}, f.has(ref)
}
func (f *fakeAgent) Lock(_ context.Context, ref coordinator.NodeRef) error { return f.has(ref) }
func (f *fakeAgent) Dump(ctx context.Context, ref coordinator.NodeRef, req coordinator.DumpRequest) (coordinator.DumpResult, error) {
	if err := f.has(ref); err != nil {
		return coordinator.DumpResult{}, err
	}
	if err := os.WriteFile(filepath.Join(req.Dir, "pages-1.img"), make([]byte, 4096), 0o600); err != nil {
		return coordinator.DumpResult{}, err
	}
	nm, err := catalog.WriteNodeManifest(ctx, req.Dir)
	if err != nil {
		return coordinator.DumpResult{}, err
	}
	return coordinator.DumpResult{Bytes: nm.TotalBytes, Files: len(nm.Files)}, nil
}
func (f *fakeAgent) Unlock(context.Context, coordinator.NodeRef) error { return nil }
func (f *fakeAgent) Thaw(context.Context, coordinator.NodeRef) error   { return nil }
func (f *fakeAgent) Restore(_ context.Context, job string, n coordinator.NodeSpec, _ string) error {
	return f.Start(context.Background(), job, n)
}
func (f *fakeAgent) Destroy(_ context.Context, ref coordinator.NodeRef) error {
	f.mu.Lock()
	delete(f.nodes, ref.Job+"/"+ref.Node)
	f.mu.Unlock()
	return nil
}
func (f *fakeAgent) Status(_ context.Context, ref coordinator.NodeRef) (coordinator.NodeStatus, error) {
	if err := f.has(ref); err != nil {
		return coordinator.NodeStatus{}, err
	}
	return coordinator.NodeStatus{Running: true}, nil
}
