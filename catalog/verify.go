package catalog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
)

// Verify checks a committed checkpoint end to end: the job manifest's signature and
// format, that it belongs to this directory, each node manifest's SHA-256 against
// the job manifest, and every image file's presence, size and SHA-256 (files that no
// manifest lists are also refused). A failure is a *CorruptError naming the first
// bad file (errors.Is ErrCorrupt); other errors are I/O or context errors. Call it
// before every restore.
func (s *Store) Verify(ctx context.Context, handle string) error {
	cp, err := s.Get(handle)
	if err != nil {
		return err
	}
	return verifyFiles(ctx, cp)
}

// LatestVerified returns the newest checkpoint of job that passes Verify, and the
// verification errors of the newer ones it skipped (newest first), so a restart can
// fall back to the previous good checkpoint and say why. It fails with ErrNotFound
// when the job has no checkpoint, and with an error matching ErrCorrupt when none
// verifies.
func (s *Store) LatestVerified(ctx context.Context, job string) (Checkpoint, []error, error) {
	cps, err := s.List(job)
	if err != nil {
		return Checkpoint{}, nil, err
	}
	if len(cps) == 0 {
		return Checkpoint{}, nil, fmt.Errorf("%w: job %s has no committed checkpoint", ErrNotFound, job)
	}
	var skipped []error
	for i := len(cps) - 1; i >= 0; i-- {
		cp := cps[i]
		err := cp.ManifestErr
		if err == nil {
			err = verifyFiles(ctx, cp)
		}
		if err == nil {
			return cp, skipped, nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return Checkpoint{}, skipped, fmt.Errorf("verify checkpoints of %s: %w", job, ctxErr)
		}
		skipped = append(skipped, err)
	}
	return Checkpoint{}, skipped, fmt.Errorf("none of the %d checkpoints of job %s passes verification; newest failure: %w", len(cps), job, skipped[0])
}

// VerifyLayout is Verify without reading the images' content: the job
// manifest's signature and format, each node manifest's SHA-256 against the
// job manifest, and every image file's presence and size (and that no other
// file is there). A restart that lets the shims verify the content
// (OpenNodeImages, with the node manifests' digests from the job manifest)
// calls it instead of Verify.
func (s *Store) VerifyLayout(ctx context.Context, handle string) error {
	cp, err := s.Get(handle)
	if err != nil {
		return err
	}
	root, _, err := verifyLayout(cp)
	if err != nil {
		return err
	}
	return root.Close()
}

type verifiedNode struct {
	dir string
	m   NodeManifest
}

func verifyFiles(ctx context.Context, cp Checkpoint) error {
	root, nodes, err := verifyLayout(cp)
	if err != nil {
		return err
	}
	defer root.Close()
	corrupt := func(file, reason string, err error) error {
		return &CorruptError{Handle: cp.Handle, File: file, Reason: reason, Err: err}
	}
	buf, put := hashBuf()
	defer put()
	for _, n := range nodes {
		dg, err := digestOf(n.m.Format)
		if err != nil {
			return err
		}
		for _, f := range n.m.Files {
			fp := path.Join(n.dir, f.Path)
			size, sum, err := hashRootFile(ctx, root, fp, dg, buf)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("verify %s: %w", cp.Handle, ctx.Err())
				}
				return fmt.Errorf("verify %s: %w", cp.Handle, err)
			}
			if size != f.Size {
				return corrupt(fp, fmt.Sprintf("size changed to %d bytes during verification, the manifest records %d", size, f.Size), nil)
			}
			if want := f.digest(n.m.Format); sum != want {
				return corrupt(fp, fmt.Sprintf("content differs from the manifest (%s %s, recorded %s)", dg.name, sum, want), nil)
			}
		}
	}
	return nil
}

// verifyLayout is the cheap part of the verification: manifests, presence
// and sizes, so that truncation or a missing file is reported before
// gigabytes are hashed. It returns the checkpoint directory, open, and the
// node manifests it checked.
func verifyLayout(cp Checkpoint) (*os.Root, []verifiedNode, error) {
	if cp.ManifestErr != nil {
		return nil, nil, cp.ManifestErr
	}
	corrupt := func(file, reason string, err error) error {
		return &CorruptError{Handle: cp.Handle, File: file, Reason: reason, Err: err}
	}
	// os.Root keeps every access inside the checkpoint directory, symlinks included.
	root, err := os.OpenRoot(cp.Dir)
	if err != nil {
		return nil, nil, ioErr("verify: open checkpoint directory", cp.Dir, err)
	}
	nodes, err := checkLayout(cp, root, corrupt)
	if err != nil {
		root.Close()
		return nil, nil, err
	}
	return root, nodes, nil
}

func checkLayout(cp Checkpoint, root *os.Root, corrupt func(file, reason string, err error) error) ([]verifiedNode, error) {
	fsys := root.FS()
	listed := map[string]bool{}
	for _, n := range cp.Manifest.Nodes {
		listed[n.Name] = true
	}
	ents, err := fs.ReadDir(fsys, nodesDirName)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, corrupt(nodesDirName, "missing", nil)
		}
		return nil, ioErr("verify: read", cp.Dir+"/"+nodesDirName, err)
	}
	for _, e := range ents {
		if !listed[e.Name()] {
			return nil, corrupt(path.Join(nodesDirName, e.Name()), "not part of the job manifest", nil)
		}
	}
	if cp.Manifest.HostLocal {
		// Nothing of the images is here: the job manifest, verified, is
		// all there is to check (the shims that hold the images verify
		// them against it).
		if len(ents) > 0 {
			return nil, corrupt(path.Join(nodesDirName, ents[0].Name()), "images in the catalog of a host-local checkpoint", nil)
		}
		return nil, nil
	}
	nodes := make([]verifiedNode, 0, len(cp.Manifest.Nodes))
	for _, ref := range cp.Manifest.Nodes {
		dir := path.Join(nodesDirName, ref.Name)
		mp := path.Join(dir, NodeManifestName)
		data, err := readLimited(fsys, mp, maxNodeManifestSize)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, corrupt(mp, "missing", nil)
		}
		if err != nil {
			return nil, ioErr("verify: read", path.Join(cp.Dir, mp), err)
		}
		nm, err := checkNodeManifest(data, ref.ManifestSHA256, mp, corrupt)
		if err != nil {
			return nil, err
		}
		if nm.Node != ref.Name || len(nm.Files) != ref.FileCount || nm.TotalBytes != ref.TotalBytes {
			return nil, corrupt(mp, "does not match the job manifest's node entry", nil)
		}
		if err := checkNodeFiles(root, dir, nm, corrupt); err != nil {
			return nil, err
		}
		nodes = append(nodes, verifiedNode{dir: dir, m: nm})
	}
	return nodes, nil
}

// checkNodeManifest checks a node manifest's bytes against the SHA-256 the
// job manifest records for it (mp names it in errors), then decodes them.
func checkNodeManifest(data []byte, want, mp string, corrupt func(file, reason string, err error) error) (NodeManifest, error) {
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != want {
		return NodeManifest{}, corrupt(mp, fmt.Sprintf("sha256 %s, the job manifest records %s: the node manifest was modified", got, want), nil)
	}
	nm, err := parseNodeManifest(data)
	if err != nil {
		return NodeManifest{}, corrupt(mp, "does not decode", err)
	}
	return nm, nil
}

// checkNodeFiles checks that every file nm lists is below dir (in root) at
// its recorded size, and that no other file is there.
func checkNodeFiles(root *os.Root, dir string, nm NodeManifest, corrupt func(file, reason string, err error) error) error {
	mp := path.Join(dir, NodeManifestName)
	onDisk := map[string]bool{}
	err := fs.WalkDir(root.FS(), dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			return corrupt(p, fmt.Sprintf("is a %s, not a regular file", describeType(d.Type())), nil)
		}
		onDisk[p] = true
		return nil
	})
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			return err
		}
		return ioErr("verify: walk", path.Join(root.Name(), dir), err)
	}
	delete(onDisk, mp)
	for _, f := range nm.Files {
		fp := path.Join(dir, f.Path)
		if !onDisk[fp] {
			return corrupt(fp, "missing", nil)
		}
		delete(onDisk, fp)
		st, err := root.Lstat(fp)
		if err != nil {
			return ioErr("verify: stat", path.Join(root.Name(), fp), err)
		}
		if st.Size() != f.Size {
			return corrupt(fp, fmt.Sprintf("size is %d bytes, the manifest records %d", st.Size(), f.Size), nil)
		}
	}
	for extra := range onDisk {
		return corrupt(extra, "not listed in the node manifest", nil)
	}
	return nil
}

func hashRootFile(ctx context.Context, root *os.Root, name string, dg fileDigest, buf []byte) (int64, string, error) {
	f, err := root.Open(name)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	return hashReader(ctx, name, f, dg, buf)
}

func readLimited(fsys fs.FS, name string, limit int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return data, nil
}
