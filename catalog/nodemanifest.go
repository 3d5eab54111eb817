package catalog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/torpor-hpc/torpor/internal/atomicfile"
)

// maxNodeManifestSize bounds what is read of a node manifest (a CRIU dump has a few
// hundred files at most).
const maxNodeManifestSize = 64 << 20

// FileEntry is one image file of a job-node.
type FileEntry struct {
	Path string `json:"path"` // relative to the node directory, '/'-separated
	Size int64  `json:"size"`
	// The content's hash: SHA256 in a format 1 node manifest, BLAKE3
	// (256 bits) in format 2; hex.
	SHA256 string `json:"sha256,omitempty"`
	BLAKE3 string `json:"blake3,omitempty"`
	// Codec (format 3): the file holds the compressed form (CodecLZ4,
	// CodecZstd) of an image of RawSize bytes named Path without the
	// codec's suffix; Size and the digest are the compressed file's.
	Codec   string `json:"codec,omitempty"`
	RawSize int64  `json:"raw_size,omitempty"`
}

// NodeManifest lists every file of one job-node's images.
type NodeManifest struct {
	Format     int         `json:"format"`
	Node       string      `json:"node"`
	Files      []FileEntry `json:"files"`
	TotalBytes int64       `json:"total_bytes"`
}

// WriteNodeManifest is called by the shim after CRIU has written a job-node's images
// into dir (a directory returned by Pending.NodeDir). It hashes every regular file
// below dir (except the node manifest itself), makes files 0600 and directories
// 0700, and writes dir/node-manifest.json atomically. Symbolic links and special
// files are refused: they could not be verified.
func WriteNodeManifest(ctx context.Context, dir string) (NodeManifest, error) {
	return WriteNodeManifestWith(ctx, dir, nil)
}

// WriteNodeManifestWith is WriteNodeManifest taking the digest of a file
// from sums (a StreamHasher's, which hashed the file while it was written)
// when the file is still the one hashed there: the same inode, size,
// modification and change time. Every other file is hashed here.
func WriteNodeManifestWith(ctx context.Context, dir string, sums Sums) (NodeManifest, error) {
	node := filepath.Base(filepath.Clean(dir))
	if err := validName("job-node name", node); err != nil {
		return NodeManifest{}, fmt.Errorf("write node manifest in %s: %w", dir, err)
	}
	m := NodeManifest{Format: NodeManifestFormat, Node: node, Files: []FileEntry{}}
	dg, _ := digestOf(NodeManifestFormat)
	buf, put := hashBuf()
	defer put()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return ioErr("walk", p, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			if err := os.Chmod(p, 0o700); err != nil {
				return ioErr("chmod", p, err)
			}
			return nil
		case rel == NodeManifestName:
			return nil
		case !strings.Contains(rel, "/") && strings.HasPrefix(rel, "."+NodeManifestName+".tmp-"):
			// Leftover of an interrupted earlier attempt.
			if err := os.Remove(p); err != nil {
				return ioErr("remove stale", p, err)
			}
			return nil
		case !d.Type().IsRegular():
			return fmt.Errorf("%s is a %s, not a regular file: node images may only contain regular files", p, describeType(d.Type()))
		}
		// Looked at before the chmod, which changes the change time.
		known, ok := sums[rel]
		if ok {
			info, err := d.Info()
			ok = err == nil && known.matches(info)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			return ioErr("chmod", p, err)
		}
		size, sum := known.Size, known.Digest
		if !ok && known.Codec != "" {
			// Its raw form is gone: it cannot be hashed again.
			return fmt.Errorf("%s changed after it was compressed", p)
		}
		if !ok {
			var err error
			if size, sum, err = hashFile(ctx, p, dg, buf); err != nil {
				return err
			}
		}
		m.Files = append(m.Files, FileEntry{Path: rel, Size: size, BLAKE3: sum, Codec: known.Codec, RawSize: known.RawSize})
		if known.Codec != "" {
			m.Format = nodeFormatCodecs
		}
		m.TotalBytes += size
		return nil
	})
	if err != nil {
		return NodeManifest{}, fmt.Errorf("write node manifest in %s: %w", dir, err)
	}
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Path < m.Files[j].Path })
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return NodeManifest{}, fmt.Errorf("encode node manifest: %w", err)
	}
	data = append(data, '\n')
	if err := withHint(atomicfile.Write(filepath.Join(dir, NodeManifestName), data, 0o600)); err != nil {
		return NodeManifest{}, fmt.Errorf("write node manifest: %w", err)
	}
	return m, nil
}

// ctxReader stops a long copy when the context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// hashFile streams p through dg's hash.
func hashFile(ctx context.Context, p string, dg fileDigest, buf []byte) (int64, string, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, "", ioErr("open", p, err)
	}
	defer f.Close()
	return hashReader(ctx, p, f, dg, buf)
}

func hashReader(ctx context.Context, name string, r io.Reader, dg fileDigest, buf []byte) (int64, string, error) {
	h := dg.new()
	n, err := io.CopyBuffer(h, ctxReader{ctx, r}, buf)
	if err != nil {
		if ctx.Err() != nil {
			return 0, "", err
		}
		return 0, "", ioErr("read", name, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// parseNodeManifest decodes and checks a node manifest. Paths must be clean,
// relative and unique, so a manifest can never point outside its node directory.
func parseNodeManifest(data []byte) (NodeManifest, error) {
	var m NodeManifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return NodeManifest{}, fmt.Errorf("decode node manifest: %w", err)
	}
	if _, err := digestOf(m.Format); err != nil {
		return NodeManifest{}, err
	}
	if err := validName("job-node name", m.Node); err != nil {
		return NodeManifest{}, err
	}
	seen := make(map[string]bool, len(m.Files))
	var total int64
	for _, f := range m.Files {
		if f.Path == "" || f.Path != path.Clean(f.Path) || path.IsAbs(f.Path) || f.Path == ".." || strings.HasPrefix(f.Path, "../") || strings.Contains(f.Path, "\\") || f.Path == NodeManifestName {
			return NodeManifest{}, fmt.Errorf("node manifest lists an invalid path %q", f.Path)
		}
		if seen[f.Path] {
			return NodeManifest{}, fmt.Errorf("node manifest lists %q twice", f.Path)
		}
		seen[f.Path] = true
		other := f.BLAKE3
		if m.Format != nodeFormatSHA256 {
			other = f.SHA256
		}
		if f.Size < 0 || !isHexDigest(f.digest(m.Format)) || other != "" {
			return NodeManifest{}, fmt.Errorf("node manifest entry %q: bad size or digest", f.Path)
		}
		if err := checkCodec(m.Format, f); err != nil {
			return NodeManifest{}, fmt.Errorf("node manifest entry %q: %w", f.Path, err)
		}
		total += f.Size
		if total < 0 {
			return NodeManifest{}, errors.New("node manifest total size overflows")
		}
	}
	for _, f := range m.Files {
		if f.Codec != "" && seen[f.RawName()] {
			return NodeManifest{}, fmt.Errorf("node manifest lists %q both raw and compressed", f.RawName())
		}
	}
	if total != m.TotalBytes {
		return NodeManifest{}, fmt.Errorf("node manifest total_bytes %d is not the sum of its files' %d", m.TotalBytes, total)
	}
	return m, nil
}

// NodeManifestSHA256 is the SHA-256 (hex) of the node manifest in nodeDir,
// as a commit records it in the job manifest.
func NodeManifestSHA256(nodeDir string) (string, error) {
	_, sum, err := readNodeManifest(nodeDir)
	return sum, err
}

// readNodeManifest reads nodes/<node>/node-manifest.json under dir, returning the
// raw bytes' SHA-256 and the parsed manifest.
func readNodeManifest(nodeDir string) (NodeManifest, string, error) {
	p := filepath.Join(nodeDir, NodeManifestName)
	f, err := os.Open(p)
	if err != nil {
		return NodeManifest{}, "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxNodeManifestSize+1))
	if err != nil {
		return NodeManifest{}, "", ioErr("read", p, err)
	}
	if len(data) > maxNodeManifestSize {
		return NodeManifest{}, "", fmt.Errorf("%s is larger than %d bytes", p, maxNodeManifestSize)
	}
	sum := sha256.Sum256(data)
	m, err := parseNodeManifest(data)
	return m, hex.EncodeToString(sum[:]), err
}
