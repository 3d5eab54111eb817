package agentapi

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The errors of the contract. Both sides wrap them; errors.Is finds them
// again after a trip over gRPC (ToRPC on the serving side, FromRPC on the
// calling side).
var (
	// ErrNotFound: no such job, job-node, host or checkpoint.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: the request itself is wrong.
	ErrInvalid = errors.New("invalid request")
	// ErrState: the job or job-node is not in a state that allows the operation.
	ErrState = errors.New("operation not allowed in this state")
	// ErrPermission: the caller may not act on this job.
	ErrPermission = errors.New("permission denied")
	// ErrUnreachable: the shim of a host does not answer (it died, or the
	// network between it and the coordinator is cut).
	ErrUnreachable = errors.New("shim unreachable")
	// ErrCorrupt: a checkpoint's images do not match their manifests; the
	// shim refused to restore them.
	ErrCorrupt = errors.New("images fail verification")
	// ErrBusy: another operation on the job is still running (a cancel
	// destroying its job-nodes, say); the same request may succeed once it
	// has ended. It is an ErrState too.
	ErrBusy error = busyError{}
	// ErrExists: the job-node to start or restore already exists on that
	// host (a copy left there, see docs/protocol.md, "Stray copies"). It is
	// an ErrState too.
	ErrExists error = existsError{}
)

// SetAsideNote ends the message of an ErrCorrupt whose shim moved its copy
// of a host-local checkpoint's images out of its store: it crosses the
// wire with the message, where the error's kind alone could not say that a
// copy is gone.
const SetAsideNote = "this host's copy was set aside: a restart fetches another host's"

// CopySetAside says whether err is an ErrCorrupt whose shim set its copy
// aside (its message carries SetAsideNote).
func CopySetAside(err error) bool {
	return errors.Is(err, ErrCorrupt) && strings.Contains(err.Error(), SetAsideNote)
}

type busyError struct{}

func (busyError) Error() string { return ErrState.Error() }
func (busyError) Unwrap() error { return ErrState }

type existsError struct{}

func (existsError) Error() string { return ErrState.Error() }
func (existsError) Unwrap() error { return ErrState }

// codeOf pairs each error of the contract with its gRPC code.
var codeOf = []struct {
	err  error
	code codes.Code
}{
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
	{ErrNotFound, codes.NotFound},
	{ErrBusy, codes.Aborted},         // before ErrState, which it wraps
	{ErrExists, codes.AlreadyExists}, // before ErrState, which it wraps
	{ErrState, codes.FailedPrecondition},
	{ErrInvalid, codes.InvalidArgument},
	{ErrPermission, codes.PermissionDenied},
	{ErrUnreachable, codes.Unavailable},
	{ErrCorrupt, codes.DataLoss},
}

// ToRPC maps an error to a gRPC status at the RPC edge.
func ToRPC(err error) error {
	if err == nil {
		return nil
	}
	code := codes.Unknown
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			code = c.code
			break
		}
	}
	return status.Error(code, err.Error())
}

// FromRPC turns a gRPC status back into an error that errors.Is can test.
func FromRPC(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, c := range codeOf {
		if st.Code() == c.code {
			return errors.Join(errors.New(st.Message()), c.err)
		}
	}
	return errors.New(st.Message())
}
