package catalog

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// ioErr wraps err with the operation and path; a full disk gets a hint on what to do.
// The original error stays in the chain, so errors.Is(err, syscall.ENOSPC) holds.
func ioErr(op, path string, err error) error {
	// The path is ours to report; keep only the errno of an *fs.PathError so the
	// message does not repeat the (possibly temporary) file name.
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return withHint(fmt.Errorf("%s %s: %w", op, path, err))
}

// withHint adds what to do to the error of a full disk or quota (nil stays nil).
func withHint(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w (free space on that file system or keep fewer checkpoints)", err)
	}
	return err
}

// describeType names a non-regular file type for error messages.
func describeType(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	default:
		return "special file"
	}
}
