package catalog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%s %s: %w (free space on that file system or keep fewer checkpoints)", op, path, err)
	}
	return fmt.Errorf("%s %s: %w", op, path, err)
}

// writeFileAtomic writes data to path so that path either keeps its old content or
// has the complete new content: temporary file in the same directory, fsync, rename,
// fsync of the directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return ioErr("create temporary file for", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return ioErr("write", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return ioErr("chmod", path, err)
	}
	if err := f.Sync(); err != nil {
		return ioErr("fsync", path, err)
	}
	if err := f.Close(); err != nil {
		return ioErr("close", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return ioErr("rename into place", path, err)
	}
	return syncDir(dir)
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	if dir == "" {
		dir = "."
	}
	d, err := os.Open(dir)
	if err != nil {
		return ioErr("open directory", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return ioErr("fsync directory", dir, err)
	}
	return nil
}

// isTempName reports whether a directory entry is a leftover of writeFileAtomic.
func isTempName(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-")
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
