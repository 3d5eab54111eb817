package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/internal/atomicfile"
)

// Host-local checkpoints (agentapi.CheckpointHolder): a shim with an image
// directory keeps committed images in a store of its own,
// <image-dir>/checkpoints/<job>/<seq>/<node>, root's and 0700 like the
// rest of the image directory. The coordinator's catalog keeps the signed
// job manifest, which names every node manifest by its SHA-256; the images
// are only here and on the hosts that copied them (Fetch: a replica, or a
// restart's destination). A copy is fetched into <node>.part and renamed
// into place only once every file verified against that SHA-256 (from
// <image-dir>/fetching/<job>/<seq>/<node>: a node manifest names its
// directory), and a dump is made in <image-dir>/dumping/<job>/<seq>/<node>
// and renamed in once its node manifest is written, so a directory in the
// store is always whole. Unlike migration
// images, the store outlives the shim.

// storeRoot is the shim's checkpoint store.
func (a *Agent) storeRoot() string { return filepath.Join(a.cfg.ImageDir, "checkpoints") }

// fetchingDir is where the copy of the job-node's images in dir (in the
// store) is made.
func (a *Agent) fetchingDir(dir string) string { return a.workDir("fetching", dir) }

// workDir is where the images that go to dir (in the store) are made by
// kind of work: fetching (a copy) or dumping (a dump). A shim that ends
// halfway leaves them there, and its next start removes them (clearParts):
// the store only ever gets whole images, by a rename.
func (a *Agent) workDir(kind, dir string) string {
	rel, _ := filepath.Rel(a.storeRoot(), dir)
	return filepath.Join(a.cfg.ImageDir, kind, rel)
}

// storeDir is where the images of job-node node of checkpoint handle are
// kept, once handle and node are checked to be names that stay below the
// store.
func (a *Agent) storeDir(handle, node string) (string, error) {
	if a.cfg.ImageDir == "" {
		return "", fmt.Errorf("%w: this shim keeps no host-local checkpoints: it has no image directory (torpor shim --image-dir)", agentapi.ErrInvalid)
	}
	if _, _, err := catalog.ParseHandle(handle); err != nil {
		return "", fmt.Errorf("%w: %v", agentapi.ErrInvalid, err)
	}
	job, seq, _ := strings.Cut(handle, "/") // canonical: ParseHandle accepted it
	if err := checkNames(job, node); err != nil {
		return "", err
	}
	return filepath.Join(a.storeRoot(), job, seq, node), nil
}

// Holds implements agentapi.CheckpointHolder.
func (a *Agent) Holds() bool { return a.cfg.ImageDir != "" }

// makeInStore creates the directories above dir, root's and 0700, checks
// that only root can write to any of them up to the image directory, and
// runs create, which makes dir (makeRootOnly).
func (a *Agent) makeInStore(dir string, create func() error) error {
	return a.makeRootOnly(dir, a.cfg.ImageDir, create)
}

// freshDir makes dir empty and new: what an earlier attempt left there goes.
func freshDir(dir string) func() error {
	return func() error {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		return os.Mkdir(dir, 0o700)
	}
}

// dumpStored dumps n into the store under req.Checkpoint: a host-local
// checkpoint. Images an earlier, uncommitted attempt left there are
// replaced; on failure nothing is left.
func (a *Agent) dumpStored(ctx context.Context, n *node, ref agentapi.NodeRef, req agentapi.DumpRequest) (agentapi.DumpResult, error) {
	dir, err := a.storeDir(req.Checkpoint, ref.Node)
	if err != nil {
		return agentapi.DumpResult{}, err
	}
	if job, _, _ := strings.Cut(req.Checkpoint, "/"); job != ref.Job {
		return agentapi.DumpResult{}, fmt.Errorf("%w: checkpoint %s is not one of job %s", agentapi.ErrInvalid, req.Checkpoint, ref.Job)
	}
	work := a.workDir("dumping", dir)
	if err := a.makeInStore(work, freshDir(work)); err != nil {
		return agentapi.DumpResult{}, fmt.Errorf("checkpoint store: %w", err)
	}
	req.Dir = work
	req.Shared = "" // this job-node captures every file it holds
	res, err := a.dump(ctx, n, ref, req)
	if err == nil {
		res.NodeManifestSHA256, err = catalog.NodeManifestSHA256(work)
	}
	if err == nil {
		err = a.intoStore(work, dir)
	}
	a.dropWork(work) // gone once renamed
	if err != nil {
		return agentapi.DumpResult{}, err
	}
	a.wrote(ref, req.Checkpoint, dir)
	return res, nil
}

// intoStore moves the whole images in work to dir in the store, replacing
// what an earlier, uncommitted attempt left there.
func (a *Agent) intoStore(work, dir string) error {
	err := a.makeInStore(dir, func() error {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove stale images: %w", err)
		}
		return os.Rename(work, dir)
	})
	if err != nil {
		return fmt.Errorf("checkpoint store: %w", err)
	}
	return nil
}

// dropWork removes work (from workDir) and the directories above it that
// are left empty.
func (a *Agent) dropWork(work string) {
	os.RemoveAll(work)
	a.pruneAbove(work, a.cfg.ImageDir)
}

// heldSHA256 is the SHA-256 of the node manifest in dir, or "" when dir
// holds no images.
func heldSHA256(dir string) string {
	sum, err := catalog.NodeManifestSHA256(dir)
	if err != nil {
		return ""
	}
	return sum
}

// Fetch implements agentapi.CheckpointHolder.
func (a *Agent) Fetch(ctx context.Context, handle, node, from, sum string, rate int64) (int64, error) {
	dir, err := a.storeDir(handle, node)
	if err != nil {
		return 0, err
	}
	if !isHex64(sum) {
		return 0, fmt.Errorf("%w: fetch %s of %s: %q is no SHA-256", agentapi.ErrInvalid, node, handle, sum)
	}
	unlock := a.storing.lock(handle + "/" + node)
	defer unlock()
	if heldSHA256(dir) == sum {
		return 0, nil
	}
	part := a.fetchingDir(dir)
	if err := a.makeInStore(part, freshDir(part)); err != nil {
		return 0, fmt.Errorf("checkpoint store: %w", err)
	}
	defer a.dropWork(part) // gone once renamed
	start := time.Now()
	job, _, _ := strings.Cut(handle, "/")
	got, files, err := func() (int64, int, error) {
		r, err := a.receiveImages(ctx, part, &apiv1.ImagesRequest{Ref: &apiv1.NodeRef{Job: job, Node: node}, Checkpoint: handle, Stored: true}, from, rate)
		if err != nil {
			return 0, 0, err
		}
		if r.sum != sum {
			return 0, 0, fmt.Errorf("%w: the images of %s from %s are of node manifest %s, not %s", catalog.ErrCorrupt, node, from, r.sum, sum)
		}
		imgs, err := catalog.OpenNodeImages(part, sum)
		if err != nil {
			return 0, 0, err
		}
		defer imgs.Close()
		return r.bytes, r.files, imgs.Verify(ctx, func(string) bool { return true })
	}()
	if err != nil {
		return 0, fmt.Errorf("fetch %s of checkpoint %s from %s: %w", node, handle, from, corrupt(err))
	}
	if err := a.intoStore(part, dir); err != nil {
		return 0, err
	}
	a.log.Info("fetched checkpoint images", "ckpt", handle, "node", node, "from", from, "files", files, "bytes", got,
		"rate", rate, "elapsed", time.Since(start).Round(time.Millisecond))
	return got, nil
}

// Held implements agentapi.CheckpointHolder.
func (a *Agent) Held(ctx context.Context, job string, verify bool) ([]agentapi.HeldImages, error) {
	if a.cfg.ImageDir == "" {
		return nil, nil
	}
	if err := checkNames(job, "n"); err != nil {
		return nil, err
	}
	jd := filepath.Join(a.storeRoot(), job)
	seqs, err := os.ReadDir(jd)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []agentapi.HeldImages
	for _, s := range seqs {
		handle := job + "/" + s.Name()
		if _, _, err := catalog.ParseHandle(handle); err != nil || !s.IsDir() {
			continue
		}
		nodes, err := os.ReadDir(filepath.Join(jd, s.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // dropped (pruned) while this listed
		}
		if err != nil {
			return nil, err
		}
		for _, n := range nodes {
			if !n.IsDir() || ctx.Err() != nil {
				continue
			}
			dir := filepath.Join(jd, s.Name(), n.Name())
			sum := heldSHA256(dir)
			if sum == "" {
				continue
			}
			h := agentapi.HeldImages{Checkpoint: handle, Node: n.Name(), NodeManifestSHA256: sum}
			if verify {
				err := a.verifyHeld(ctx, handle, n.Name(), dir, sum)
				switch {
				case err == nil:
				case ctx.Err() != nil:
					return nil, ctx.Err()
				case errors.Is(err, agentapi.ErrCorrupt):
					h.Corrupt = err.Error()
				default:
					if _, serr := os.Lstat(dir); errors.Is(serr, fs.ErrNotExist) {
						continue // dropped (pruned) while it was read
					}
					return nil, err
				}
			}
			out = append(out, h)
		}
	}
	return out, ctx.Err()
}

// verifyHeld hashes every file of the store's copy of node of handle (in
// dir, its node manifest's SHA-256 sum) against that node manifest. A copy
// that fails is set aside, as a restore from it would.
func (a *Agent) verifyHeld(ctx context.Context, handle, node, dir, sum string) (err error) {
	defer a.setAsideOnCorrupt(handle, node, &err)
	imgs, err := catalog.OpenNodeImages(dir, sum)
	if err != nil {
		return corrupt(err)
	}
	defer imgs.Close()
	return corrupt(imgs.Verify(ctx, func(string) bool { return true }))
}

// Drop implements agentapi.CheckpointHolder.
func (a *Agent) Drop(_ context.Context, handle string) error {
	dir, err := a.storeDir(handle, "n")
	if err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("drop checkpoint %s: %w", handle, err)
	}
	a.pruneAbove(filepath.Dir(dir), a.storeRoot()) // the job's, once empty
	a.dropWork(a.workDir(setAsideKind, filepath.Dir(dir)))
	a.log.Info("dropped checkpoint images", "ckpt", handle)
	return nil
}

// setAsideKind is the work directory (workDir) of the copies a restore
// found corrupt: <image-dir>/corrupt/<job>/<seq>/<node>.
const setAsideKind = "corrupt"

// setAside moves this store's copy of job-node node of checkpoint handle,
// which a restore found corrupt (why), out of the store: Held no longer
// lists it, so the coordinator has another host's copy fetched, and no
// image is deleted on the strength of one failed verification. Drop
// removes it with the rest of the checkpoint. It says whether the copy
// left the store.
func (a *Agent) setAside(handle, node string, why error) bool {
	dir, err := a.storeDir(handle, node)
	if err != nil {
		return false
	}
	unlock := a.storing.lock(handle + "/" + node)
	defer unlock()
	aside := a.workDir(setAsideKind, dir)
	err = a.makeInStore(aside, func() error {
		if err := os.RemoveAll(aside); err != nil { // an earlier corrupt copy of the same
			return err
		}
		return os.Rename(dir, aside)
	})
	if err != nil {
		a.log.Error("a corrupt copy of checkpoint images stays in the store: setting it aside failed", "ckpt", handle, "node", node, "err", err, "why", why)
		return false
	}
	a.log.Warn("a corrupt copy of checkpoint images was set aside", "ckpt", handle, "node", node, "to", aside, "why", why)
	return true
}

// setAsideOnCorrupt is deferred by a restore from this store's copy of
// node of handle: when it failed verification, the copy is set aside and
// the error says so.
func (a *Agent) setAsideOnCorrupt(handle, node string, err *error) {
	if *err == nil || !errors.Is(*err, agentapi.ErrCorrupt) {
		return
	}
	if a.setAside(handle, node, *err) {
		*err = fmt.Errorf("%w (%s)", *err, agentapi.SetAsideNote)
	}
}

// keptManifestName is the job manifest a store keeps in a checkpoint's
// directory, next to its job-nodes' (a file: no job-node directory).
const keptManifestName = "job-manifest.json"

// maxKeptManifest bounds a kept job manifest (the catalog writes far less).
const maxKeptManifest = 4 << 20

// KeepManifest implements agentapi.CheckpointHolder.
func (a *Agent) KeepManifest(_ context.Context, handle string, manifest []byte) error {
	dir, err := a.storeDir(handle, "n")
	if err != nil {
		return err
	}
	if len(manifest) == 0 || len(manifest) > maxKeptManifest {
		return fmt.Errorf("%w: a job manifest of %d bytes for %s", agentapi.ErrInvalid, len(manifest), handle)
	}
	// A Drop that removes the directory meanwhile fails the write; nothing
	// is left of either.
	ckpt := filepath.Dir(dir)
	if _, err := os.Lstat(ckpt); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: this store holds no images of %s", agentapi.ErrNotFound, handle)
	}
	if err := atomicfile.Write(filepath.Join(ckpt, keptManifestName), manifest, 0o600); err != nil {
		return fmt.Errorf("keep the job manifest of %s: %w", handle, err)
	}
	return nil
}

// Manifests implements agentapi.CheckpointHolder.
func (a *Agent) Manifests(ctx context.Context) (map[string][]byte, error) {
	out := map[string][]byte{}
	if a.cfg.ImageDir == "" {
		return out, nil
	}
	jobs, err := os.ReadDir(a.storeRoot())
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		seqs, err := os.ReadDir(filepath.Join(a.storeRoot(), j.Name()))
		if err != nil {
			continue // dropped while this listed, or no directory
		}
		for _, s := range seqs {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			handle := j.Name() + "/" + s.Name()
			if _, err := a.storeDir(handle, "n"); err != nil {
				continue
			}
			b, err := readKept(filepath.Join(a.storeRoot(), j.Name(), s.Name(), keptManifestName))
			if err == nil {
				out[handle] = b
			}
		}
	}
	return out, nil
}

// readKept reads a kept job manifest: a regular file, not followed if a
// link, of at most maxKeptManifest bytes.
func readKept(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is no regular file", p)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeptManifest+1))
	if err == nil && len(b) > maxKeptManifest {
		err = fmt.Errorf("%s is larger than any job manifest", p)
	}
	return b, err
}

// SendStored implements agentapi.ImageServer: every file of job-node
// node's images of checkpoint handle in the store, whole.
func (a *Agent) SendStored(ctx context.Context, handle, node string, send func(agentapi.ImageChunk) error) (string, error) {
	dir, err := a.storeDir(handle, node)
	if err != nil {
		return "", err
	}
	sum, err := catalog.NodeManifestSHA256(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: this host holds no images of %s of checkpoint %s", agentapi.ErrNotFound, node, handle)
	}
	if err != nil {
		return "", err
	}
	// Every file is verified against the node manifest as it is sent: a
	// copy that rotted here is set aside, and the fetch fails at its end
	// (the receiver, which verifies too, keeps nothing of it).
	imgs, err := catalog.OpenNodeImages(dir, sum)
	if err != nil {
		err = corrupt(err)
		a.setAsideOnCorrupt(handle, node, &err)
		return "", fmt.Errorf("send the images of %s of checkpoint %s: %w", node, handle, err)
	}
	defer imgs.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	var (
		check   *catalog.FileCheck
		current string
	)
	checked := func(c agentapi.ImageChunk) error {
		if c.Name != current {
			if check != nil {
				if err := check.Done(); err != nil {
					return err
				}
			}
			check, current = nil, c.Name
			if c.Name != catalog.NodeManifestName {
				var err error
				if check, err = imgs.Check(c.Name); err != nil {
					return err
				}
			}
		}
		if check != nil {
			check.Write(c.Data)
		}
		return send(c)
	}
	s := &imageSender{root: root, send: checked, sent: map[string]int64{}, open: map[string]*os.File{}, buf: make([]byte, imageChunk), log: a.log}
	defer s.close()
	err = fs.WalkDir(root.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return s.sendRest(name)
	})
	if err == nil && check != nil {
		err = check.Done()
	}
	if err != nil {
		err = corrupt(err)
		a.setAsideOnCorrupt(handle, node, &err)
		return "", fmt.Errorf("send the images of %s of checkpoint %s: %w", node, handle, err)
	}
	return sum, nil
}

// clearParts removes the copies an earlier shim was fetching, and the
// dumps it was making, when it ended: none is under way when a shim starts.
func (a *Agent) clearParts() error {
	if a.cfg.ImageDir == "" {
		return nil
	}
	for _, kind := range []string{"fetching", "dumping"} {
		if err := os.RemoveAll(filepath.Join(a.cfg.ImageDir, kind)); err != nil {
			return fmt.Errorf("remove the partial images an earlier shim left: %w", err)
		}
	}
	return nil
}

// keyedLocks is a mutex per key, made on first use and dropped when no
// one holds or waits for it.
type keyedLocks struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	users int
}

// lock locks key and returns its unlock.
func (k *keyedLocks) lock(key string) func() {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyedLock{}
		k.locks[key] = l
	}
	l.users++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

var _ agentapi.CheckpointHolder = (*Agent)(nil)
