// Package atomicfile replaces a file's content all at once: a reader (or a
// process restarted after a crash) sees the old content or the new one,
// never a part. It is the one place torpor writes a file that way (the
// coordinator's and the shim's state, the PKI's keys, the catalog's
// manifests, counters and key).
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Write writes data to path through a temporary file in the same directory
// (".<name>.tmp-*", see IsTemp), which it gives mode perm, fsyncs and
// renames over path, then fsyncs the directory so the rename survives a
// crash. On error path keeps its old content and no temporary file stays.
//
// Errors name the operation and path (not the temporary file) and keep the
// errno in their chain: errors.Is(err, syscall.ENOSPC) holds on a full disk.
func Write(path string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return pathErr("rename into place", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// Create is Write for a file that must not be replaced: it fails with an
// error matching fs.ErrExist if path exists (or appears meanwhile: another
// process won), and otherwise installs the complete file by hard-linking
// the temporary one into place, so nobody ever sees a part of it.
func Create(path string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	err = os.Link(tmp, path)
	os.Remove(tmp)
	if err != nil {
		return pathErr("install", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// writeTemp writes data with mode perm to a new temporary file beside path,
// fsyncs and closes it, and returns its name; on error it leaves nothing.
func writeTemp(path string, data []byte, perm os.FileMode) (tmp string, err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+tempInfix+"*")
	if err != nil {
		return "", pathErr("create temporary file for", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return "", pathErr("chmod", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return "", pathErr("write", path, err)
	}
	if err := f.Sync(); err != nil {
		return "", pathErr("fsync", path, err)
	}
	if err := f.Close(); err != nil {
		return "", pathErr("close", path, err)
	}
	return f.Name(), nil
}

// SyncDir fsyncs directory dir, so that a rename, link or removal in it
// survives a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return pathErr("open directory", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return pathErr("fsync directory", dir, err)
	}
	return nil
}

const tempInfix = ".tmp-"

// IsTemp reports whether a directory entry's name is that of a temporary
// file of Write or Create: one left behind by a crash, safe to remove.
func IsTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, tempInfix)
}

// pathErr wraps err with op and path, keeping only the errno of an
// *fs.PathError so the message does not name the temporary file.
func pathErr(op, path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		err = le.Err
	}
	return fmt.Errorf("%s %s: %w", op, path, err)
}
