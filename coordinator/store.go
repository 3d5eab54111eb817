package coordinator

import (
	"context"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
)

// Manifest is what the coordinator records about a committed checkpoint.
type Manifest struct {
	Handle       string                         `json:"handle"`
	Spec         JobSpec                        `json:"spec"`
	Kind         string                         `json:"kind"` // checkpoint or suspend (a migration's images are never committed)
	LeaveRunning bool                           `json:"leave_running"`
	Nodes        map[string]agentapi.DumpResult `json:"nodes"`
	Phases       map[Phase]time.Duration        `json:"phases"`
	Created      time.Time                      `json:"created"`
	// HostLocal: the images are in the shims' checkpoint stores, each
	// job-node's named by Nodes[name].NodeManifestSHA256 (hostlocal.go).
	HostLocal bool `json:"host_local,omitempty"`
}

// Store is the checkpoint catalog as the coordinator uses it.
type Store interface {
	// Begin allocates the next checkpoint of a job; nothing is visible until Commit.
	Begin(job string) (Pending, error)
	// Verify checks the signature and every image of a committed checkpoint.
	Verify(ctx context.Context, handle string) error
	// VerifyLayout checks the signature, the node manifests, and every
	// image's presence and size, not the images' content: the shims verify
	// that as they restore, against NodeManifestSHA256.
	VerifyLayout(ctx context.Context, handle string) error
	// NodeManifestSHA256 is the SHA-256 (hex) the signed job manifest
	// records for one job-node's node manifest.
	NodeManifestSHA256(handle, node string) (string, error)
	// Load returns a committed checkpoint's manifest (after checking its signature).
	Load(handle string) (Manifest, error)
	// Latest returns the newest committed checkpoint of a job.
	Latest(job string) (string, error)
	// Recover removes checkpoints whose commit never finished.
	Recover() ([]string, error)
	// NodeDir is where a committed checkpoint keeps one job-node's images.
	NodeDir(handle, node string) (string, error)
	// Prune keeps the newest keep checkpoints of a job up to and including
	// checkpoint upTo, and every one newer than it. The deleted ones'
	// images may stay on disk until Sweep.
	Prune(job string, keep int, upTo string) ([]string, error)
	// Sweep removes the images of a job's deleted checkpoints.
	Sweep(job string) error
}

// Pending is a checkpoint being written.
type Pending interface {
	Handle() string
	// NodeDir is the directory a job-node's images go to.
	NodeDir(node string) (string, error)
	// SharedDir is a directory every job-node of the checkpoint shares while
	// it is written (agentapi.DumpRequest.Shared).
	SharedDir() (string, error)
	// Commit makes the checkpoint exist: the job manifest is written last, atomically.
	Commit(m Manifest) error
	// Abort deletes everything written so far.
	Abort() error
}
