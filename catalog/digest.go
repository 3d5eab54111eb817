package catalog

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"sync"

	"lukechampine.com/blake3"
)

// Node manifest formats. Format 1 records each image file's SHA-256; format
// 2, which WriteNodeManifest writes, its BLAKE3 (256 bits): the shim hashes
// CRIU's memory images while CRIU writes them, and SHA-256 (1.1–1.4 GB/s
// with SHA-NI on the project's 2-core machines, under load) is slower than
// CRIU writes them (about 1.5 GB/s), BLAKE3 (2.3–2.6 GB/s there) is not.
// Both are read. Format 3 is format 2 whose files may be stored
// compressed (FileEntry.Codec, RawSize): it is written only when one is, so
// that a torpor that cannot decompress says it does not read the format.
// The job manifest (format 1, HMAC-SHA256) records each node
// manifest's SHA-256 either way.
const (
	nodeFormatSHA256 = 1
	nodeFormatBLAKE3 = 2
	nodeFormatCodecs = 3
	// NodeManifestFormat is the node manifest format WriteNodeManifest writes.
	NodeManifestFormat = nodeFormatBLAKE3
)

// fileDigest is how a node manifest format hashes an image file.
type fileDigest struct {
	name string // as errors say it
	new  func() hash.Hash
}

func digestOf(format int) (fileDigest, error) {
	switch format {
	case nodeFormatSHA256:
		return fileDigest{"sha256", sha256.New}, nil
	case nodeFormatBLAKE3, nodeFormatCodecs:
		return fileDigest{"blake3", newBLAKE3}, nil
	}
	return fileDigest{}, fmt.Errorf("%w: node manifest format %d, this torpor reads formats %d to %d", ErrUnsupportedFormat, format, nodeFormatSHA256, nodeFormatCodecs)
}

func newBLAKE3() hash.Hash { return blake3.New(32, nil) }

// digest is the entry's recorded hash in its manifest's format.
func (f FileEntry) digest(format int) string {
	if format == nodeFormatSHA256 {
		return f.SHA256
	}
	return f.BLAKE3
}

// hashBufSize is the read size of hashing: large enough that a GiB image
// costs few reads.
const hashBufSize = 1 << 20

// hashBufs recycles the hashing buffers: a checkpoint writes one node
// manifest per job-node, and a fresh 1 MiB buffer each (zeroed by the
// runtime) cost more than the hashing of a small job-node's images.
var hashBufs = sync.Pool{New: func() any { b := make([]byte, hashBufSize); return &b }}

// hashBuf lends a hashing buffer; give it back with put.
func hashBuf() (buf []byte, put func()) {
	b := hashBufs.Get().(*[]byte)
	return *b, func() { hashBufs.Put(b) }
}
