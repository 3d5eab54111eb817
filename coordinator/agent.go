package coordinator

import (
	"context"
	"time"
)

// NodeRef names one job-node on a shim.
type NodeRef struct {
	Job  string
	Node string
}

// DumpRequest asks a shim to dump one job-node's tree into Dir.
type DumpRequest struct {
	Dir          string // where the shim writes the images and the node manifest
	LeaveRunning bool   // periodic checkpoint: the tree keeps running afterwards
	Checkpoint   string // the checkpoint handle, for logs and PMIx events
}

// DumpResult is what a shim reports after a dump.
type DumpResult struct {
	Bytes    int64         // size of the images
	Files    int           // number of image files
	Manifest string        // SHA-256 of the node manifest the shim wrote
	CRIUTime time.Duration // time spent inside CRIU
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
	// Drain waits until no sent byte of the job-node is unacknowledged.
	Drain(ctx context.Context, ref NodeRef) (DrainResult, error)
	// Lock drops every packet to and from the job-node.
	Lock(ctx context.Context, ref NodeRef) error
	// Dump writes the job-node's images; without LeaveRunning the tree is gone afterwards.
	Dump(ctx context.Context, ref NodeRef, req DumpRequest) (DumpResult, error)
	// Unlock lets the job-node's packets flow again.
	Unlock(ctx context.Context, ref NodeRef) error
	// Thaw resumes the job-node's tasks.
	Thaw(ctx context.Context, ref NodeRef) error
	// Restore creates a sandbox for n on this host, locks it, and restores
	// the tree from dir into it. The job-node stays locked until Unlock.
	Restore(ctx context.Context, job string, n NodeSpec, dir string) error
	// Destroy kills the job-node's tree and removes its sandbox.
	Destroy(ctx context.Context, ref NodeRef) error
	// Status reports whether the job-node still runs.
	Status(ctx context.Context, ref NodeRef) (NodeStatus, error)
}
