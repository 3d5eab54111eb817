package catalog

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/torpor-hpc/torpor/internal/atomicfile"
)

// counterName is the per-job file holding the last sequence number handed out.
const counterName = "next-seq"

// Store is the checkpoint catalog under one root directory. It is safe for
// concurrent use.
type Store struct {
	root string
	key  []byte

	mu      sync.Mutex
	pending map[string]bool // handles being written by a Pending
	// sweepMu lets one Sweep at a time remove deleted directories.
	sweepMu sync.Mutex
}

// deletedPrefix names a deleted checkpoint's directory from its deletion
// until Sweep removes it: <root>/<job>/.deleted-<seq>. It is no sequence
// number, so nothing lists or loads it.
const deletedPrefix = ".deleted-"

// Checkpoint is a committed checkpoint: one whose manifest.json exists.
type Checkpoint struct {
	Handle string // "<job>/<seq>"
	Job    string
	Seq    uint64
	Dir    string // <root>/<job>/<seq>
	// Manifest is the decoded job manifest; valid only when ManifestErr is nil.
	Manifest JobManifest
	// ManifestErr is set when manifest.json exists but cannot be read, fails its
	// signature or has an unknown format. Such a checkpoint is still listed (so
	// `torpor ls` can show it as failing verification) and never verifies.
	ManifestErr error
}

// NodeDir is where the images of job-node node are.
func (c Checkpoint) NodeDir(node string) string {
	return filepath.Join(c.Dir, nodesDirName, node)
}

// Open opens (creating it 0700 if needed) the catalog rooted at root. key signs and
// verifies job manifests; use LoadOrCreateKey.
func Open(root string, key []byte) (*Store, error) {
	if root == "" {
		return nil, errors.New("open checkpoint catalog: empty root directory")
	}
	if len(key) < 16 {
		return nil, fmt.Errorf("open checkpoint catalog: signing key is %d bytes, need at least 16 (use LoadOrCreateKey)", len(key))
	}
	root = filepath.Clean(root)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, ioErr("create checkpoint root", root, err)
	}
	st, err := os.Stat(root)
	if err != nil {
		return nil, ioErr("stat checkpoint root", root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("checkpoint root %s is not a directory", root)
	}
	return &Store{root: root, key: append([]byte(nil), key...), pending: map[string]bool{}}, nil
}

// Root is the catalog's root directory.
func (s *Store) Root() string { return s.root }

func (s *Store) jobDir(job string) string { return filepath.Join(s.root, job) }

func (s *Store) ckptDir(job string, seq uint64) string {
	return filepath.Join(s.root, job, formatSeq(seq))
}

// Jobs returns the names of the jobs that have a directory in the catalog, sorted.
func (s *Store) Jobs() ([]string, error) {
	ents, err := os.ReadDir(s.root)
	if err != nil {
		return nil, ioErr("read checkpoint root", s.root, err)
	}
	var jobs []string
	for _, e := range ents {
		if e.IsDir() && validName("job id", e.Name()) == nil {
			jobs = append(jobs, e.Name())
		}
	}
	return jobs, nil
}

// seqDirs returns the sequence numbers of every <seq> directory of job (committed
// or not), ascending. A missing job directory is an empty list.
func (s *Store) seqDirs(job string) ([]uint64, error) {
	dir := s.jobDir(job)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, ioErr("read job directory", dir, err)
	}
	var seqs []uint64
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if n, ok := parseSeq(e.Name()); ok {
			seqs = append(seqs, n)
		}
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	return seqs, nil
}

// load returns the checkpoint job/seq if it is committed; ok is false when the
// directory or its manifest.json does not exist.
func (s *Store) load(job string, seq uint64) (cp Checkpoint, ok bool, err error) {
	cp = Checkpoint{Handle: FormatHandle(job, seq), Job: job, Seq: seq, Dir: s.ckptDir(job, seq)}
	p := filepath.Join(cp.Dir, JobManifestName)
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return cp, false, nil
	}
	if err != nil {
		cp.ManifestErr = ioErr("open", p, err)
		return cp, true, nil
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		cp.ManifestErr = ioErr("read", p, err)
		return cp, true, nil
	}
	m, err := ParseJobManifest(data, s.key)
	if err == nil && (m.Job != job || m.Seq != seq) {
		err = corruptManifest(fmt.Sprintf("the manifest belongs to checkpoint %s, not to this directory", m.Handle), nil)
	}
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			c := *ce
			c.Handle = cp.Handle
			err = &c
		} else {
			err = fmt.Errorf("checkpoint %s: %w", cp.Handle, err)
		}
		cp.ManifestErr = err
		return cp, true, nil
	}
	cp.Manifest = m
	return cp, true, nil
}

// List returns the committed checkpoints of job, oldest first; job "" lists every
// job (ordered by job name, then oldest first). Checkpoints whose manifest fails its
// signature are included with ManifestErr set.
func (s *Store) List(job string) ([]Checkpoint, error) {
	var jobs []string
	if job == "" {
		var err error
		if jobs, err = s.Jobs(); err != nil {
			return nil, err
		}
	} else {
		if err := validName("job id", job); err != nil {
			return nil, fmt.Errorf("list checkpoints: %w", err)
		}
		jobs = []string{job}
	}
	var out []Checkpoint
	for _, j := range jobs {
		seqs, err := s.seqDirs(j)
		if err != nil {
			return nil, err
		}
		for _, n := range seqs {
			cp, ok, err := s.load(j, n)
			if err != nil {
				return nil, err
			}
			if ok {
				out = append(out, cp)
			}
		}
	}
	return out, nil
}

// Get returns the committed checkpoint handle. If its manifest exists but fails its
// signature, Get returns the Checkpoint (ManifestErr set) together with that error.
func (s *Store) Get(handle string) (Checkpoint, error) {
	job, seq, err := ParseHandle(handle)
	if err != nil {
		return Checkpoint{}, err
	}
	cp, ok, err := s.load(job, seq)
	if err != nil {
		return Checkpoint{}, err
	}
	if !ok {
		return Checkpoint{}, fmt.Errorf("%w: %s (`torpor ls` lists the checkpoints)", ErrNotFound, handle)
	}
	return cp, cp.ManifestErr
}

// Latest returns the newest committed checkpoint of job, verified or not (a restart
// should use LatestVerified).
func (s *Store) Latest(job string) (Checkpoint, error) {
	cps, err := s.List(job)
	if err != nil {
		return Checkpoint{}, err
	}
	if len(cps) == 0 {
		return Checkpoint{}, fmt.Errorf("%w: job %s has no committed checkpoint", ErrNotFound, job)
	}
	return cps[len(cps)-1], nil
}

// Delete removes a committed checkpoint. manifest.json goes first, so an
// interrupted Delete leaves an incomplete checkpoint that Recover removes.
// Its images are gone when Delete returns.
func (s *Store) Delete(handle string) error {
	job, seq, err := ParseHandle(handle)
	if err != nil {
		return err
	}
	s.mu.Lock()
	err = s.deleteLocked(job, seq)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.Sweep(job)
}

// deleteLocked removes the checkpoint's manifest, which deletes it, then
// moves its directory aside (deletedPrefix) for Sweep: removing thousands of
// files can take long, and the checkpoint is already gone for every reader.
func (s *Store) deleteLocked(job string, seq uint64) error {
	handle := FormatHandle(job, seq)
	if s.pending[handle] {
		return fmt.Errorf("delete %s: the checkpoint is being written; abort it instead", handle)
	}
	dir := s.ckptDir(job, seq)
	mp := filepath.Join(dir, JobManifestName)
	if err := os.Remove(mp); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s (`torpor ls` lists the checkpoints)", ErrNotFound, handle)
		}
		return ioErr("delete checkpoint: remove", mp, err)
	}
	if err := withHint(atomicfile.SyncDir(dir)); err != nil {
		return fmt.Errorf("delete checkpoint %s: %w", handle, err)
	}
	aside := filepath.Join(s.jobDir(job), deletedPrefix+formatSeq(seq))
	if err := os.Rename(dir, aside); err != nil {
		return ioErr("delete checkpoint: move aside", dir, err)
	}
	return withHint(atomicfile.SyncDir(s.jobDir(job)))
}

// Sweep removes the directories of job's deleted checkpoints (Delete, Prune,
// and any an interrupted run left). The catalog stays usable meanwhile.
func (s *Store) Sweep(job string) error {
	if err := validName("job id", job); err != nil {
		return fmt.Errorf("sweep deleted checkpoints: %w", err)
	}
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	jd := s.jobDir(job)
	ents, err := os.ReadDir(jd)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return ioErr("read job directory", jd, err)
	}
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), deletedPrefix) {
			continue
		}
		p := filepath.Join(jd, e.Name())
		if err := os.RemoveAll(p); err != nil {
			return ioErr("remove deleted checkpoint", p, err)
		}
	}
	return nil
}

// Prune deletes the oldest committed checkpoints of job so that the newest keep
// remain, and returns the deleted handles, oldest first. Their directories
// stay, moved aside, until Sweep.
func (s *Store) Prune(job string, keep int) ([]string, error) {
	return s.PruneUpTo(job, keep, math.MaxUint64)
}

// PruneUpTo is Prune among the checkpoints of job up to sequence number
// upTo: every newer one stays, and counts for none of the keep. A
// coordinator prunes up to the newest checkpoint it knows to be on disk.
func (s *Store) PruneUpTo(job string, keep int, upTo uint64) ([]string, error) {
	if keep < 1 {
		return nil, fmt.Errorf("prune checkpoints of %s: keep must be at least 1, got %d", job, keep)
	}
	if err := validName("job id", job); err != nil {
		return nil, fmt.Errorf("prune checkpoints: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seqs, err := s.committedSeqs(job)
	if err != nil {
		return nil, err
	}
	seqs = slices.DeleteFunc(seqs, func(n uint64) bool { return n > upTo })
	var deleted []string
	for i := 0; i+keep < len(seqs); i++ {
		if err := s.deleteLocked(job, seqs[i]); err != nil {
			return deleted, fmt.Errorf("prune checkpoints of %s: %w", job, err)
		}
		deleted = append(deleted, FormatHandle(job, seqs[i]))
	}
	return deleted, nil
}

// committedSeqs returns the sequence numbers of job's committed checkpoints,
// ascending: the ones List returns, without reading their manifests (a
// manifest that cannot be read or fails its signature still counts, as in
// List). The manifest of a large job is MBs: Prune after every checkpoint
// must not decode the ones it keeps.
func (s *Store) committedSeqs(job string) ([]uint64, error) {
	seqs, err := s.seqDirs(job)
	if err != nil {
		return nil, err
	}
	out := seqs[:0]
	for _, n := range seqs {
		p := filepath.Join(s.ckptDir(job, n), JobManifestName)
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		out = append(out, n)
	}
	return out, nil
}

// Recover removes every incomplete checkpoint (a <seq> directory without
// manifest.json: a commit that never finished, or an interrupted Delete) of every
// job, the directories of deleted ones (Sweep) and leftover temporary files,
// and returns the removed handles. The
// coordinator calls it when it starts; checkpoints being written through this Store
// are left alone.
func (s *Store) Recover() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	jobs, err := s.Jobs()
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, job := range jobs {
		jd := s.jobDir(job)
		if err := removeTemps(jd); err != nil {
			return removed, err
		}
		if err := s.Sweep(job); err != nil {
			return removed, err
		}
		seqs, err := s.seqDirs(job)
		if err != nil {
			return removed, err
		}
		for _, n := range seqs {
			h := FormatHandle(job, n)
			if s.pending[h] {
				continue
			}
			dir := s.ckptDir(job, n)
			_, err := os.Lstat(filepath.Join(dir, JobManifestName))
			if err == nil {
				if err := removeTemps(dir); err != nil {
					return removed, err
				}
				continue
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return removed, ioErr("recover: stat", filepath.Join(dir, JobManifestName), err)
			}
			if err := os.RemoveAll(dir); err != nil {
				return removed, ioErr("recover: remove incomplete checkpoint", dir, err)
			}
			removed = append(removed, h)
		}
		if err := withHint(atomicfile.SyncDir(jd)); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// removeTemps removes leftovers of atomicfile.Write directly inside dir.
func removeTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return ioErr("read directory", dir, err)
	}
	for _, e := range ents {
		if e.Type().IsRegular() && atomicfile.IsTemp(e.Name()) {
			p := filepath.Join(dir, e.Name())
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return ioErr("remove temporary file", p, err)
			}
		}
	}
	return nil
}

// nextSeq allocates the next sequence number of job; s.mu must be held. The
// counter is written before the directory is created, so a crash never lets a
// number be handed out twice.
func (s *Store) nextSeq(job string) (uint64, error) {
	jd := s.jobDir(job)
	if err := os.MkdirAll(jd, 0o700); err != nil {
		return 0, ioErr("create job directory", jd, err)
	}
	cp := filepath.Join(jd, counterName)
	last, _, err := s.lastSeq(job)
	if err != nil {
		return 0, err
	}
	seqs, err := s.seqDirs(job)
	if err != nil {
		return 0, err
	}
	if len(seqs) > 0 && seqs[len(seqs)-1] > last {
		last = seqs[len(seqs)-1]
	}
	next := last + 1
	if err := withHint(atomicfile.Write(cp, []byte(strconv.FormatUint(next, 10)+"\n"), 0o600)); err != nil {
		return 0, fmt.Errorf("allocate checkpoint number for %s: %w", job, err)
	}
	return next, nil
}

// Superseded says whether a copy of checkpoint handle kept elsewhere (a
// shim's store) is one the catalog let go: the catalog numbered it (its
// job's sequence counter is at or past it), holds no checkpoint under it,
// committed or being written, and holds at least keep committed
// checkpoints of the job numbered after it, so that a retention of keep
// would have pruned it. keep < 1 is never superseded: the catalog keeps
// everything. A catalog that lost the job's counter knows nothing of it.
func (s *Store) Superseded(handle string, keep int) (bool, error) {
	job, seq, err := ParseHandle(handle)
	if err != nil || keep < 1 {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[handle] {
		return false, nil
	}
	last, counted, err := s.lastSeq(job)
	if err != nil || !counted || seq > last {
		return false, err
	}
	seqs, err := s.committedSeqs(job)
	if err != nil {
		return false, err
	}
	newer := 0
	for _, n := range seqs {
		switch {
		case n == seq:
			return false, nil
		case n > seq:
			newer++
		}
	}
	return newer >= keep, nil
}

// lastSeq reads job's sequence counter: the last number handed out, and
// whether the counter exists.
func (s *Store) lastSeq(job string) (uint64, bool, error) {
	cp := filepath.Join(s.jobDir(job), counterName)
	data, err := os.ReadFile(cp)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, ioErr("read sequence counter", cp, err)
	}
	last, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("sequence counter %s is damaged (%q): write the highest sequence number ever used for job %s into it", cp, data, job)
	}
	return last, true, nil
}

// ManifestBytes returns the signed job manifest of the committed checkpoint
// handle as it is on disk, once its signature is checked: what a shim keeps
// next to a host-local checkpoint's images (Import takes it back).
func (s *Store) ManifestBytes(handle string) ([]byte, error) {
	job, seq, err := ParseHandle(handle)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(s.ckptDir(job, seq), JobManifestName)
	f, err := os.Open(p)
	if err != nil {
		return nil, ioErr("open", p, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, ioErr("read", p, err)
	}
	m, err := ParseJobManifest(data, s.key)
	if err != nil {
		return nil, err
	}
	if m.Handle != handle {
		return nil, corruptManifest(fmt.Sprintf("the manifest belongs to checkpoint %s, not to this directory", m.Handle), nil)
	}
	return data, nil
}

// Import adds a host-local checkpoint to the catalog from its signed job
// manifest, as ManifestBytes returned it: how a coordinator whose catalog
// was lost (a new disk, another host) gets back what the shims keep. The
// signature must verify with this store's key, so nothing but a manifest
// this catalog's key signed comes in. A checkpoint the catalog has
// committed already stays as it is (imported is false); one being written
// under that handle is an error. One whose number the catalog handed out
// (its job's sequence counter is at or past it) and that it holds no more
// is ErrDeleted: it was deleted or pruned while a shim that keeps a copy
// was down, or its commit never finished. Only a catalog that lost the
// job's counter with the rest, what Import is for, takes it.
func (s *Store) Import(data []byte) (handle string, imported bool, err error) {
	m, err := ParseJobManifest(data, s.key)
	if err != nil {
		return "", false, fmt.Errorf("import: %w", err)
	}
	if !m.HostLocal {
		return "", false, fmt.Errorf("import %s: %w", m.Handle, corruptManifest("not a host-local checkpoint: its images would have to be in the catalog", nil))
	}
	job, seq := m.Job, m.Seq
	handle = FormatHandle(job, seq)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[handle] {
		return handle, false, fmt.Errorf("import %s: a checkpoint with that handle is being written", handle)
	}
	dir := s.ckptDir(job, seq)
	if _, err := os.Lstat(filepath.Join(dir, JobManifestName)); err == nil {
		return handle, false, nil
	}
	last, counted, err := s.lastSeq(job)
	if err != nil {
		return handle, false, fmt.Errorf("import %s: %w", handle, err)
	}
	if counted && seq <= last {
		return handle, false, fmt.Errorf("import %s: %w: its job's checkpoints are numbered up to %d here, and it is not among them", handle, ErrDeleted, last)
	}
	if err := os.MkdirAll(filepath.Join(dir, nodesDirName), 0o700); err != nil {
		return handle, false, ioErr("import: create", dir, err)
	}
	if err := withHint(atomicfile.Write(filepath.Join(dir, JobManifestName), data, 0o600)); err != nil {
		return handle, false, fmt.Errorf("import %s: %w", handle, err)
	}
	return handle, true, nil
}
