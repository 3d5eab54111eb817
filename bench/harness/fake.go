package harness

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
	"lukechampine.com/blake3"
)

// fakeAgent is a shim without processes or CRIU (the shape of the
// coordinator's test fake): every call returns at once, Dump writes a
// one-page image and its node manifest. A checkpoint through it costs only
// the coordinator's protocol and the catalog: pure coordination overhead.
// It stays apart from coordinator/fake_test.go's on purpose (see there):
// that one injects faults per coordinator.Phase and records state for
// assertions, which a timing run must not pay for.
type fakeAgent struct {
	mu    sync.Mutex
	nodes map[string]bool
}

func newFakeAgent() *fakeAgent { return &fakeAgent{nodes: map[string]bool{}} }

func (f *fakeAgent) has(ref agentapi.NodeRef) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.nodes[ref.Job+"/"+ref.Node] {
		return fmt.Errorf("%w: fake job-node %s/%s", agentapi.ErrNotFound, ref.Job, ref.Node)
	}
	return nil
}

func (f *fakeAgent) Start(_ context.Context, job string, n agentapi.NodeSpec) error {
	f.mu.Lock()
	f.nodes[job+"/"+n.Name] = true
	f.mu.Unlock()
	return nil
}
func (f *fakeAgent) Prepare(_ context.Context, ref agentapi.NodeRef, _ string) error {
	return f.has(ref)
}
func (f *fakeAgent) Freeze(_ context.Context, ref agentapi.NodeRef) error { return f.has(ref) }
func (f *fakeAgent) Drain(_ context.Context, ref agentapi.NodeRef) (agentapi.DrainResult, error) {
	return agentapi.DrainResult{}, f.has(ref)
}
func (f *fakeAgent) Lock(_ context.Context, ref agentapi.NodeRef) error { return f.has(ref) }
func (f *fakeAgent) Dump(ctx context.Context, ref agentapi.NodeRef, req agentapi.DumpRequest) (agentapi.DumpResult, error) {
	if err := f.has(ref); err != nil {
		return agentapi.DumpResult{}, err
	}
	if err := os.WriteFile(filepath.Join(req.Dir, "pages-1.img"), fakePage, 0o600); err != nil {
		return agentapi.DumpResult{}, err
	}
	// The node manifest of that one page, written as a shim on a host of
	// its own would, but without its fsyncs (atomicfile.Write's two): a
	// cluster's shims sync on as many disks at once, while here every fake
	// host's would queue on this machine's one journal (512 fsyncs for 256
	// job-nodes, 60% of the checkpoint's CPU profile) and be counted as
	// coordination. The catalog checks it as any other.
	nm := catalog.NodeManifest{Format: catalog.NodeManifestFormat, Node: filepath.Base(req.Dir),
		Files: []catalog.FileEntry{{Path: "pages-1.img", Size: int64(len(fakePage)), BLAKE3: fakePageSum}}, TotalBytes: int64(len(fakePage))}
	data, err := json.MarshalIndent(nm, "", "  ")
	if err != nil {
		return agentapi.DumpResult{}, err
	}
	if err := os.WriteFile(filepath.Join(req.Dir, catalog.NodeManifestName), append(data, '\n'), 0o600); err != nil {
		return agentapi.DumpResult{}, err
	}
	return agentapi.DumpResult{Bytes: nm.TotalBytes, Files: len(nm.Files)}, nil
}

// fakePage is the one-page memory image of every fake dump, fakePageSum
// its BLAKE3 (the node manifest's digest, catalog.NodeManifestFormat).
var (
	fakePage    = make([]byte, 4096)
	fakePageSum = func() string { s := blake3.Sum256(fakePage); return hex.EncodeToString(s[:]) }()
)

func (f *fakeAgent) Unlock(context.Context, agentapi.NodeRef) error { return nil }
func (f *fakeAgent) Thaw(context.Context, agentapi.NodeRef) error   { return nil }
func (f *fakeAgent) RestoreFiles(context.Context, string, agentapi.NodeSpec, agentapi.RestoreRequest) (agentapi.RestoreFilesResult, error) {
	return agentapi.RestoreFilesResult{}, nil
}

func (f *fakeAgent) Restore(_ context.Context, job string, n agentapi.NodeSpec, _ agentapi.RestoreRequest) error {
	return f.Start(context.Background(), job, n)
}
func (f *fakeAgent) Destroy(_ context.Context, ref agentapi.NodeRef) error {
	f.mu.Lock()
	delete(f.nodes, ref.Job+"/"+ref.Node)
	f.mu.Unlock()
	return nil
}
func (f *fakeAgent) Pages(_ context.Context, ref agentapi.NodeRef) error { return f.has(ref) }

// Sync returns at once: the fake images are not fsynced (see Dump).
func (f *fakeAgent) Sync(context.Context, agentapi.NodeRef, string) error { return nil }

func (f *fakeAgent) Status(_ context.Context, ref agentapi.NodeRef) (agentapi.NodeStatus, error) {
	if err := f.has(ref); err != nil {
		return agentapi.NodeStatus{}, err
	}
	return agentapi.NodeStatus{Running: true}, nil
}
