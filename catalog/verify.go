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

func verifyFiles(ctx context.Context, cp Checkpoint) error {
	if cp.ManifestErr != nil {
		return cp.ManifestErr
	}
	corrupt := func(file, reason string, err error) error {
		return &CorruptError{Handle: cp.Handle, File: file, Reason: reason, Err: err}
	}
	// os.Root keeps every access inside the checkpoint directory, symlinks included.
	root, err := os.OpenRoot(cp.Dir)
	if err != nil {
		return ioErr("verify: open checkpoint directory", cp.Dir, err)
	}
	defer root.Close()
	fsys := root.FS()

	listed := map[string]bool{}
	for _, n := range cp.Manifest.Nodes {
		listed[n.Name] = true
	}
	ents, err := fs.ReadDir(fsys, nodesDirName)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return corrupt(nodesDirName, "missing", nil)
		}
		return ioErr("verify: read", cp.Dir+"/"+nodesDirName, err)
	}
	for _, e := range ents {
		if !listed[e.Name()] {
			return corrupt(path.Join(nodesDirName, e.Name()), "not part of the job manifest", nil)
		}
	}

	type node struct {
		dir string
		m   NodeManifest
	}
	nodes := make([]node, 0, len(cp.Manifest.Nodes))
	// Cheap pass first: manifests, presence and sizes, so truncation or a missing
	// file is reported before gigabytes are hashed.
	for _, ref := range cp.Manifest.Nodes {
		dir := path.Join(nodesDirName, ref.Name)
		mp := path.Join(dir, NodeManifestName)
		data, err := readLimited(fsys, mp, maxNodeManifestSize)
		if errors.Is(err, fs.ErrNotExist) {
			return corrupt(mp, "missing", nil)
		}
		if err != nil {
			return ioErr("verify: read", path.Join(cp.Dir, mp), err)
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != ref.ManifestSHA256 {
			return corrupt(mp, fmt.Sprintf("sha256 %s, the job manifest records %s: the node manifest was modified", got, ref.ManifestSHA256), nil)
		}
		nm, err := parseNodeManifest(data)
		if err != nil {
			return corrupt(mp, "does not decode", err)
		}
		if nm.Node != ref.Name || len(nm.Files) != ref.FileCount || nm.TotalBytes != ref.TotalBytes {
			return corrupt(mp, "does not match the job manifest's node entry", nil)
		}
		onDisk := map[string]bool{}
		err = fs.WalkDir(fsys, dir, func(p string, d fs.DirEntry, err error) error {
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
			return ioErr("verify: walk", path.Join(cp.Dir, dir), err)
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
				return ioErr("verify: stat", path.Join(cp.Dir, fp), err)
			}
			if st.Size() != f.Size {
				return corrupt(fp, fmt.Sprintf("size is %d bytes, the manifest records %d", st.Size(), f.Size), nil)
			}
		}
		for extra := range onDisk {
			return corrupt(extra, "not listed in the node manifest", nil)
		}
		nodes = append(nodes, node{dir: dir, m: nm})
	}

	buf := make([]byte, 1<<20)
	for _, n := range nodes {
		for _, f := range n.m.Files {
			fp := path.Join(n.dir, f.Path)
			size, sum, err := hashRootFile(ctx, root, fp, buf)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("verify %s: %w", cp.Handle, ctx.Err())
				}
				return fmt.Errorf("verify %s: %w", cp.Handle, err)
			}
			if size != f.Size {
				return corrupt(fp, fmt.Sprintf("size changed to %d bytes during verification, the manifest records %d", size, f.Size), nil)
			}
			if sum != f.SHA256 {
				return corrupt(fp, fmt.Sprintf("content differs from the manifest (sha256 %s, recorded %s)", sum, f.SHA256), nil)
			}
		}
	}
	return nil
}

func hashRootFile(ctx context.Context, root *os.Root, name string, buf []byte) (int64, string, error) {
	f, err := root.Open(name)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	return hashReader(ctx, name, f, buf)
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
