// Package agentapi is the contract between the coordinator and the shim of
// each host: the Agent interface the coordinator drives a job-node through,
// its requests and results, its errors, and the gRPC adapters that carry it
// between hosts (Client on the coordinator's side, Server on the shim's).
//
// Package coordinator and the packages under shim both import it; neither
// imports the other. docs/architecture.md shows where each protocol phase
// lives.
package agentapi

import (
	"context"
	"time"
)

// NodeSpec describes one job-node: the slice of a job that lives in one
// sandbox on one host. IP and Hostname travel with the job-node when it is
// restored elsewhere.
type NodeSpec struct {
	Name     string   `json:"name"`     // "n0", "n1", ... unique within the job
	Host     string   `json:"host"`     // the shim it runs on now
	IP       string   `json:"ip"`       // floating address with prefix, e.g. 198.19.0.10/15
	Hostname string   `json:"hostname"` // UTS name inside the sandbox
	Argv     []string `json:"argv"`     // what the sandbox's init runs
	Env      []string `json:"env,omitempty"`
	Dir      string   `json:"dir,omitempty"` // working directory
	// User is who every process of the job-node runs as: the job's owner.
	// The coordinator sets it from the job's owner; nil in a record written
	// before jobs ran as their owners means root.
	User *Creds `json:"user,omitempty"`
	// Keep are paths whose files are captured at every checkpoint besides
	// those the job-node holds open for writing (torpor run --keep): a file,
	// or a directory and everything below it. KeepMax bounds what one
	// job-node's capture copies; 0 means 1 GiB.
	Keep    []string `json:"keep,omitempty"`
	KeepMax int64    `json:"keep_max,omitempty"`
}

// Creds are the credentials a job's processes run with: its owner's uid,
// primary gid and supplementary groups, with no capabilities.
type Creds struct {
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`
}

// Root reports whether c is root's (a nil c is: see NodeSpec.User).
func (c *Creds) Root() bool { return c == nil || c.UID == 0 }

// NodeRef names one job-node on a shim.
type NodeRef struct {
	Job  string
	Node string
}

// DumpRequest asks a shim to dump one job-node's tree into Dir.
type DumpRequest struct {
	Dir string // where the shim writes the images and the node manifest
	// Shared is a directory every job-node of the checkpoint shares: a file
	// several job-nodes hold is captured by the one that claims it there
	// first. Empty: each job-node captures every file it holds.
	Shared       string
	LeaveRunning bool   // periodic checkpoint: the tree keeps running afterwards
	Checkpoint   string // the checkpoint handle, for logs and PMIx events
	// Compress is how the shim stores CRIU's memory images (pages-*.img):
	// "" raw, "lz4" or "zstd" (catalog.CodecLZ4, CodecZstd), compressed
	// while CRIU writes them; the node manifest records the codec.
	Compress string
	// PostCopyAbove, when > 0, asks for a post-copy (lazy) dump if the
	// job-node's private memory is at least this many bytes: every image but
	// that memory is written, and the shim serves the memory pages from a
	// page server (DumpResult.PageServer) until a destination restored with
	// RestoreRequest.PageServer has them all. The tree stays frozen, whole,
	// until Destroy; Unlock or Thaw (a rollback) stop the page server first.
	// Migrations only: the images are not a checkpoint.
	PostCopyAbove int64
	// Local asks the shim to write the images into its own image
	// directory (Dir is ignored) and to serve them to other shims
	// (ImageServer) until the job-node is destroyed, unlocked or thawed
	// here; DumpResult.NodeManifestSHA256 is then set. Migrations only:
	// the images are not a checkpoint.
	Local bool
	// Store asks the shim to write the images into its own checkpoint
	// store under Checkpoint and keep them there (Dir and Shared are
	// ignored): a host-local checkpoint (CheckpointHolder).
	// DumpResult.NodeManifestSHA256 is then set.
	Store bool
}

// DumpResult is what a shim reports after a dump.
type DumpResult struct {
	Bytes    int64         // size of the images
	Files    int           // number of image files
	CRIUTime time.Duration // time spent inside CRIU
	// Memory is the job-node's private memory (resident anonymous bytes of
	// its tasks) when the dump was asked about post-copy, else 0.
	Memory int64
	// PageServer is "host:port" of a post-copy dump's page server, reachable
	// from the other hosts; empty for an ordinary dump.
	PageServer string
	// NodeManifestSHA256 is the SHA-256 (hex) of a local dump's node
	// manifest, for the destination to verify the images against.
	NodeManifestSHA256 string
}

// RestoreRequest asks a shim to restore one job-node from Dir.
type RestoreRequest struct {
	Dir        string // the job-node's images and node manifest
	Checkpoint string // the checkpoint handle: the ranks are told it was restored from this one
	// NodeManifestSHA256 is the SHA-256 (hex) of the job-node's node
	// manifest as the signed job manifest records it. When set, the shim
	// verifies every image file against that node manifest before it acts
	// on it; CRIU's memory pages alongside the restore, which waits for the
	// verdict before any restored task runs. Empty for a migration's images,
	// which are never committed (and not verified).
	NodeManifestSHA256 string
	// PageServer restores with post-copy from a lazy dump whose page server
	// listens there ("host:port", DumpResult.PageServer): the job-node runs
	// before its memory has arrived, and Pages says when all of it has.
	PageServer string
	// From is "host:port" of the shim holding the images, a local dump of
	// Checkpoint (DumpRequest.Local; ImageStreamer.ImagesAddress), which
	// may still be running there: the shim fetches them into its own image
	// directory first (Dir is ignored), as they are written, and verifies
	// them against NodeManifestSHA256 or, if that is empty, the node
	// manifest's SHA-256 the source sends after the last image.
	From string
	// Stored says the images are in the shim's own checkpoint store under
	// Checkpoint (Dir is ignored): a host-local checkpoint, fetched there
	// first if another host held it (CheckpointHolder.Fetch).
	Stored bool
}

// ImageStreamer is implemented by an Agent that may say where it serves
// the images of its local dumps (DumpRequest.Local) and that fetches images
// from another shim (RestoreRequest.From): "" means it does neither, and a
// migration to or from it goes through the checkpoint directory.
type ImageStreamer interface {
	ImagesAddress() string
}

// ImageServer sends the files of a local dump of job-node ref for
// checkpoint to another shim, as they are written if the dump still runs
// (it waits for one of that checkpoint to begin), one send per chunk; it
// returns the SHA-256 of the dump's node manifest once every file is sent.
//
// SendStored sends the files of job-node node of the host-local checkpoint
// handle from the shim's checkpoint store, and returns the SHA-256 of
// their node manifest.
type ImageServer interface {
	SendImages(ctx context.Context, ref NodeRef, checkpoint string, send func(ImageChunk) error) (nodeManifestSHA256 string, err error)
	SendStored(ctx context.Context, handle, node string, send func(ImageChunk) error) (nodeManifestSHA256 string, err error)
}

// CheckpointHolder is implemented by an Agent whose shim keeps host-local
// checkpoints in a store of its own (torpor shim --image-dir): a dump with
// DumpRequest.Store writes there, a restore with RestoreRequest.Stored
// reads from there. Holds says whether it does (the gRPC client knows
// from the shim's registration).
type CheckpointHolder interface {
	Holds() bool
	// Fetch copies the images of job-node node of checkpoint handle from
	// the shim at from (host:port) into this shim's store, verified against
	// nodeManifestSHA256 before they count; at most rate bytes/s when
	// rate > 0. It returns the bytes copied: 0 when the store held a copy
	// with that digest already.
	Fetch(ctx context.Context, handle, node, from, nodeManifestSHA256 string, rate int64) (int64, error)
	// Held lists what the store holds of job's checkpoints. With verify,
	// it first hashes every file of every copy against the copy's node
	// manifest; a copy that fails is set aside (the store no longer holds
	// it) and listed with Corrupt set.
	Held(ctx context.Context, job string, verify bool) ([]HeldImages, error)
	// Drop removes every image of checkpoint handle from the store.
	Drop(ctx context.Context, handle string) error
	// KeepManifest keeps the signed job manifest of checkpoint handle
	// next to its images in the store (ErrNotFound when the store holds
	// none of them): the catalog, spread over the hosts.
	KeepManifest(ctx context.Context, handle string, manifest []byte) error
	// Manifests returns every job manifest the store keeps, by handle,
	// for a coordinator that lost its catalog. Whoever reads them checks
	// their signature: the store does not.
	Manifests(ctx context.Context) (map[string][]byte, error)
}

// OutputReader is implemented by an Agent that reads a job-node's output
// file for a client that cannot (hosts that share no run directory): at
// most max bytes from off, and the file's size now.
type OutputReader interface {
	ReadOutput(ctx context.Context, ref NodeRef, off, max int64) (data []byte, size int64, err error)
}

// HeldImages is one job-node's images of a host-local checkpoint in a
// shim's store, named by the SHA-256 of their node manifest.
type HeldImages struct {
	Checkpoint         string
	Node               string
	NodeManifestSHA256 string
	// Corrupt, only from a Held with verify, says why this copy failed
	// verification: it was set aside, the store holds it no more.
	Corrupt string
}

// ImageChunk is data at Offset of the image file Name (relative to the
// job-node's image directory): a file's first chunk is at offset 0, each
// next one continues where the last ended.
type ImageChunk struct {
	Name   string
	Offset int64
	Data   []byte
}

// PostCopier is implemented by an Agent that may say whether it can take
// part in a post-copy migration (its CRIU and kernel restore pages lazily:
// userfaultfd). An Agent that does not implement it, or says false, is only
// given stop-and-copy migrations.
type PostCopier interface {
	PostCopy() bool
}

// ExitNotifier is implemented by an Agent that tells of its job-nodes'
// exits as they happen. WatchExits calls live once it listens, then exited
// for each job-node whose tree exits by itself, until ctx ends or the watch
// fails (its error). An Agent that does not implement it has its job-nodes'
// Status polled.
type ExitNotifier interface {
	WatchExits(ctx context.Context, live func(), exited func(NodeRef)) error
}

// ImageVerifier is implemented by an Agent that may verify a restart's
// images itself (RestoreRequest.NodeManifestSHA256). An Agent that does not
// implement it, or says false, is given only images the coordinator has
// verified whole.
type ImageVerifier interface {
	VerifiesImages() bool
}

// RestoreFilesResult is what a shim reports after putting a job-node's
// files back.
type RestoreFilesResult struct {
	// Moved are files below --keep directories that did not exist at the
	// checkpoint, moved aside (NAME.torpor-after-<seq>): the user's data.
	Moved []string
}

// DrainResult is what a shim reports after draining a job-node's TCP sockets.
type DrainResult struct {
	Sockets     int   // TCP sockets in the sandbox
	QueuedBytes int64 // bytes sitting in send and receive queues (saved by CRIU)
}

// NodeStatus is a job-node's life as its shim sees it.
type NodeStatus struct {
	Running  bool
	Exited   bool
	ExitCode int
	Message  string
}

// FenceRequest is one job-node's contribution to a PMIx fence, which its
// shim forwards to the coordinator.
type FenceRequest struct {
	Job       string
	Node      int   // index of the contributing job-node in the job spec
	Nodes     []int // every participating job-node
	Signature string
	Seq       uint64
	Data      []byte
}

// Agent is what the coordinator needs from the shim of one host. Every
// method must honour the context's deadline. Unlock, Thaw and Destroy must
// be idempotent: the coordinator calls them again while rolling back.
type Agent interface {
	// Start creates the job-node's sandbox and starts its tree.
	Start(ctx context.Context, job string, n NodeSpec) error
	// Prepare tells the job-node's ranks that a checkpoint is coming and waits,
	// bounded by ctx, for those that asked to be told.
	Prepare(ctx context.Context, ref NodeRef, checkpoint string) error
	// Freeze stops every task of the job-node (cgroup freeze).
	Freeze(ctx context.Context, ref NodeRef) error
	// Drain waits, for a bounded time, until no sent byte of the job-node is
	// unacknowledged; bytes still in flight at the end fail it only on a
	// connection that leaves the job (see shim/agent's Drain).
	Drain(ctx context.Context, ref NodeRef) (DrainResult, error)
	// Lock drops every packet to and from the job-node.
	Lock(ctx context.Context, ref NodeRef) error
	// Dump writes the job-node's images and its node manifest; without
	// LeaveRunning the tree is gone afterwards.
	Dump(ctx context.Context, ref NodeRef, req DumpRequest) (DumpResult, error)
	// Unlock lets the job-node's packets flow again.
	Unlock(ctx context.Context, ref NodeRef) error
	// Thaw resumes the job-node's tasks.
	Thaw(ctx context.Context, ref NodeRef) error
	// RestoreFiles puts the files the application wrote back as they were at
	// the checkpoint in req.Dir, before any job-node of the job is restored
	// (several job-nodes may hold the same file).
	RestoreFiles(ctx context.Context, job string, n NodeSpec, req RestoreRequest) (RestoreFilesResult, error)
	// Restore creates a sandbox for n on this host, locks it, and restores
	// the tree from req.Dir into it. The job-node stays locked until Unlock.
	Restore(ctx context.Context, job string, n NodeSpec, req RestoreRequest) error
	// Destroy kills the job-node's tree and removes its sandbox.
	Destroy(ctx context.Context, ref NodeRef) error
	// Pages waits until a job-node restored with post-copy
	// (RestoreRequest.PageServer) has every page of its memory, and returns
	// at once for any other. An error means the pages stopped coming (the
	// source or its page server died): the shim has killed the job-node,
	// which cannot run on without them.
	Pages(ctx context.Context, ref NodeRef) error
	// Sync returns once the images this shim wrote of ref's job-node for
	// checkpoint (its Dump, into the catalog or the shim's store) are on
	// disk: every file and directory fsynced. The job-node need not exist
	// any more. ErrNotFound: this shim has no record of that dump (it
	// restarted since), so it cannot say.
	Sync(ctx context.Context, ref NodeRef, checkpoint string) error
	// Status reports whether the job-node still runs.
	Status(ctx context.Context, ref NodeRef) (NodeStatus, error)
}
