package coordinator

import (
	"fmt"
	"time"

	"github.com/torpor-hpc/torpor/agentapi"
)

// PostCopy says when a migration moves a job-node's memory after the
// job-node runs on its new host (post-copy, CRIU lazy pages) instead of
// before (stop-and-copy). docs/protocol.md, "Post-copy migration".
type PostCopy string

const (
	// PostCopyAuto: post-copy when the job-node's private memory is at
	// least the coordinator's threshold (Options.PostCopyThreshold).
	PostCopyAuto PostCopy = "auto"
	// PostCopyAlways: post-copy whatever the size.
	PostCopyAlways PostCopy = "always"
	// PostCopyNever: stop-and-copy.
	PostCopyNever PostCopy = "never"
)

// DefaultPostCopyThreshold is the private memory from which an automatic
// migration is post-copy: at 256 MiB stop-and-copy already keeps the whole
// job frozen for about half a second on the reference machine (B4), while
// post-copy's downtime hardly depends on the size.
const DefaultPostCopyThreshold = 128 << 20

// ParsePostCopy reads auto (or ""), always or never.
func ParsePostCopy(s string) (PostCopy, error) {
	switch PostCopy(s) {
	case "", PostCopyAuto:
		return PostCopyAuto, nil
	case PostCopyAlways, PostCopyNever:
		return PostCopy(s), nil
	}
	return "", fmt.Errorf("%w: --postcopy %q: want auto, always or never", agentapi.ErrInvalid, s)
}

// The modes a migration ran in (MigrateResult.Mode).
const (
	ModeStopCopy = "stop-copy"
	ModePostCopy = "post-copy"
)

// PhasePages is a post-copy migration's last phase: from the thaw until
// the destination has every page of the moved job-node. The job runs
// meanwhile, but the source keeps its frozen copy and the job stays busy.
const PhasePages Phase = "pages"

// MigrateOptions choose how a migration moves the job-node's memory.
type MigrateOptions struct {
	PostCopy PostCopy // "" is PostCopyAuto
}

// MigrateResult says how a migration went.
type MigrateResult struct {
	From string // the host the job-node left
	// Mode is ModeStopCopy or ModePostCopy; ModeReason says why.
	Mode       string
	ModeReason string
	// Downtime is how long the job was frozen: from the first freeze to the
	// end of the thaw.
	Downtime time.Duration
	// LastPage is, for post-copy, the time from the first freeze until the
	// destination had every page (the source's copy was destroyed then).
	LastPage time.Duration
	Bytes    int64 // images written (post-copy: all but the lazy memory)
	Memory   int64 // the job-node's private memory, when it was measured
	Phases   map[Phase]time.Duration
	// Streamed says the images went from the source's shim to the
	// destination's (both have image directories of their own), not
	// through the checkpoint directory.
	Streamed bool
}

// postCopyAbove is the DumpRequest.PostCopyAbove of a migration from host
// from to host to, and why: 0 means stop-and-copy.
func (c *Coordinator) postCopyAbove(mode PostCopy, from, to string) (int64, string) {
	if mode == PostCopyNever {
		return 0, "--postcopy=never"
	}
	for _, h := range []string{from, to} {
		a, err := c.agent(h)
		if err != nil {
			return 0, err.Error()
		}
		if p, ok := a.(agentapi.PostCopier); !ok || !p.PostCopy() {
			return 0, fmt.Sprintf("the shim of %s cannot take part in a post-copy migration (its CRIU or kernel cannot restore pages lazily: userfaultfd; see its log)", h)
		}
	}
	if mode == PostCopyAlways {
		return 1, "--postcopy=always"
	}
	if c.postCopyThreshold <= 0 {
		return 0, "automatic post-copy is switched off (threshold 0)"
	}
	return c.postCopyThreshold, ""
}

// imagesFrom returns where the shim of from serves its images when both
// it and the shim of to stream images (agentapi.ImageStreamer), else "":
// the migration's images then go through the checkpoint directory.
func (c *Coordinator) imagesFrom(from, to string) string {
	var addr string
	for _, h := range []string{to, from} {
		a, err := c.agent(h)
		if err != nil {
			return ""
		}
		s, ok := a.(agentapi.ImageStreamer)
		if !ok {
			return ""
		}
		if addr = s.ImagesAddress(); addr == "" {
			return ""
		}
	}
	return addr
}

// mib is n bytes in MiB, for reasons.
func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }
