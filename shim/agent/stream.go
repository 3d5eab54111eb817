package agent

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/catalog"
	"github.com/torpor-hpc/torpor/fault"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// Streamed migrations (agentapi.DumpRequest.Local, RestoreRequest.From):
// hosts that share no file system move a job-node's images from shim to
// shim. The source dumps into its own image directory and keeps the images
// while the job-node stays here, frozen (until it is destroyed after the
// move, or unlocked or thawed by a rollback); the destination fetches them
// over the shims' mutual TLS into its own image directory and restores
// from there, verifying every file against the node manifest whose SHA-256
// the source reported, exactly as a restart's images are verified. Both
// directories are scratch: <image-dir>/migrations/<host>/out/<job>/<node>
// on the source, .../in/<job>/<node> on the destination (a node manifest
// names its job-node's directory), removed when the job-node leaves, and
// all of <image-dir>/migrations/<host> when the shim starts.

// imageChunk is the size of the pieces a source sends.
const imageChunk = 1 << 20

// StreamsImages says the shim has an image directory of its own: it takes
// part in streamed migrations.
func (a *Agent) StreamsImages() bool { return a.cfg.ImageDir != "" }

// migrationsDir is this shim's part of the image directory.
func (a *Agent) migrationsDir() string {
	return filepath.Join(a.cfg.ImageDir, "migrations", a.cfg.Host)
}

// migrationDir is where job/node's images of one side of a migration go.
func (a *Agent) migrationDir(job, node, side string) string {
	return filepath.Join(a.migrationsDir(), side, job, node)
}

// freshMigrationDir makes migrationDir empty and new: root's, 0700, below
// directories only root can write to up to the image directory.
func (a *Agent) freshMigrationDir(job, node, side string) (string, error) {
	if a.cfg.ImageDir == "" {
		return "", fmt.Errorf("%w: this shim has no image directory for a streamed migration (torpor shim --image-dir)", agentapi.ErrInvalid)
	}
	dir := a.migrationDir(job, node, side)
	if err := a.makeInStore(dir, freshDir(dir)); err != nil {
		return "", fmt.Errorf("migration images of %s/%s: %w", job, node, err)
	}
	return dir, nil
}

// clearMigrations removes what an earlier shim of this host left of its
// migrations: none is in progress when a shim starts.
func (a *Agent) clearMigrations() error {
	if a.cfg.ImageDir == "" {
		return nil
	}
	if err := os.RemoveAll(a.migrationsDir()); err != nil {
		return fmt.Errorf("remove the migration images an earlier shim left: %w", err)
	}
	return nil
}

// dropMigrationImages removes job/node's migration images of both sides,
// and the directories above them that are left empty.
func (a *Agent) dropMigrationImages(job, node string) {
	if a.cfg.ImageDir == "" {
		return
	}
	for _, side := range []string{"out", "in"} {
		dir := a.migrationDir(job, node, side)
		if err := os.RemoveAll(dir); err != nil {
			a.log.Warn("remove migration images", "job", job, "node", node, "err", err)
		}
		a.pruneAbove(dir, a.migrationsDir()) // unless another job-node's are there
	}
}

// dumpLocal dumps n into a fresh migration directory of its own and keeps
// the images there, served to other shims (SendImages) while they are
// written and after, until the job-node leaves or is rolled back here.
func (a *Agent) dumpLocal(ctx context.Context, n *node, ref agentapi.NodeRef, req agentapi.DumpRequest) (agentapi.DumpResult, error) {
	a.dropLocalDump(n)
	dir, err := a.freshMigrationDir(ref.Job, ref.Node, "out")
	if err != nil {
		return agentapi.DumpResult{}, err
	}
	req.Dir = dir
	req.Shared = "" // this job-node captures every file it holds
	n.setLocal(req.Checkpoint)
	res, err := a.dump(ctx, n, ref, req)
	if err == nil {
		res.NodeManifestSHA256, err = catalog.NodeManifestSHA256(dir)
	}
	n.endLocal(res.NodeManifestSHA256, err)
	if err != nil {
		a.dropLocalDump(n)
		return agentapi.DumpResult{}, err
	}
	return res, nil
}

// setLocal makes checkpoint n's local dump, begun now.
func (n *node) setLocal(checkpoint string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.local, n.localDone, n.localSHA, n.localErr = checkpoint, make(chan struct{}), "", nil
	n.localChanged()
}

// endLocal records how n's local dump ended.
func (n *node) endLocal(sha string, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.localSHA, n.localErr = sha, err
	close(n.localDone)
}

// localChanged wakes waitLocal; n.mu is held.
func (n *node) localChanged() {
	if n.localSet != nil {
		close(n.localSet)
	}
	n.localSet = make(chan struct{})
}

// waitLocal waits until n's local dump is checkpoint's (begun, maybe not
// ended) and returns the channel closed when it ends.
func (n *node) waitLocal(ctx context.Context, checkpoint string) (chan struct{}, error) {
	for {
		n.mu.Lock()
		if n.local == checkpoint {
			done := n.localDone
			n.mu.Unlock()
			return done, nil
		}
		if n.localSet == nil {
			n.localSet = make(chan struct{})
		}
		changed := n.localSet
		n.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no dump of %s/%s for %s began: %w", n.job, n.spec.Name, checkpoint, ctx.Err())
		case <-changed:
		}
	}
}

// dropLocalDump removes the images n's local dump left, if any.
func (a *Agent) dropLocalDump(n *node) {
	n.mu.Lock()
	had := n.local != ""
	if had {
		n.local = ""
		n.localChanged()
	}
	n.mu.Unlock()
	if had {
		if err := os.RemoveAll(a.migrationDir(n.job, n.spec.Name, "out")); err != nil {
			a.log.Warn("remove migration images", "job", n.job, "node", n.spec.Name, "err", err)
		}
	}
}

// followPoll is how often SendImages looks for more of the memory images
// while CRIU writes them when it cannot watch their directory.
const followPoll = 2 * time.Millisecond

// SendImages implements agentapi.ImageServer: the files of the local dump
// of ref for checkpoint, the only directory it serves from. It waits for
// that dump to begin. While CRIU writes, it sends what CRIU appended to the
// memory images (pages-*.img, which CRIU only appends to, as the stream
// hasher relies on too); once the dump ended, the rest of them and every
// other file whole.
func (a *Agent) SendImages(ctx context.Context, ref agentapi.NodeRef, checkpoint string, send func(agentapi.ImageChunk) error) (string, error) {
	n, err := a.get(ref)
	if err != nil {
		return "", err
	}
	done, err := n.waitLocal(ctx, checkpoint)
	if err != nil {
		return "", err
	}
	root, err := os.OpenRoot(a.migrationDir(ref.Job, ref.Node, "out"))
	if err != nil {
		return "", err
	}
	defer root.Close()
	s := &imageSender{root: root, send: send, sent: map[string]int64{}, open: map[string]*os.File{},
		buf: make([]byte, imageChunk), corrupt: a.cfg.Faults.Has(fault.CorruptSentImages), log: a.log,
		release: func(name string, off int64) {
			n.mu.Lock()
			h := n.localHasher
			n.mu.Unlock()
			if h != nil {
				h.Release(name, off)
			}
		}}
	defer s.close()
	// Woken by CRIU's writes (see catalog.DirWatch), else by polling.
	var changed <-chan struct{}
	wait := followPoll
	if w, err := catalog.WatchDir(a.migrationDir(ref.Job, ref.Node, "out")); err == nil {
		defer w.Close()
		changed, wait = w.C, catalog.FollowSafety
	}
	start := time.Now()
	for following := true; following; {
		select {
		case <-done:
			following = false
		default:
		}
		moved, err := s.followPages()
		if err != nil {
			return "", fmt.Errorf("send the images of %s/%s: %w", ref.Job, ref.Node, err)
		}
		if following && moved == 0 {
			select {
			case <-done:
			case <-ctx.Done():
				return "", ctx.Err()
			case <-changed:
			case <-time.After(wait):
			}
		}
	}
	duringDump := s.bytes
	n.mu.Lock()
	sha, derr, still := n.localSHA, n.localErr, n.local == checkpoint
	n.mu.Unlock()
	if derr != nil || !still {
		return "", fmt.Errorf("%w: the dump of %s/%s for %s failed or was dropped: %v", ErrNoNode, ref.Job, ref.Node, checkpoint, derr)
	}
	err = fs.WalkDir(root.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		return s.sendRest(name)
	})
	if err != nil {
		return "", fmt.Errorf("send the images of %s/%s: %w", ref.Job, ref.Node, err)
	}
	a.log.Info("sent migration images", "job", ref.Job, "node", ref.Node, "ckpt", checkpoint, "files", len(s.sent), "bytes", s.bytes,
		"during_dump", duringDump, "elapsed", time.Since(start))
	a.dropSentDump(n, checkpoint)
	return sha, nil
}

// dropSentDump removes n's local dump for checkpoint once it was sent
// whole: a stop-and-copy migration has one destination, and a rollback
// thaws the tree that is still here, so nothing reads those images again.
// Keeping them until the job-node leaves held a second copy of its memory
// in this host's page cache while the destination restores. A post-copy
// source keeps them: its CRIU, serving the pages, still writes there.
//
// This runs on the sender's goroutine, not in an operation the coordinator
// serializes: n.mu is held while the files go, so that a local dump
// beginning meanwhile (dumpLocal takes n.mu before it touches the
// directory) finds them gone, and one that began first is left alone.
func (a *Agent) dropSentDump(n *node, checkpoint string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.local != checkpoint || n.pages != nil {
		return
	}
	n.local = ""
	n.localChanged()
	if err := os.RemoveAll(a.migrationDir(n.job, n.spec.Name, "out")); err != nil {
		a.log.Warn("remove sent migration images", "job", n.job, "node", n.spec.Name, "err", err)
	}
}

// imageSender sends one dump's files, each from where it last stopped.
type imageSender struct {
	root    *os.Root
	send    func(agentapi.ImageChunk) error
	sent    map[string]int64    // bytes of each file sent
	open    map[string]*os.File // files being followed
	buf     []byte
	bytes   int64
	corrupt bool // fault.CorruptSentImages
	log     interface{ Warn(string, ...any) }
	// release tells the dump's hasher what was sent of a file (nil: nobody
	// to tell).
	release func(name string, off int64)
}

func (s *imageSender) close() {
	for _, f := range s.open {
		f.Close()
	}
}

// followPages sends what was appended to the memory images since the last
// call and returns how many bytes.
func (s *imageSender) followPages() (int64, error) {
	ents, err := fs.ReadDir(s.root.FS(), ".")
	if err != nil {
		return 0, err
	}
	var moved int64
	for _, e := range ents {
		if !e.Type().IsRegular() || !criu.IsPages(e.Name()) {
			continue
		}
		k, err := s.sendFrom(e.Name())
		if err != nil {
			return moved, err
		}
		moved += k
	}
	return moved, nil
}

// sendRest sends the rest of name, and names an empty file too.
func (s *imageSender) sendRest(name string) error {
	if _, started := s.sent[name]; !started {
		if err := s.send(agentapi.ImageChunk{Name: name}); err != nil {
			return err
		}
		s.sent[name] = 0
	}
	_, err := s.sendFrom(name)
	if f := s.open[name]; f != nil {
		f.Close()
		delete(s.open, name)
	}
	return err
}

// sendFrom sends name from the last byte sent up to its current end.
func (s *imageSender) sendFrom(name string) (int64, error) {
	f := s.open[name]
	if f == nil {
		var err error
		if f, err = s.root.Open(name); err != nil {
			return 0, err
		}
		s.open[name] = f
	}
	var moved int64
	for {
		off := s.sent[name]
		k, rerr := f.ReadAt(s.buf, off)
		if k > 0 {
			if off == 0 && s.corrupt && criu.IsPages(path.Base(name)) {
				s.buf[k/2] ^= 0x01
				s.log.Warn("FAULT INJECTION: sending a memory image with a byte changed", "file", name)
			}
			if err := s.send(agentapi.ImageChunk{Name: name, Offset: off, Data: s.buf[:k]}); err != nil {
				return moved, err
			}
			s.sent[name] = off + int64(k)
			s.bytes += int64(k)
			moved += int64(k)
			if s.release != nil {
				s.release(name, s.sent[name])
			}
		}
		if rerr == io.EOF {
			return moved, nil
		}
		if rerr != nil {
			return moved, rerr
		}
	}
}

// fetchImages fetches the images of job/node's local dump for checkpoint
// from the shim at from, as they are written, into a fresh migration
// directory, and returns it with the node manifest's SHA-256 the source
// sent last. The restore then verifies every byte against the node
// manifest.
func (a *Agent) fetchImages(ctx context.Context, job, node, checkpoint, from string) (_, _ string, err error) {
	fresh, err := a.freshMigrationDir(job, node, "in")
	if err != nil {
		return "", "", err
	}
	start := time.Now()
	a.log.Info("fetching migration images", "job", job, "node", node, "ckpt", checkpoint, "from", from)
	r, err := a.receiveImages(ctx, fresh, &apiv1.ImagesRequest{Ref: &apiv1.NodeRef{Job: job, Node: node}, Checkpoint: checkpoint}, from, 0)
	if err != nil {
		os.RemoveAll(fresh)
		return "", "", err
	}
	a.log.Info("fetched migration images", "job", job, "node", node, "ckpt", checkpoint, "from", from, "files", r.files, "bytes", r.bytes,
		"write", r.write, "elapsed", time.Since(start))
	return fresh, r.sum, nil
}

// received is what receiveImages received.
type received struct {
	sum   string // the node manifest's SHA-256 the source sent last
	bytes int64
	files int
	// write is the time spent writing the bytes into the files. It is
	// logged: on a machine that must fault in memory it gave back (a VM
	// with free page reporting) it, not the network, dominated a 256 MiB
	// fetch (bench/README.md, B8).
	write time.Duration
}

// receiveImages asks the shim at from for the images req names and writes
// them into the empty directory dir, at most rate bytes/s when rate > 0.
// It takes only relative names that stay inside dir, each file from its
// start and every chunk where the last one ended. Nothing is verified
// here: the caller checks the files against the node manifest.
func (a *Agent) receiveImages(ctx context.Context, dir string, req *apiv1.ImagesRequest, from string, rate int64) (r received, err error) {
	job, node := req.GetRef().GetJob(), req.GetRef().GetNode()
	if a.cfg.PeerTLS == nil {
		return received{}, fmt.Errorf("%w: this shim has no certificate to fetch images from another shim", agentapi.ErrInvalid)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return received{}, err
	}
	defer root.Close()
	files := map[string]*os.File{}
	size := map[string]int64{}
	defer func() {
		for _, f := range files {
			if cerr := f.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
	}()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: images of %s/%s from %s: %s", catalog.ErrCorrupt, job, node, from, fmt.Sprintf(format, args...))
	}
	start := time.Now()
	recv := func(c agentapi.ImageChunk) error {
		if c.Name == "" {
			return bad("a chunk with no file name")
		}
		f := files[c.Name]
		if f == nil {
			if !filepath.IsLocal(c.Name) || strings.Contains(c.Name, `\`) {
				return bad("refusing the file name %q", c.Name)
			}
			if c.Offset != 0 {
				return bad("%s begins at offset %d", c.Name, c.Offset)
			}
			if d := filepath.Dir(c.Name); d != "." {
				if err := root.MkdirAll(d, 0o700); err != nil {
					return err
				}
			}
			var err error
			if f, err = root.OpenFile(c.Name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
				return fmt.Errorf("images of %s/%s from %s: %w", job, node, from, err)
			}
			files[c.Name] = f
		} else if c.Offset != size[c.Name] {
			return bad("%s continues at offset %d, after %d bytes", c.Name, c.Offset, size[c.Name])
		}
		w := time.Now()
		_, err := f.Write(c.Data)
		r.write += time.Since(w)
		if err != nil {
			return fmt.Errorf("images of %s/%s: %w", job, node, err)
		}
		size[c.Name] += int64(len(c.Data))
		r.bytes += int64(len(c.Data))
		if rate > 0 {
			// Throttled: never ahead of rate bytes/s since the start.
			if ahead := time.Duration(float64(r.bytes)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(ahead):
				}
			}
		}
		return nil
	}
	r.sum, err = agentapi.ReceiveImages(ctx, from, a.cfg.PeerTLS, req, recv)
	if err != nil {
		return received{}, fmt.Errorf("images of %s/%s from %s: %w", job, node, from, err)
	}
	r.files = len(files)
	return r, nil
}
