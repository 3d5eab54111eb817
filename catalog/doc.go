// Package catalog stores checkpoints on disk and decides which ones exist.
//
// # Layout
//
//	<root>/<job>/next-seq                      last sequence number handed out (never reused)
//	<root>/<job>/<seq>/                        one checkpoint, seq = zero-padded decimal (000001)
//	<root>/<job>/<seq>/nodes/<node>/           CRIU images of one job-node (files 0600, dirs 0700)
//	<root>/<job>/<seq>/nodes/<node>/node-manifest.json   every file of that node: path, size, BLAKE3
//	<root>/<job>/<seq>/shared/                 claims of the shims on files several job-nodes hold (no data)
//	<root>/<job>/<seq>/manifest.json           the job manifest, written LAST
//
// A checkpoint is named by its handle "<job>/<seq>", e.g. "ring-7f3a/000004".
//
// # Commit rule
//
// A checkpoint exists if and only if its manifest.json exists. The job manifest is
// written last, atomically (temporary file in the same directory, fsync, rename, fsync
// of the directory), so a coordinator killed between dump and commit leaves a <seq>
// directory without manifest.json. Such a directory is invisible to List, Get and
// Latest, and Recover (called when the coordinator starts) or Abort removes it.
// Delete removes manifest.json first, so an interrupted Delete also leaves only an
// incomplete directory that Recover cleans up.
//
// Sequence numbers grow monotonically per job and are never reused, not even after
// Delete or Prune: the last one handed out is kept in <root>/<job>/next-seq and the
// allocator also takes the largest existing <seq> directory into account.
//
// # Integrity
//
// The shim calls WriteNodeManifestWith after CRIU has written a node's images: it
// takes the digests a StreamHasher computed while CRIU wrote the memory images,
// hashes every other regular file (streaming, never whole-file reads), makes the
// images 0600 and writes node-manifest.json atomically. Node manifests record each
// file's BLAKE3 (format 2); format 1 (SHA-256) is still read. Commit records the SHA-256 of every node
// manifest in the job manifest and signs the job manifest with HMAC-SHA256 under a
// per-installation key (LoadOrCreateKey: 32 random bytes, file 0600 in the state
// directory). The file on disk is an envelope
//
//	{"format": 1, "payload": {...job manifest...}, "hmac": "<hex HMAC-SHA256 of the payload bytes>"}
//
// so the signature covers the exact bytes that are parsed. Verify checks, in order,
// the envelope format, the HMAC, the payload format, that the manifest belongs to the
// directory it sits in, every node manifest's digest, and the size and digest of
// every file (and that no unlisted file was added). VerifyLayout is the same
// without reading the files' content, which a restart leaves to the shims:
// OpenNodeImages checks one node's manifest against the digest the job manifest
// records, and its files as the shim uses them. Any mismatch is a *CorruptError,
// which matches ErrCorrupt with errors.Is and names the first bad file. A checkpoint
// must be verified before every restore; LatestVerified returns the newest checkpoint
// of a job that verifies, together with the reasons newer ones were skipped, so a
// restart can fall back to the previous good checkpoint and say so.
//
// With StartStreamCompressor the memory images are stored compressed (lz4,
// zstd: compress.go) as they are written. Such a node manifest is format 3:
// it records each compressed file's codec, the size and BLAKE3 of its
// stored bytes, and its raw size; NodeImages.Expand gives the raw form
// back, verifying the stored bytes as it decompresses them and never
// writing past the raw size.
//
// # Failures
//
// Every write error names the file being written and wraps the underlying error, so
// errors.Is(err, syscall.ENOSPC) holds for a full disk. Commit never leaves a
// half-written manifest.json visible; after a failed Commit the caller aborts.
//
// A Store is safe for concurrent use.
//
// Deviations from the first API sketch: NodeDir returns an error (creating the
// directory can fail); Verify, LatestVerified and WriteNodeManifest take a
// context.Context because hashing GiBs of images is a blocking operation.
package catalog
