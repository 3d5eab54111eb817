package catalog

import (
	"context"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
)

// maxReadFile bounds what NodeImages.ReadFile holds in memory.
const maxReadFile = 64 << 20

// NodeImages is one job-node's images, held against its node manifest, for
// the shim that restores them. The coordinator checks the job manifest's
// HMAC and hands the shim the node manifest's SHA-256 it records; with it
// the shim checks the node manifest, then every file's content (its SHA-256
// or BLAKE3, as the node manifest's format says) as it uses it: ReadFile
// returns only bytes that match the manifest, Verify hashes files and
// compares. Every access stays inside the node directory
// (os.Root: no symbolic link leads out).
type NodeImages struct {
	dir    string
	root   *os.Root
	format int // the node manifest's
	dg     fileDigest
	files  map[string]FileEntry
	order  []FileEntry
}

// OpenNodeImages reads dir's node manifest, refuses it unless its SHA-256 is
// manifestSHA256 (hex), and checks that every file it lists is there at its
// recorded size and that no other file is (the cheap part of Verify, again
// on the shim's side). Failures are *CorruptError (errors.Is ErrCorrupt)
// naming the file.
func OpenNodeImages(dir, manifestSHA256 string) (*NodeImages, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, ioErr("open images", dir, err)
	}
	n := &NodeImages{dir: dir, root: root, files: map[string]FileEntry{}}
	data, err := readLimited(root.FS(), NodeManifestName, maxNodeManifestSize)
	if err != nil {
		root.Close()
		return nil, n.corrupt(NodeManifestName, "cannot be read", err)
	}
	nm, err := checkNodeManifest(data, manifestSHA256, NodeManifestName, n.corrupt)
	if err == nil && nm.Node != filepath.Base(filepath.Clean(dir)) {
		err = n.corrupt(NodeManifestName, fmt.Sprintf("is job-node %s's, not %s's", nm.Node, filepath.Base(dir)), nil)
	}
	if err == nil {
		err = checkNodeFiles(root, ".", nm, n.corrupt)
	}
	if err != nil {
		root.Close()
		return nil, err
	}
	for _, f := range nm.Files {
		n.files[f.Path] = f
	}
	n.order, n.format = nm.Files, nm.Format
	n.dg, _ = digestOf(nm.Format) // parseNodeManifest checked it
	return n, nil
}

func (n *NodeImages) corrupt(file, reason string, err error) error {
	return &CorruptError{File: filepath.Join(n.dir, filepath.FromSlash(path.Clean(file))), Reason: reason, Err: err}
}

// matches is nil when got (hex) is the digest the node manifest records
// for f, and else names f as corrupt.
func (n *NodeImages) matches(f FileEntry, got string) error {
	if want := f.digest(n.format); got != want {
		return n.corrupt(f.Path, fmt.Sprintf("content differs from the manifest (%s %s, recorded %s)", n.dg.name, got, want), nil)
	}
	return nil
}

// Close closes the node directory.
func (n *NodeImages) Close() error { return n.root.Close() }

// ReadFile returns the content of the listed file name ('/'-separated,
// relative to the node directory) once its size and SHA-256 match the node
// manifest: the bytes returned are the bytes verified, whatever happens to
// the file afterwards.
func (n *NodeImages) ReadFile(name string) ([]byte, error) {
	f, ok := n.files[name]
	if !ok {
		return nil, n.corrupt(name, "is not listed in the node manifest", nil)
	}
	if f.Size > maxReadFile {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d read whole", filepath.Join(n.dir, name), f.Size, maxReadFile)
	}
	r, err := n.root.Open(name)
	if err != nil {
		return nil, ioErr("open", filepath.Join(n.dir, name), err)
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, f.Size+1))
	if err != nil {
		return nil, ioErr("read", filepath.Join(n.dir, name), err)
	}
	if int64(len(data)) != f.Size {
		return nil, n.corrupt(name, fmt.Sprintf("size is %d bytes, the manifest records %d", len(data), f.Size), nil)
	}
	h := n.dg.new()
	h.Write(data)
	if err := n.matches(f, hex.EncodeToString(h.Sum(nil))); err != nil {
		return nil, err
	}
	return data, nil
}

// Verify hashes every listed file that pick chooses (its '/'-separated path
// relative to the node directory), in the manifest's order, and returns the
// first that does not match the manifest.
func (n *NodeImages) Verify(ctx context.Context, pick func(name string) bool) error {
	buf, put := hashBuf()
	defer put()
	for _, f := range n.order {
		if !pick(f.Path) {
			continue
		}
		size, sum, err := hashRootFile(ctx, n.root, f.Path, n.dg, buf)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("verify the images in %s: %w", n.dir, ctx.Err())
			}
			return fmt.Errorf("verify the images in %s: %w", n.dir, err)
		}
		if size != f.Size {
			return n.corrupt(f.Path, fmt.Sprintf("size changed to %d bytes during verification, the manifest records %d", size, f.Size), nil)
		}
		if err := n.matches(f, sum); err != nil {
			return err
		}
	}
	return nil
}

// FileCheck verifies one listed file as its bytes go by: whoever reads the
// file from its start, in order, writes what it read to the check, and asks
// Done at the end whether it was the file the node manifest records.
type FileCheck struct {
	n    *NodeImages
	f    FileEntry
	h    hash.Hash
	size int64
}

// Check begins a FileCheck of the listed file name ('/'-separated,
// relative to the node directory).
func (n *NodeImages) Check(name string) (*FileCheck, error) {
	f, ok := n.files[name]
	if !ok {
		return nil, n.corrupt(name, "is not listed in the node manifest", nil)
	}
	return &FileCheck{n: n, f: f, h: n.dg.new()}, nil
}

// Write adds p, the file's next bytes.
func (c *FileCheck) Write(p []byte) (int, error) {
	c.size += int64(len(p))
	return c.h.Write(p)
}

// Done says whether the bytes written were the whole file the node
// manifest records (a *CorruptError naming it if not).
func (c *FileCheck) Done() error {
	if c.size != c.f.Size {
		return c.n.corrupt(c.f.Path, fmt.Sprintf("size is %d bytes, the manifest records %d", c.size, c.f.Size), nil)
	}
	return c.n.matches(c.f, hex.EncodeToString(c.h.Sum(nil)))
}
