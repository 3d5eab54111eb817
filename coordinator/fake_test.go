package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/torpor-hpc/torpor/agentapi"
	"github.com/torpor-hpc/torpor/catalog"
)

// fakeNode is what a fake shim knows about one job-node.
type fakeNode struct {
	exists, frozen, locked, exited bool
	exitCode                       int
}

// fakeAgent is a shim without processes: it records state and can be told
// to fail or hang in any phase.
//
// bench/harness has its own, smaller fakeAgent on purpose: that one is
// non-test code (the bench binary runs it) and has no fault injection or
// state to check, so that a checkpoint through it measures only the
// coordinator's protocol and the catalog; this one is keyed by this
// package's Phase and lives in a _test file. One shared fake would have to
// export Phase-keyed injection to the bench, or carry it unused there.
type fakeAgent struct {
	host string
	mu   sync.Mutex
	node map[string]*fakeNode // job/node -> state
	fail map[Phase]error      // phase -> error to return
	hang map[Phase]bool       // phase -> block until ctx ends
	// calls counts calls per phase.
	calls map[Phase]int
	// restoredFrom lists the checkpoint handle of every restore, in order.
	restoredFrom []string
	// moved is what RestoreFiles reports moved aside.
	moved []string
	// oldShim: the agent does not verify a restart's images (a shim that
	// registered without verifies_images).
	oldShim bool
	// env is the environment each job-node was last sent with, per phase
	// (start, files, restore): "<phase> <job>/<node>" -> environment.
	env map[string][]string
	// compress lists every dump's DumpRequest.Compress, in order.
	compress []string
	// noPostCopy: the shim cannot take part in a post-copy migration;
	// memory is what its Dump reports as a job-node's private memory.
	noPostCopy bool
	memory     int64
	// pageServers are the page servers of post-copy dumps still serving
	// (job/node); lazyFrom lists every RestoreRequest.PageServer.
	pageServers map[string]bool
	lazyFrom    []string
	// onPages, if set, runs as Pages is called.
	onPages func()
	// onDestroy, if set, runs as Destroy is called, before it does anything.
	onDestroy func(ref agentapi.NodeRef)
	// down: Status does not reach the shim (ErrUnreachable).
	down bool
	// synced lists every Sync, "<checkpoint> <node>", in order; onSync, if
	// set, runs as Sync is called, before it does anything.
	synced []string
	onSync func(checkpoint string)
}

// sentEnv returns the environment job/node was last sent with in phase p.
func (f *fakeAgent) sentEnv(p Phase, job, node string) ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.env[string(p)+" "+job+"/"+node]
	return slices.Clone(e), ok
}

// keepEnv records n's environment as sent in phase p (f.mu held).
func (f *fakeAgent) keepEnv(p Phase, job string, n agentapi.NodeSpec) {
	f.env[string(p)+" "+job+"/"+n.Name] = slices.Clone(n.Env)
}

func (f *fakeAgent) VerifiesImages() bool { return !f.oldShim }

func (f *fakeAgent) PostCopy() bool { return !f.noPostCopy }

func (f *fakeAgent) Sync(ctx context.Context, ref agentapi.NodeRef, checkpoint string) error {
	if f.onSync != nil {
		f.onSync(checkpoint)
	}
	if err := f.step(ctx, PhaseSync); err != nil {
		return err
	}
	f.mu.Lock()
	f.synced = append(f.synced, checkpoint+" "+ref.Node)
	f.mu.Unlock()
	return nil
}

// syncs returns the Syncs the agent was asked for ("<checkpoint> <node>").
func (f *fakeAgent) syncs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.synced)
}

func (f *fakeAgent) Pages(ctx context.Context, ref agentapi.NodeRef) error {
	if f.onPages != nil {
		f.onPages()
	}
	return f.with(ctx, PhasePages, ref, func(*fakeNode) {})
}

// serving says whether a post-copy page server of job/node still serves.
func (f *fakeAgent) serving(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pageServers[key]
}

func (f *fakeAgent) stopServing(ref agentapi.NodeRef) {
	f.mu.Lock()
	delete(f.pageServers, ref.Job+"/"+ref.Node)
	f.mu.Unlock()
}

// restores returns the checkpoint handles the agent was asked to restore from.
func (f *fakeAgent) restores() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.restoredFrom)
}

func newFakeAgent(host string) *fakeAgent {
	return &fakeAgent{host: host, node: map[string]*fakeNode{}, fail: map[Phase]error{}, hang: map[Phase]bool{}, calls: map[Phase]int{}, env: map[string][]string{}}
}

func (f *fakeAgent) step(ctx context.Context, p Phase) error {
	f.mu.Lock()
	f.calls[p]++
	err, hang := f.fail[p], f.hang[p]
	f.mu.Unlock()
	if hang {
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

func (f *fakeAgent) get(ref agentapi.NodeRef) (*fakeNode, error) {
	n, ok := f.node[ref.Job+"/"+ref.Node]
	if !ok || !n.exists {
		return nil, fmt.Errorf("%w: no job-node %s/%s on %s", agentapi.ErrNotFound, ref.Job, ref.Node, f.host)
	}
	return n, nil
}

func (f *fakeAgent) Start(ctx context.Context, job string, n agentapi.NodeSpec) error {
	if err := f.step(ctx, PhaseStart); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keepEnv(PhaseStart, job, n)
	f.node[job+"/"+n.Name] = &fakeNode{exists: true}
	return nil
}

func (f *fakeAgent) with(ctx context.Context, p Phase, ref agentapi.NodeRef, fn func(n *fakeNode)) error {
	if err := f.step(ctx, p); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.get(ref)
	if err != nil {
		return err
	}
	fn(n)
	return nil
}

func (f *fakeAgent) Prepare(ctx context.Context, ref agentapi.NodeRef, _ string) error {
	return f.with(ctx, PhasePrepare, ref, func(*fakeNode) {})
}
func (f *fakeAgent) Freeze(ctx context.Context, ref agentapi.NodeRef) error {
	return f.with(ctx, PhaseFreeze, ref, func(n *fakeNode) { n.frozen = true })
}
func (f *fakeAgent) Drain(ctx context.Context, ref agentapi.NodeRef) (agentapi.DrainResult, error) {
	return agentapi.DrainResult{}, f.with(ctx, PhaseDrain, ref, func(*fakeNode) {})
}
func (f *fakeAgent) Lock(ctx context.Context, ref agentapi.NodeRef) error {
	return f.with(ctx, PhaseLock, ref, func(n *fakeNode) { n.locked = true })
}
func (f *fakeAgent) Dump(ctx context.Context, ref agentapi.NodeRef, req agentapi.DumpRequest) (agentapi.DumpResult, error) {
	if err := f.with(ctx, PhaseDump, ref, func(*fakeNode) {}); err != nil {
		return agentapi.DumpResult{}, err
	}
	f.mu.Lock()
	f.compress = append(f.compress, req.Compress)
	f.mu.Unlock()
	if req.PostCopyAbove > 0 && f.memory >= req.PostCopyAbove {
		f.mu.Lock()
		if f.pageServers == nil {
			f.pageServers = map[string]bool{}
		}
		f.pageServers[ref.Job+"/"+ref.Node] = true
		f.mu.Unlock()
		return agentapi.DumpResult{Bytes: 4096, Files: 1, Memory: f.memory, PageServer: f.host + ":7000"}, nil
	}
	if strings.HasPrefix(req.Dir, "/mem/") {
		return agentapi.DumpResult{Bytes: 4096, Files: 1, Memory: f.memory}, nil
	}
	// A real directory: write an "image" and its node manifest, as a shim does.
	img := bytes.Repeat([]byte(ref.Job+"/"+ref.Node+" "), 512)
	if err := os.WriteFile(filepath.Join(req.Dir, "pages-1.img"), img, 0o600); err != nil {
		return agentapi.DumpResult{}, err
	}
	nm, err := catalog.WriteNodeManifest(ctx, req.Dir)
	if err != nil {
		return agentapi.DumpResult{}, err
	}
	return agentapi.DumpResult{Bytes: nm.TotalBytes, Files: len(nm.Files)}, nil
}
func (f *fakeAgent) Unlock(ctx context.Context, ref agentapi.NodeRef) error {
	f.stopServing(ref)
	err := f.with(ctx, PhaseUnlock, ref, func(n *fakeNode) { n.locked = false })
	if err != nil && strings.Contains(err.Error(), "no job-node") {
		return nil // idempotent: nothing to unlock
	}
	return err
}
func (f *fakeAgent) Thaw(ctx context.Context, ref agentapi.NodeRef) error {
	f.stopServing(ref)
	err := f.with(ctx, PhaseThaw, ref, func(n *fakeNode) { n.frozen = false })
	if err != nil && strings.Contains(err.Error(), "no job-node") {
		return nil
	}
	return err
}
func (f *fakeAgent) RestoreFiles(ctx context.Context, job string, n agentapi.NodeSpec, req agentapi.RestoreRequest) (agentapi.RestoreFilesResult, error) {
	if err := f.step(ctx, PhaseFiles); err != nil {
		return agentapi.RestoreFilesResult{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keepEnv(PhaseFiles, job, n)
	if f.node[job+"/"+n.Name] != nil && f.node[job+"/"+n.Name].exists {
		return agentapi.RestoreFilesResult{}, fmt.Errorf("files of %s/%s put back while it runs", job, n.Name)
	}
	return agentapi.RestoreFilesResult{Moved: f.moved}, nil
}

func (f *fakeAgent) Restore(ctx context.Context, job string, n agentapi.NodeSpec, req agentapi.RestoreRequest) error {
	if err := f.step(ctx, PhaseRestore); err != nil {
		return err
	}
	if req.NodeManifestSHA256 != "" && !f.oldShim {
		// As a real shim does, on the real catalog's images.
		imgs, err := catalog.OpenNodeImages(req.Dir, req.NodeManifestSHA256)
		if err == nil {
			err = imgs.Verify(ctx, func(string) bool { return true })
			imgs.Close()
		}
		if err != nil {
			return fmt.Errorf("%w: %w", agentapi.ErrCorrupt, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old := f.node[job+"/"+n.Name]; old != nil && old.exists {
		// As a real shim refuses it.
		return fmt.Errorf("%w: job-node %s/%s already exists on %s", agentapi.ErrExists, job, n.Name, f.host)
	}
	f.restoredFrom = append(f.restoredFrom, req.Checkpoint)
	f.keepEnv(PhaseRestore, job, n)
	if req.PageServer != "" {
		f.lazyFrom = append(f.lazyFrom, req.PageServer)
	}
	f.node[job+"/"+n.Name] = &fakeNode{exists: true, locked: true}
	return nil
}
func (f *fakeAgent) Destroy(ctx context.Context, ref agentapi.NodeRef) error {
	if f.onDestroy != nil {
		f.onDestroy(ref)
	}
	if err := f.step(ctx, PhaseDestroy); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.node, ref.Job+"/"+ref.Node)
	delete(f.pageServers, ref.Job+"/"+ref.Node)
	return nil
}
func (f *fakeAgent) Status(_ context.Context, ref agentapi.NodeRef) (agentapi.NodeStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return agentapi.NodeStatus{}, fmt.Errorf("%w: %s is down", agentapi.ErrUnreachable, f.host)
	}
	n, err := f.get(ref)
	if err != nil {
		return agentapi.NodeStatus{}, err
	}
	return agentapi.NodeStatus{Running: !n.exited, Exited: n.exited, ExitCode: n.exitCode}, nil
}

// snapshot lists the job-nodes a fake shim holds, with flags.
func (f *fakeAgent) snapshot() map[string]fakeNode {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]fakeNode{}
	for k, v := range f.node {
		out[k] = *v
	}
	return out
}

// memStore is an in-memory checkpoint store.
type memStore struct {
	mu         sync.Mutex
	seq        map[string]int
	committed  map[string]Manifest
	pending    map[string]bool
	corrupt    map[string]bool
	failBegin  error
	failCommit error
	// failNodeDir fails every NodeDir and SharedDir.
	failNodeDir error
	// onPrune, if set, runs at the start of every Prune.
	onPrune func(job string)
}

func newMemStore() *memStore {
	return &memStore{seq: map[string]int{}, committed: map[string]Manifest{}, pending: map[string]bool{}, corrupt: map[string]bool{}}
}

type memPending struct {
	s      *memStore
	handle string
}

func (s *memStore) Begin(job string) (Pending, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failBegin != nil {
		return nil, s.failBegin
	}
	s.seq[job]++
	h := fmt.Sprintf("%s/%06d", job, s.seq[job])
	s.pending[h] = true
	return &memPending{s, h}, nil
}
func (p *memPending) Handle() string { return p.handle }
func (p *memPending) NodeDir(node string) (string, error) {
	if err := p.s.nodeDirErr(); err != nil {
		return "", err
	}
	return "/mem/" + p.handle + "/" + node, nil
}
func (p *memPending) SharedDir() (string, error) {
	if err := p.s.nodeDirErr(); err != nil {
		return "", err
	}
	return "/mem/" + p.handle + "/shared", nil
}
func (s *memStore) nodeDirErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failNodeDir
}
func (p *memPending) Commit(m Manifest) error {
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	if p.s.failCommit != nil {
		return p.s.failCommit
	}
	delete(p.s.pending, p.handle)
	p.s.committed[p.handle] = m
	return nil
}
func (p *memPending) Abort() error {
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	delete(p.s.pending, p.handle)
	return nil
}
func (s *memStore) Verify(_ context.Context, h string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.committed[h]; !ok {
		return fmt.Errorf("%w: no checkpoint %s", agentapi.ErrNotFound, h)
	}
	if s.corrupt[h] {
		return errors.New("image pages-1.img: sha256 mismatch")
	}
	return nil
}

// VerifyLayout is Verify: the fake's corruption stands for any failure.
func (s *memStore) VerifyLayout(ctx context.Context, h string) error { return s.Verify(ctx, h) }

// NodeManifestSHA256 is "": the fake store's checkpoints hold no images
// for a shim to verify.
func (s *memStore) NodeManifestSHA256(h, node string) (string, error) { return "", nil }
func (s *memStore) Load(h string) (Manifest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.committed[h]
	if !ok {
		return Manifest{}, fmt.Errorf("%w: no checkpoint %s", agentapi.ErrNotFound, h)
	}
	return m, nil
}
func (s *memStore) List(job string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for h := range s.committed {
		if strings.HasPrefix(h, job+"/") {
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out, nil
}
func (s *memStore) Latest(job string) (string, error) {
	all, _ := s.List(job)
	if len(all) == 0 {
		return "", agentapi.ErrNotFound
	}
	return all[len(all)-1], nil
}
func (s *memStore) NodeDir(h, node string) (string, error) { return "/mem/" + h + "/" + node, nil }
func (s *memStore) Recover() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for h := range s.pending {
		out = append(out, h)
		delete(s.pending, h)
	}
	return out, nil
}
func (s *memStore) Sweep(string) error { return nil }

func (s *memStore) Prune(job string, keep int, upTo string) ([]string, error) {
	if s.onPrune != nil {
		s.onPrune(job)
	}
	all, _ := s.List(job)
	// Those newer than upTo all stay (handles of one job sort by seq).
	all = slices.DeleteFunc(all, func(h string) bool { return h > upTo })
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []string
	for len(all) > keep {
		delete(s.committed, all[0])
		gone = append(gone, all[0])
		all = all[1:]
	}
	return gone, nil
}
