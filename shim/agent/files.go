package agent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/shim/sandbox"
)

// filesDirName holds, inside a job-node's images, copies of the files its
// MPI library and pmixd share through MAP_SHARED mappings (Open MPI's
// shared-memory segments, the PMIx data store). CRIU saves the contents of
// deleted files but not of files that still exist, and the job keeps
// writing them after a leave-running checkpoint: restoring that checkpoint
// later must put them back as they were at the dump.
const filesDirName = "torpor-files"

// sharedDirs are the job-node directories whose files are saved with it.
// They belong to the job's owner: the shim, root, reads and writes in them
// only through beneath (no symbolic link followed, nothing outside).
func (a *Agent) sharedDirs(job, n string) []string {
	base := filepath.Join(a.cfg.RunDir, "jobs", job, n)
	return []string{base + ".shm", base + ".pmix"}
}

// ownedDir makes dir (in the job's run directory, which only root may
// change) a directory of u's, mode 0700, creating it if needed.
func ownedDir(dir string, u *sandbox.User) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory: remove it", dir)
	}
	uid, gid := u.IDs()
	return os.Lchown(dir, uid, gid)
}

// writeOwned writes data to path, a new file of u's (mode 0600) in a
// directory only root may change.
func writeOwned(path string, data []byte, u *sandbox.User) error {
	f, err := sandbox.OpenOwned(path, u, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// resolveBeneath keeps a path below its directory and follows no link.
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// openBeneath opens rel below the directory dirfd, following no symbolic
// link on the way.
func openBeneath(dirfd int, rel string, flags int, mode uint32) (*os.File, error) {
	fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: resolveBeneath})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: rel, Err: err}
	}
	return os.NewFile(uintptr(fd), rel), nil
}

// openDir opens dir itself without following a link; a missing dir is nil.
func openDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return f, err
}

// saveFiles copies every regular file below dirs into images/torpor-files.
// The job-node is frozen while this runs, so the copies match the dump.
func saveFiles(images string, dirs []string) error {
	for _, dir := range dirs {
		dst := filepath.Join(images, filesDirName, filepath.Base(dir))
		if err := saveDir(dir, dst); err != nil {
			return fmt.Errorf("save shared files of %s: %w", dir, err)
		}
	}
	return nil
}

func saveDir(dir, dst string) error {
	d, err := openDir(dir)
	if err != nil || d == nil {
		return err
	}
	defer d.Close()
	return eachRegularFile(dir, func(_, rel string) error {
		in, st, err := withStat(openBeneath(int(d.Fd()), rel, unix.O_RDONLY|unix.O_NONBLOCK, 0))
		if err != nil {
			return err
		}
		defer in.Close()
		if !st.Mode().IsRegular() {
			return nil // replaced since it was listed
		}
		return copyTo(in, filepath.Join(dst, rel), st.Mode().Perm())
	})
}

// restoreFiles puts the saved files back at their paths, owned by u, each
// replaced atomically (a copy of the job-node still frozen elsewhere keeps
// its own).
func restoreFiles(images string, dirs []string, u *sandbox.User) error {
	for _, dir := range dirs {
		src := filepath.Join(images, filesDirName, filepath.Base(dir))
		if err := restoreDir(src, dir, u); err != nil {
			return fmt.Errorf("restore shared files of %s: %w", dir, err)
		}
	}
	return nil
}

func restoreDir(src, dir string, u *sandbox.User) error {
	if err := ownedDir(dir, u); err != nil {
		return err
	}
	d, err := openDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	uid, gid := u.IDs()
	return eachRegularFile(src, func(p, rel string) error {
		if !filepath.IsLocal(rel) {
			return fmt.Errorf("%s leaves its directory", rel)
		}
		parent, err := mkdirBeneath(int(d.Fd()), filepath.Dir(rel), uid, gid)
		if err != nil {
			return err
		}
		defer parent.Close()
		in, st, err := withStat(os.Open(p))
		if err != nil {
			return err
		}
		defer in.Close()
		base := filepath.Base(rel)
		tmp := base + ".torpor-restore"
		if err := unix.Unlinkat(int(parent.Fd()), tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
		out, err := openBeneath(int(parent.Fd()), tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, uint32(st.Mode().Perm()))
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		if err := out.Chown(uid, gid); err != nil {
			out.Close()
			return err
		}
		if err := out.Chmod(st.Mode().Perm()); err != nil {
			out.Close()
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
		// Both names are last components in a directory held open: a link
		// at base is replaced, not followed.
		return unix.Renameat(int(parent.Fd()), tmp, int(parent.Fd()), base)
	})
}

// withStat takes the result of opening a file and adds its status; on an
// error the file is closed.
func withStat(f *os.File, err error) (*os.File, os.FileInfo, error) {
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, st, nil
}

// mkdirBeneath opens the directory rel below dirfd, creating each missing
// component owned by uid and gid, following no link.
func mkdirBeneath(dirfd int, rel string, uid, gid int) (*os.File, error) {
	cur, err := openBeneath(dirfd, ".", unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	if rel == "." {
		return cur, nil
	}
	for _, c := range strings.Split(rel, "/") {
		if err := unix.Mkdirat(int(cur.Fd()), c, 0o700); err == nil {
			if err := unix.Fchownat(int(cur.Fd()), c, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				cur.Close()
				return nil, err
			}
		} else if !errors.Is(err, unix.EEXIST) {
			cur.Close()
			return nil, err
		}
		next, err := openBeneath(int(cur.Fd()), c, unix.O_PATH|unix.O_DIRECTORY, 0)
		cur.Close()
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

// eachRegularFile calls fn with the path of every regular file below root
// and its path relative to root. A missing root has no files. It does not
// follow symbolic links.
func eachRegularFile(root string, fn func(path, rel string) error) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		return fn(p, rel)
	})
}

// copyTo writes in to dst (a root-only images directory), mode perm.
func copyTo(in io.Reader, dst string, perm fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(perm); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
