package catalog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torpor-hpc/torpor/internal/atomicfile"
)

// Pending is a checkpoint being written: its directory exists, it has no job
// manifest yet, and it is invisible to List and Get until Commit.
type Pending struct {
	s   *Store
	job string
	seq uint64
	dir string

	mu        sync.Mutex
	committed bool
	aborted   bool
}

// Begin allocates the next sequence number of job and creates its directory (0700).
func (s *Store) Begin(job string) (*Pending, error) {
	if err := validName("job id", job); err != nil {
		return nil, fmt.Errorf("begin checkpoint: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		seq, err := s.nextSeq(job)
		if err != nil {
			return nil, err
		}
		dir := s.ckptDir(job, seq)
		if err := os.Mkdir(dir, 0o700); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue // someone else's directory; the counter has moved past it
			}
			return nil, ioErr("begin checkpoint: create", dir, err)
		}
		if err := os.Mkdir(filepath.Join(dir, nodesDirName), 0o700); err != nil {
			os.RemoveAll(dir)
			return nil, ioErr("begin checkpoint: create", filepath.Join(dir, nodesDirName), err)
		}
		// The checkpoint's entry in its job's directory, on disk before
		// anything is written below it (the commit syncs the checkpoint's
		// own directory with its manifest; the shims sync what they wrote
		// before an older checkpoint is pruned).
		if err := withHint(atomicfile.SyncDir(s.jobDir(job))); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("begin checkpoint: %w", err)
		}
		p := &Pending{s: s, job: job, seq: seq, dir: dir}
		s.pending[p.Handle()] = true
		return p, nil
	}
}

// Handle is "<job>/<seq>".
func (p *Pending) Handle() string { return FormatHandle(p.job, p.seq) }

// Dir is the checkpoint directory.
func (p *Pending) Dir() string { return p.dir }

// NodeDir creates (0700) and returns the directory where the shim writes the
// images of job-node node.
func (p *Pending) NodeDir(node string) (string, error) {
	if err := validName("job-node name", node); err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", p.Handle(), err)
	}
	d := filepath.Join(p.dir, nodesDirName, node)
	if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", ioErr("create node directory", d, err)
	}
	return d, nil
}

// SharedDir creates (0700) and returns a directory every job-node of the
// checkpoint shares while it is written: the shims claim there the files
// several job-nodes hold, so that one of them captures each. It holds no
// data of the checkpoint (the captures are in the node directories, under
// the manifests) and goes with the checkpoint.
func (p *Pending) SharedDir() (string, error) {
	d := filepath.Join(p.dir, sharedDirName)
	if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", ioErr("create shared directory", d, err)
	}
	return d, nil
}

// Commit reads every node manifest, records its SHA-256, size and file count in m,
// signs m and writes manifest.json atomically. From then on the checkpoint exists.
//
// m.Nodes gives the placement of each job-node (Host, IP, Hostname); it must name
// exactly the node directories that were written. If m.Nodes is empty it is built
// from the node directories. Handle, Job, Seq and Format are filled in; Created
// defaults to now and Kind to KindCheckpoint. On error nothing becomes visible and
// the caller should Abort.
//
// With m.HostLocal the images are elsewhere (in the shims' stores): m.Nodes
// must then carry every node's digest and sizes, and no node directory is
// read.
func (p *Pending) Commit(m JobManifest) (Checkpoint, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.Handle()
	if p.committed || p.aborted {
		return Checkpoint{}, fmt.Errorf("commit %s: %w", h, ErrDone)
	}
	if m.Job != "" && m.Job != p.job {
		return Checkpoint{}, fmt.Errorf("commit %s: manifest is for job %q", h, m.Job)
	}
	m.Format, m.Handle, m.Job, m.Seq = FormatVersion, h, p.job, p.seq
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	if m.Kind == "" {
		m.Kind = KindCheckpoint
	}
	if !m.HostLocal {
		nodes, err := p.fillNodes(m.Nodes)
		if err != nil {
			return Checkpoint{}, fmt.Errorf("commit %s: %w", h, err)
		}
		m.Nodes = nodes
	}
	nodes := m.Nodes
	m.TotalBytes = 0
	for _, n := range nodes {
		m.TotalBytes += n.TotalBytes
	}
	data, err := signJobManifest(m, p.s.key)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("commit %s: %w", h, err)
	}
	if err := withHint(atomicfile.Write(filepath.Join(p.dir, JobManifestName), data, 0o600)); err != nil {
		return Checkpoint{}, fmt.Errorf("commit %s: %w", h, err)
	}
	p.committed = true
	p.s.mu.Lock()
	delete(p.s.pending, h)
	p.s.mu.Unlock()
	return Checkpoint{Handle: h, Job: p.job, Seq: p.seq, Dir: p.dir, Manifest: m}, nil
}

// fillNodes matches the requested nodes with the node directories and fills in
// digests and sizes. Every listed file is checked to exist with its recorded size
// (cheap; full hashing is Verify's job).
//
// The job-nodes' manifests are read and their files checked by up to
// fillWorkers goroutines at once: the job stays frozen until the commit
// ends, and on a shared file system each open and stat waits for a server,
// one job-node after another before (at 256 fake job-nodes on this
// machine's disk, B5, 13 ms of the commit, most of it here).
func (p *Pending) fillNodes(req []NodeRef) ([]NodeRef, error) {
	nd := filepath.Join(p.dir, nodesDirName)
	ents, err := os.ReadDir(nd)
	if err != nil {
		return nil, ioErr("read", nd, err)
	}
	onDisk := map[string]bool{}
	for _, e := range ents {
		if e.IsDir() && validName("job-node name", e.Name()) == nil {
			onDisk[e.Name()] = true
		}
	}
	if len(req) == 0 {
		for name := range onDisk {
			req = append(req, NodeRef{Name: name})
		}
		sort.Slice(req, func(i, j int) bool { return req[i].Name < req[j].Name })
	}
	if len(req) == 0 {
		return nil, errors.New("no job-node wrote any images")
	}
	seen := map[string]bool{}
	for _, n := range req {
		if err := validName("job-node name", n.Name); err != nil {
			return nil, err
		}
		if seen[n.Name] {
			return nil, fmt.Errorf("node %s listed twice", n.Name)
		}
		seen[n.Name] = true
		if !onDisk[n.Name] {
			return nil, fmt.Errorf("node %s wrote no images: its dump did not run or failed", n.Name)
		}
	}
	for name := range onDisk {
		if !seen[name] {
			return nil, fmt.Errorf("node directory %s is not part of the job manifest", name)
		}
	}
	out := make([]NodeRef, len(req))
	errs := make([]error, len(req))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(fillWorkers, len(req)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(req); i = int(next.Add(1) - 1) {
				out[i], errs[i] = fillNode(filepath.Join(nd, req[i].Name), req[i])
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err // the first job-node's, in the request's order
		}
	}
	return out, nil
}

// fillWorkers bounds the job-nodes fillNodes reads at once.
const fillWorkers = 16

// fillNode reads the node manifest of job-node n in dir, checks that every
// file it lists is there with its size, and fills in n's digest and sizes.
func fillNode(dir string, n NodeRef) (NodeRef, error) {
	nm, sum, err := readNodeManifest(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return n, fmt.Errorf("node %s has no %s: its shim did not finish the dump", n.Name, NodeManifestName)
	}
	if err != nil {
		return n, fmt.Errorf("node %s: %w", n.Name, err)
	}
	if nm.Node != n.Name {
		return n, fmt.Errorf("node %s: its node manifest is for node %q", n.Name, nm.Node)
	}
	for _, f := range nm.Files {
		fp := filepath.Join(dir, filepath.FromSlash(f.Path))
		st, err := os.Lstat(fp)
		if err != nil {
			return n, ioErr(fmt.Sprintf("node %s: image listed in its manifest:", n.Name), fp, err)
		}
		if !st.Mode().IsRegular() || st.Size() != f.Size {
			return n, fmt.Errorf("node %s: %s changed after its node manifest was written (size %d, manifest %d)", n.Name, fp, st.Size(), f.Size)
		}
	}
	n.ManifestSHA256, n.TotalBytes, n.FileCount = sum, nm.TotalBytes, len(nm.Files)
	return n, nil
}

// Abort removes the pending checkpoint's directory. It is a no-op after a previous
// Abort and refuses after a successful Commit (use Store.Delete).
func (p *Pending) Abort() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.Handle()
	if p.committed {
		return fmt.Errorf("abort %s: %w (delete it instead)", h, ErrDone)
	}
	if p.aborted {
		return nil
	}
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	if err := os.RemoveAll(p.dir); err != nil {
		return ioErr("abort checkpoint: remove", p.dir, err)
	}
	p.aborted = true
	delete(p.s.pending, h)
	return withHint(atomicfile.SyncDir(filepath.Dir(p.dir)))
}
