package catalog

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrNotFound: no committed checkpoint with that handle (or no checkpoint at all
	// for the job).
	ErrNotFound = errors.New("checkpoint not found")
	// ErrCorrupt: a checkpoint failed verification (signature, digest, size, missing
	// or unexpected file). Such a checkpoint must not be restored.
	ErrCorrupt = errors.New("checkpoint failed verification")
	// ErrBadHandle: a handle or a job/node name is malformed.
	ErrBadHandle = errors.New("bad checkpoint handle")
	// ErrUnsupportedFormat: a manifest was written by a newer (or unknown) format.
	ErrUnsupportedFormat = errors.New("unsupported manifest format")
	// ErrDone: the pending checkpoint was already committed or aborted.
	ErrDone = errors.New("pending checkpoint already committed or aborted")
	// ErrDeleted: the catalog numbered that checkpoint and holds it no
	// more (deleted, pruned, or its commit never finished); Import refuses
	// to bring it back.
	ErrDeleted = errors.New("checkpoint deleted from the catalog")
)

// CorruptError says which checkpoint failed verification, at which file, and why.
// It matches ErrCorrupt with errors.Is.
type CorruptError struct {
	Handle string // "<job>/<seq>"
	File   string // path relative to the checkpoint directory, e.g. "nodes/n0/pages-1.img"
	Reason string // what is wrong, e.g. "sha256 mismatch"
	Err    error  // underlying error, if any
}

func (e *CorruptError) Error() string {
	var b strings.Builder
	b.WriteString("checkpoint ")
	if e.Handle != "" {
		b.WriteString(e.Handle + " ")
	}
	b.WriteString("failed verification")
	if e.File != "" {
		fmt.Fprintf(&b, ": %s", e.File)
	}
	if e.Reason != "" {
		fmt.Fprintf(&b, ": %s", e.Reason)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// Unwrap returns the underlying error.
func (e *CorruptError) Unwrap() error { return e.Err }
